"""The paper's evaluation metrics, the parts that need no trained model (the official
evaluation/main.py computes them with torchaudio, torchmetrics, audioldm_eval and
frechet_audio_distance; the embedding models are in eval_models.py).

Every metric compares 16 kHz audio, except CLAP's (48 kHz, in eval_models.py).
"""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

from .audio import resample

EVAL_RATE = 16000
N_FFT, HOP, N_MELS = 400, 200, 128  # torchaudio's MelSpectrogram defaults at 16 kHz
KL_EPS = 1e-6  # audioldm_eval's
SSIM_KERNEL = 11  # torchmetrics' default Gaussian window


def at_eval_rate(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """[C, T] or [T] at `sample_rate` -> [C, T] float32 at 16 kHz."""
    wav = torch.as_tensor(wav, dtype=torch.float32)
    wav = wav[None] if wav.dim() == 1 else wav
    return resample(wav, sample_rate, EVAL_RATE)


def require_torchmetrics():
    """Refuse, before any work, an evaluation whose every clip would need torchmetrics."""
    try:
        _torchmetrics()
    except ImportError as e:
        raise ValueError(str(e)) from None


def _torchmetrics():
    """torchmetrics' audio and image functions, imported when first used."""
    try:
        from torchmetrics.functional import audio, image
    except ImportError:
        raise ImportError("SSIM and SI-SDR need torchmetrics, which the eval extra installs: pip install '.[eval]' "
                          "in the project (or pip install torchmetrics)") from None
    return audio, image


def si_sdr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Scale-invariant SDR in dB (torchmetrics', averaged over channels), the prediction cut to the
    target's length as the official script does."""
    n = min(pred.shape[-1], target.shape[-1])
    audio, _ = _torchmetrics()
    return float(audio.scale_invariant_signal_distortion_ratio(pred[..., :n], target[..., :n]).mean())


def si_sdr_improvement(pred: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> float:
    """SI-SDRi: how much closer to the target the edit is than its input was."""
    return si_sdr(pred, target) - si_sdr(source, target)


@functools.lru_cache(maxsize=None)
def mel_filterbank(n_freqs: int = N_FFT // 2 + 1, n_mels: int = N_MELS, sample_rate: int = EVAL_RATE) -> torch.Tensor:
    """HTK-scale triangles from 0 Hz to Nyquist without area normalisation: [n_freqs, n_mels]."""
    def to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)
    mels = torch.linspace(to_mel(0.0), to_mel(sample_rate / 2), n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    rise = (freqs[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    fall = (edges[None, 2:] - freqs[:, None]) / (edges[2:] - edges[1:-1])
    return torch.clamp(torch.minimum(rise, fall), min=0.0).float()


def mel_spectrogram(wav: torch.Tensor) -> torch.Tensor:
    """Power mel spectrogram [C, 128, frames] of 16 kHz audio [C, T], as torchaudio's
    MelSpectrogram(sample_rate=16000) computes it (400-sample Hann frames, hop 200, reflect padding)."""
    spec = torch.stft(wav.float(), N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, pad_mode="reflect",
                      return_complex=True).abs() ** 2
    return (spec.transpose(-1, -2) @ mel_filterbank()).transpose(-1, -2)


def ssim_mel(pred: torch.Tensor, target: torch.Tensor) -> float:
    """SSIM of the two power mel spectrograms of 16 kHz audio [C, T], in float32 as the official
    script computes it."""
    return ssim(mel_spectrogram(pred), mel_spectrogram(target))


def ssim(pred_mel: torch.Tensor, target_mel: torch.Tensor) -> float:
    """torchmetrics' SSIM of two spectrograms [C, mels, frames] (the prediction cut to the
    target's frames) with `data_range=1.0` whatever the values' range: the official script's
    choice, kept so that the numbers compare with the paper's. The mean is over the positions
    where the 11x11 window fits, as torchmetrics computed it until 1.4 (the paper's time; from
    1.5 on it also averages the reflect-padded border), whatever version is installed."""
    n = min(pred_mel.shape[-1], target_mel.shape[-1])
    _, image = _torchmetrics()
    _, full = image.structural_similarity_index_measure(
        pred_mel[None, ..., :n], target_mel[None, ..., :n], data_range=1.0, return_full_image=True)
    border = SSIM_KERNEL // 2
    return float(full[..., border:-border, border:-border].mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sets of embeddings [N, D]:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2), in float64. The trace of the matrix root
    is taken from the symmetric S_a^1/2 S_b S_a^1/2, whose eigenvalues are those of S_a S_b."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two sets of at least 2 embeddings of one size, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return gaussian_frechet_distance(mu_a, np.atleast_2d(cov_a), mu_b, np.atleast_2d(cov_b))


def gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    middle = root_a @ cov_b @ root_a
    tr_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_root)


def kl_divergences(pred_logits: torch.Tensor, target_logits: torch.Tensor) -> dict[str, float]:
    """KL(target || prediction) of a classifier's outputs for one clip, audioldm_eval's two forms:
    over the softmax (AudioGen's) and over the per-class sigmoids. The set's KL is the mean."""
    p, t = pred_logits.double().flatten(), target_logits.double().flatten()

    def kl(q, ref):
        return float(torch.nn.functional.kl_div((q + KL_EPS).log(), ref, reduction="sum"))
    return {"kl_softmax": kl(p.softmax(0), t.softmax(0)), "kl_sigmoid": kl(p.sigmoid(), t.sigmoid())}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The CLAP score of one clip: cosine of the text and audio embeddings (frechet_audio_distance's
    form, 1e-8 added to each norm)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float((a / (np.linalg.norm(a) + 1e-8)) @ (b / (np.linalg.norm(b) + 1e-8)))


def clap_caption(operation: str, target: str, output_classes) -> str:
    """The text the CLAP score compares the edited audio with, as the official script builds it
    from the instruction: add: "<Stem> <the output's stems> music"; remove and extract: "<Stem>
    music" (for remove, the removed stem: the official script's choice, kept for comparability)."""
    stem = target.title()
    if operation == "add":
        return f"{stem} {' '.join(c.title() for c in output_classes)} music"
    return f"{stem} music"


def note_scores(reference, estimate) -> dict[str, float]:
    """Note precision, recall and F1 of `estimate` against `reference` (both [(onset s, offset s,
    MIDI pitch)]): mir_eval's transcription metric with onsets within 50 ms and pitches within 50
    cents, offsets ignored. `reference` must hold at least one note."""
    from mir_eval.transcription import precision_recall_f1_overlap

    def arrays(notes):
        intervals = np.array([[a, max(b, a + 1e-3)] for a, b, _ in notes], dtype=np.float64).reshape(-1, 2)
        return intervals, 440.0 * 2.0 ** ((np.array([p for *_, p in notes], dtype=np.float64) - 69) / 12)
    if not reference:
        raise ValueError("note scores need at least one reference note")
    (ref_i, ref_p), (est_i, est_p) = arrays(reference), arrays(estimate)
    with warnings.catch_warnings():  # no estimated note is a score of 0, not a warning
        warnings.simplefilter("ignore")
        precision, recall, f1, _ = precision_recall_f1_overlap(ref_i, ref_p, est_i, est_p, offset_ratio=None)
    return {"note_precision": float(precision), "note_recall": float(recall), "note_f1": float(f1)}
