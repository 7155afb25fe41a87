"""Audio in and out: reading files, checking them, and converting to the model's 32 kHz mono.

All conversion happens here: channels are averaged to mono, the rate is changed with soxr
(a maintained high-quality resampler), integer samples are scaled to [-1, 1].
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import about
from .files import check_writable_folder, replacing

SILENCE_PEAK = 1e-4  # -80 dBFS: below this there is nothing to edit
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")  # what is read as audio
WRITABLE_SUFFIXES = (".wav", ".flac", ".ogg")  # what write_audio writes


class AudioError(ValueError):
    """Audio that cannot be edited; the message says why and what is accepted."""


@dataclass
class Recording:
    """An audio file as read: float samples [C, T] for processing, in the file's `subtype`
    (libsndfile's name, e.g. PCM_16), so that what is not changed can be written back bit for
    bit. Where float32 holds the stored values exactly (8-, 16- and 24-bit, float) they are the
    float samples themselves; otherwise (32-bit integers, doubles) `native` [T, C] keeps them."""

    wav: torch.Tensor
    sample_rate: int
    subtype: str
    native: np.ndarray | None = None


# Samples converted, written, checked or resampled this many at a time: memory stays a few tens
# of MB above the signals themselves, whatever their length.
CHUNK = 1 << 20
# Stored types that float32 does not hold exactly: kept as stored.
_INEXACT = ("PCM_32", "DOUBLE")
# How each stored sample type is read exactly: the numpy type, and the scale to [-1, 1).
_NATIVE = {"PCM_S8": (np.int16, 2 ** 15), "PCM_U8": (np.int16, 2 ** 15), "PCM_16": (np.int16, 2 ** 15),
           "PCM_24": (np.int32, 2 ** 31), "PCM_32": (np.int32, 2 ** 31),
           "FLOAT": (np.float32, 1), "DOUBLE": (np.float64, 1)}


def read_recording(path: str | os.PathLike) -> Recording:
    """A file -> its samples, exactly as stored and as float32. The file is only read."""
    import soundfile as sf
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        with sf.SoundFile(str(path)) as f:
            # the header's claim sizes the read: bound it before anything is allocated
            if not 0 < f.channels <= MAX_CHANNELS or f.frames * f.channels > MAX_VALUES:
                raise AudioError(
                    f"{path.name}: its header declares {f.frames} frames x {f.channels} channels; at most "
                    f"{MAX_CHANNELS} channels and {MAX_VALUES} samples in all are read (about {_minutes()} "
                    f"minutes of 48 kHz stereo): cut the file into parts")
            kind, scale = _NATIVE.get(f.subtype, (np.float32, 1))
            sr, subtype = f.samplerate, f.subtype
            wav = torch.empty(f.channels, f.frames)
            native = np.empty((f.frames, f.channels), dtype=kind) if subtype in _INEXACT else None
            done = 0
            while done < f.frames:  # a chunk at a time: no whole-file temporaries
                block = f.read(frames=min(CHUNK, f.frames - done), dtype=np.dtype(kind).name, always_2d=True)
                if not len(block):
                    break
                wav[:, done:done + len(block)] = torch.from_numpy(block.T.astype(np.float32)) / scale
                if native is not None:
                    native[done:done + len(block)] = block
                done += len(block)
            if done < f.frames:  # the header promised more than the file holds
                wav, native = wav[:, :done].clone(), None if native is None else native[:done].copy()
    except (RuntimeError, TypeError) as e:  # libsndfile errors are RuntimeErrors
        raise AudioError(f"{path.name} cannot be read as audio: {_unreadable(e)}. Readable: WAV, FLAC, OGG, MP3, "
                         f"AIFF and the other formats libsndfile knows") from None
    return Recording(wav, int(sr), subtype, native)


def _unreadable(e: Exception) -> str:
    """Why libsndfile refused a file that exists, in words that fit: it says "File does not exist
    or is not a regular file" for any header it cannot parse."""
    text = " ".join(str(e).split())
    if "does not exist" in text or "not a regular file" in text or "unknown format" in text.lower():
        return "its header is damaged, or it is not an audio file"
    return text.split(": ", 1)[-1][:160].rstrip(".")


def read_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """A file -> (float32 waveform [channels, samples], sample rate). The file is only read."""
    rec = read_recording(path)
    return rec.wav, rec.sample_rate


# 2**28 float32 samples are 1 GB: far more than any edit needs at once, and bounded.
MAX_VALUES = 2 ** 28
MAX_CHANNELS = 64


def _minutes() -> int:
    return MAX_VALUES // (48_000 * 2 * 60)


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


MIN_RATE, MAX_RATE = 4_000, 768_000


@dataclass(frozen=True)
class SourceInfo:
    """What the input was, so the output can be given back in the same form."""

    sample_rate: int
    channels: int
    samples: int


def check_audio(wav: torch.Tensor, sample_rate: int, what: str = "input audio"):
    """Refuse audio with nothing to edit: empty, silent, NaN or infinite, or a bad rate."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or not MIN_RATE <= sample_rate <= MAX_RATE:
        raise AudioError(f"{what}: sample rate must be an integer from {MIN_RATE} to {MAX_RATE} Hz, "
                         f"got {sample_rate!r}")
    if wav.numel() == 0 or wav.shape[-1] == 0:
        raise AudioError(f"{what} is empty (0 samples)")
    flat = wav.reshape(-1)
    total = 0.0
    for a in range(0, flat.numel(), CHUNK):  # a chunk at a time: no whole-signal temporaries
        part = flat[a:a + CHUNK]
        if not torch.isfinite(part).all():
            raise AudioError(f"{what} contains NaN or infinite samples")
        total += float(part.double().sum())
    mean = total / flat.numel()
    if max(float((flat[a:a + CHUNK] - mean).abs().max()) for a in range(0, flat.numel(), CHUNK)) < SILENCE_PEAK:
        raise AudioError(f"{what} is silent (peak below -80 dBFS); there is nothing to edit")


def resample(wav: torch.Tensor, sr_in: int, sr_out: int) -> torch.Tensor:
    """[..., T] at sr_in -> float32 [..., T'] at sr_out (soxr, high quality), T' = T * sr_out /
    sr_in rounded half up. Streamed a chunk at a time (the same samples as resampling it whole),
    so memory is the output's plus a chunk's."""
    if sr_in == sr_out:
        return wav
    if wav.shape[-1] == 0:
        return wav.float()
    import soxr
    flat = wav.reshape(-1, wav.shape[-1])
    stream = soxr.ResampleStream(sr_in, sr_out, flat.shape[0], dtype="float64", quality="HQ")
    length = flat.shape[-1]
    out = torch.empty(flat.shape[0], (2 * length * sr_out + sr_in) // (2 * sr_in) + 16)  # soxr rounds half up
    done = 0
    for a in range(0, length, CHUNK):
        chunk = np.ascontiguousarray(flat[:, a:a + CHUNK].double().numpy().T)  # soxr takes [T, channels]
        part = torch.from_numpy(stream.resample_chunk(chunk, last=a + CHUNK >= length).T.astype(np.float32))
        out[:, done:done + part.shape[-1]] = part
        done += part.shape[-1]
    out = out[:, :done]
    return out.reshape(*wav.shape[:-1], out.shape[-1])


def as_batch(wav) -> torch.Tensor:
    """[T], [C, T] or [B, C, T], any numeric type -> float32 [B, C, T]."""
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
    return wav


def to_model_audio(wav, sample_rate: int, target_rate: int = 32000) -> tuple[torch.Tensor, SourceInfo]:
    """Any input -> checked mono [B, 1, T'] at `target_rate`, and what the input was.

    The one place where input is converted: channels are averaged, the DC offset removed, a
    float signal beyond +-1 scaled down to peak 1 (as in training), the rate changed with soxr."""
    wav = as_batch(wav)
    for i in range(wav.shape[0]):
        check_audio(wav[i], sample_rate, "input audio" if wav.shape[0] == 1 else f"input audio #{i}")
    info = SourceInfo(int(sample_rate), wav.shape[1], wav.shape[-1])
    mono = torch.empty(wav.shape[0], 1, wav.shape[-1])
    for a in range(0, wav.shape[-1], CHUNK):  # a chunk at a time: no whole-signal temporaries
        torch.mean(wav[..., a:a + CHUNK], dim=1, keepdim=True, out=mono[..., a:a + CHUNK])
    for item in mono:
        item -= float(sum(item[..., a:a + CHUNK].double().sum() for a in range(0, item.shape[-1], CHUNK))) / item.shape[-1]
        peak = max(float(item[..., a:a + CHUNK].abs().max()) for a in range(0, item.shape[-1], CHUNK))
        if peak > 1:
            item /= peak
    return resample(mono, int(sample_rate), target_rate), info


def from_model_audio(wav: torch.Tensor, model_rate: int, source: SourceInfo | None, rate="model",
                     channels="mono") -> tuple[torch.Tensor, int]:
    """The model's mono [B, 1, T] -> the output form: `rate` is "model" (32 kHz), "input" or a
    number of Hz; `channels` is "mono" or "input" (the mono result copied to every input channel).
    With `source`, the length is exactly the input's duration at the chosen rate."""
    if rate == "model":
        out_rate = model_rate
    elif rate == "input":
        out_rate = source.sample_rate if source else model_rate
    else:
        out_rate = int(rate)
        if not MIN_RATE <= out_rate <= MAX_RATE:
            raise AudioError(f"output rate must be 'model', 'input' or {MIN_RATE}..{MAX_RATE} Hz, got {rate!r}")
    if channels not in ("mono", "input"):
        raise AudioError(f"output channels must be 'mono' or 'input', got {channels!r}")
    out = resample(wav, model_rate, out_rate)
    if source is not None:
        n = round(source.samples * out_rate / source.sample_rate)
        out = torch.nn.functional.pad(out, (0, max(0, n - out.shape[-1])))[..., :n]
    if channels == "input" and source is not None and source.channels > 1:
        out = out.expand(-1, source.channels, -1).contiguous()
    return out, out_rate


def is_same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (through links, `..` or another spelling)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return Path(a).resolve() == Path(b).resolve()


def check_output(path: str | os.PathLike, overwrite: bool = False):
    """Refuse an output that `write_audio` could not write, before any work is done for it: a
    format it does not write, a folder that could not be written or created (a missing one is
    created when the file is written, as for a batch's output folder), a folder in its place, a
    file there already (unless `overwrite`)."""
    path = Path(path)
    if path.suffix.lower() not in WRITABLE_SUFFIXES:
        raise AudioError(f"unsupported output extension {path.suffix!r} for {path.name}; use "
                         f"{', '.join(WRITABLE_SUFFIXES)}")
    if path.parent.exists() and not path.parent.is_dir():
        raise FileExistsError(f"{path.parent} is a file, so {path.name} cannot be written in it")
    check_writable_folder(path.parent)
    if path.is_dir():
        raise FileExistsError(f"{path} is a folder; name the audio file to write")
    if path.exists() and not overwrite:
        raise about(FileExistsError(f"{path} already exists; it is replaced only when asked (overwrite)"), "overwrite")


SOFTWARE = "instruct-musicgen"  # the software tag of every file written here


def written_by_us(path: str | os.PathLike) -> bool:
    """Whether an audio file carries the software tag `write_audio` writes."""
    import soundfile as sf
    try:
        with sf.SoundFile(str(path)) as f:
            return str(f.copy_metadata().get("software", "")).startswith(SOFTWARE)
    except (RuntimeError, TypeError):
        return False


# Where a result beyond full scale is brought: the largest 16-bit value, so that no format clips it.
FULL_SCALE = 1 - 2 ** -15


def fit_full_scale(wav: torch.Tensor, original: torch.Tensor | None = None) -> tuple[torch.Tensor, str | None]:
    """`wav` as it is when no sample is beyond full scale (|x| <= 1); otherwise brought within it,
    never clipped, with a sentence saying how. An edit that adds a stem can sum past full scale:
    clipping would distort it, a limiter would change what the user did not ask to change, float
    output would leave it to players that clip. With the `original` it was edited from (same
    shape: preserve rendering), only the edit's changes are scaled down, by the least that fits:
    every sample the edit left alone stays the input's, a range edit's outside included.
    Otherwise (the model's own output) all of it takes one gain, which keeps the balance."""
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    if peak <= 1.0:
        return wav, None
    if original is not None and original.shape == wav.shape and float(original.abs().max()) <= 1.0:
        change = wav - original
        over = wav.abs() > 1.0
        k = float(((wav[over].sign() - original[over]) / change[over]).min().clamp(0.0, 1.0))
        return original + k * change, (f"the edit went {20 * math.log10(peak):.1f} dB past full scale: its changes "
                                       f"were made {-20 * math.log10(max(k, 1e-9)):.1f} dB quieter, everything "
                                       f"else kept, so that nothing clips")
    gain = 20 * math.log10(peak / FULL_SCALE)
    return wav * (FULL_SCALE / peak), (f"it peaked {gain:.1f} dB over full scale: all of it was made {gain:.1f} dB "
                                       f"quieter, so that nothing clips")


def write_audio(path: str | os.PathLike, wav: torch.Tensor, sample_rate: int, overwrite: bool = False,
                like: Recording | None = None) -> str | None:
    """Write [C, T] (or [T]) as WAV, FLAC or OGG (by extension); never replaces a file unless asked.
    16-bit by default; with `like` (the input as read), in its sample type when the format allows
    it, and every sample whose value is the input's (same rate, channels and position) is written
    exactly as the input stored it. A signal beyond full scale is brought within it, never
    clipped (`fit_full_scale`, against `like` when it has the same rate and shape): returns the
    sentence saying how (None when nothing was needed).
    Tagged as written by this software. Written through `files.replacing` (a fresh temporary
    file, renamed into place when complete)."""
    import soundfile as sf
    path = Path(path)
    check_output(path, overwrite)
    wav = wav.detach().float().cpu()
    if wav.dim() == 1:
        wav = wav[None]
    same = like is not None and sample_rate == like.sample_rate and like.wav.shape == wav.shape
    wav, note = fit_full_scale(wav, like.wav if same else None)
    fmt = dict(zip(WRITABLE_SUFFIXES, ("WAV", "FLAC", "OGG")))[path.suffix.lower()]
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS"}[fmt]
    kind, scale = None, 1
    if like is not None and like.subtype in _NATIVE and sf.check_format(fmt, like.subtype):
        subtype = like.subtype
        kind, scale = _NATIVE[subtype]
    stored = like is not None and kind is not None and like.native is not None and sample_rate == like.sample_rate \
        and like.wav.shape == wav.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as f, sf.SoundFile(f, "w", sample_rate, wav.shape[0], subtype, format=fmt) as out:
        out.software = SOFTWARE
        for a in range(0, wav.shape[-1], CHUNK):  # a chunk at a time: no whole-signal temporaries
            values = wav[:, a:a + CHUNK].numpy().T
            if kind is None:
                data = np.clip(values, -1, 1)
            elif np.issubdtype(kind, np.integer):  # float32 holds what was read exactly: the same ints again
                info = np.iinfo(kind)
                data = np.clip(np.round(values.astype(np.float64) * scale), info.min, info.max).astype(kind)
            else:
                data = values.astype(kind)
            if stored:  # untouched samples of inexact types: the stored values, bit for bit
                same = values == like.wav[:, a:a + CHUNK].numpy().T
                data[same] = like.native[a:a + CHUNK][same]
            out.write(data)
    return note
