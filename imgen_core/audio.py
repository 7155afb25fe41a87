"""Audio in and out: reading files, checking them, and converting to the model's 32 kHz mono.

All conversion happens here: channels are averaged to mono, the rate is changed with soxr
(a maintained high-quality resampler), integer samples are scaled to [-1, 1].
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

SILENCE_PEAK = 1e-4  # -80 dBFS: below this there is nothing to edit


class AudioError(ValueError):
    """Audio that cannot be edited; the message says why and what is accepted."""


def read_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """A file -> (float32 waveform [channels, samples], sample rate). The file is only read."""
    import soundfile as sf
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, TypeError) as e:  # libsndfile errors are RuntimeErrors
        raise AudioError(f"cannot decode {path} as audio ({e}); readable formats: "
                         f"{', '.join(sorted(sf.available_formats()))}") from None
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)


def as_float(wav) -> torch.Tensor:
    """Any numeric samples (numpy or torch, integer or float) -> float32, integers scaled to [-1, 1]."""
    t = torch.as_tensor(np.asarray(wav) if not isinstance(wav, torch.Tensor) else wav)
    if t.dtype == torch.bool or t.is_complex():
        raise AudioError(f"audio samples must be real numbers, got {t.dtype}")
    if not t.is_floating_point():
        info = torch.iinfo(t.dtype)
        if info.min == 0:  # unsigned: centred on the middle of the range
            return ((t.double() - (info.max + 1) / 2) / ((info.max + 1) / 2)).float()
        return (t.double() / -info.min).float()
    return t.float()


def check_audio(wav: torch.Tensor, sample_rate: int, what: str = "input audio"):
    """Refuse audio with nothing to edit: empty, silent, NaN or infinite, or a bad rate."""
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"{what}: sample rate must be a positive integer, got {sample_rate!r}")
    if wav.numel() == 0 or wav.shape[-1] == 0:
        raise AudioError(f"{what} is empty (0 samples)")
    if not torch.isfinite(wav).all():
        raise AudioError(f"{what} contains NaN or infinite samples")
    if wav.abs().max() < SILENCE_PEAK:
        raise AudioError(f"{what} is silent (peak below -80 dBFS); there is nothing to edit")


def resample(wav: torch.Tensor, sr_in: int, sr_out: int) -> torch.Tensor:
    """[..., T] at sr_in -> [..., T'] at sr_out (soxr, high quality)."""
    if sr_in == sr_out:
        return wav
    import soxr
    flat = wav.reshape(-1, wav.shape[-1]).double().numpy().T  # soxr takes [T, channels]
    out = soxr.resample(np.ascontiguousarray(flat), sr_in, sr_out, quality="HQ")
    out = torch.from_numpy(np.ascontiguousarray(out.T)).float()
    return out.reshape(*wav.shape[:-1], out.shape[-1])


def to_model_audio(wav, sample_rate: int, target_rate: int = 32000) -> torch.Tensor:
    """Waveform [C, T] or [B, C, T] at any rate -> checked mono [B, 1, T'] at `target_rate`."""
    wav = as_float(wav)
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() == 2:
        wav = wav[None]
    if wav.dim() != 3:
        raise AudioError(f"audio must be [samples], [channels, samples] or [batch, channels, samples], "
                         f"got {list(wav.shape)}")
    if wav.shape[1] == 0:
        raise AudioError("audio has 0 channels")
    for i in range(wav.shape[0]):
        check_audio(wav[i], sample_rate, "input audio" if wav.shape[0] == 1 else f"input audio #{i}")
    return resample(wav.mean(dim=1, keepdim=True), int(sample_rate), target_rate)


def write_audio(path: str | os.PathLike, wav: torch.Tensor, sample_rate: int, overwrite: bool = False):
    """Write [C, T] (or [T]) as 16-bit WAV/FLAC (by extension); never replaces a file unless asked."""
    import soundfile as sf
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    wav = wav.detach().float().cpu()
    if wav.dim() == 1:
        wav = wav[None]
    data = wav.clamp(-1, 1).numpy().T
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"unsupported output extension {path.suffix!r}; use .wav, .flac or .ogg")
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS"}[fmt]
    tmp = path.with_name(path.name + ".part")
    sf.write(str(tmp), data, sample_rate, format=fmt, subtype=subtype)
    os.replace(tmp, path)
