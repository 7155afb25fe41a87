"""Turning the model's output into the result a musician expects.

The model hears and speaks 32 kHz mono through a 2.2 kbps codec. `model` rendering returns that
output as it is. `preserve` rendering estimates the edit by comparing the model's output with the
model's OWN reconstruction of the input (decode(encode(input)): the codec's loss is in both, so
it cancels) and applies that estimate to the original, at its own rate and on its own channels:

- remove / extract: a time-frequency mask, the power ratio |edited|^2 / |reconstruction|^2
  (Wiener's gain) bounded to [0, 1], from magnitudes smoothed over neighbouring bins and frames, multiplies each channel's MDCT (a lapped transform
  that, unlike the STFT, is orthogonal: the result's own MDCT is exactly the masked one, so no
  bin of the result is louder than the same bin of the original). Above the model's band (16 kHz) the model says nothing, so each frame's mask over
  the top of its band (12-15.5 kHz) is applied there: cymbals removed below 16 kHz are removed
  above it too, and what the edit kept keeps its air.
- add: what the model added, edited minus reconstruction in the time-frequency domain where the
  edited bin is louder, is mixed into the original, the same on every channel (centred).

Chained edits mix the two: the mask if any step removed or extracted, the addition if any added.
A time range is rendered by cross-fading the rendered audio into the original (`crossfade`):
outside the range and its fades the original samples are returned untouched.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .audio import resample

MODEL_BAND_HZ = 16_000
TOP_BAND_HZ = (12_000, 15_500)
RENDER_MODES = ("auto", "preserve", "model")
REMOVING = ("remove", "extract")


def stft_size(sample_rate: int) -> int:
    """About 46 ms per frame (2048 samples at 44.1 kHz), a power of two."""
    return 2 ** round(math.log2(0.046 * sample_rate))


def stft(x: torch.Tensor, n_fft: int, hop: int | None = None) -> torch.Tensor:
    """[..., T] -> complex [..., bins, frames]: Hann window, hop n_fft / 4 unless given."""
    flat = x.reshape(-1, x.shape[-1]).double()
    spec = torch.stft(flat, n_fft, hop or n_fft // 4, window=torch.hann_window(n_fft, dtype=torch.float64),
                      pad_mode="constant", return_complex=True)  # constant: clips shorter than a frame too
    return spec.reshape(*x.shape[:-1], *spec.shape[-2:])


def istft(spec: torch.Tensor, n_fft: int, length: int) -> torch.Tensor:
    flat = spec.reshape(-1, *spec.shape[-2:])
    x = torch.istft(flat, n_fft, n_fft // 4, window=torch.hann_window(n_fft, dtype=torch.float64), length=length)
    return x.reshape(*spec.shape[:-2], length)


def _smooth(mag: torch.Tensor) -> torch.Tensor:
    """Average over 3 bins x 3 frames: a mask from single noisy bins would flutter."""
    return F.avg_pool2d(mag[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]


def mdct_basis(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sine window [2n] and orthonormal MDCT basis [2n, n]: frames of 2n samples, hop n."""
    t = torch.arange(2 * n, dtype=torch.float64)
    window = torch.sin(math.pi * (t + 0.5) / (2 * n))
    k = torch.arange(n, dtype=torch.float64)
    basis = math.sqrt(2 / n) * torch.cos(math.pi / n * (t[:, None] + 0.5 + n / 2) * (k[None, :] + 0.5))
    return window, basis


_CHUNK = 2048  # frames per matrix product: bounds the memory of long songs (about 70 MB at 44.1 kHz)


def mdct(x: torch.Tensor, n: int) -> torch.Tensor:
    """[..., T] -> [..., frames, n]; frame f is centred on sample f * n (the STFT's centres)."""
    window, basis = mdct_basis(n)
    length = x.shape[-1]
    frames = F.pad(x.double(), (n, n + (-length) % n)).unfold(-1, 2 * n, n)
    return torch.cat([(frames[..., a:a + _CHUNK, :] * window) @ basis
                      for a in range(0, frames.shape[-2], _CHUNK)], dim=-2)


def imdct(coeffs: torch.Tensor, n: int, length: int) -> torch.Tensor:
    window, basis = mdct_basis(n)
    count = coeffs.shape[-2]
    out = torch.zeros(*coeffs.shape[:-2], (count + 1) * n, dtype=torch.float64)
    for a in range(0, count, _CHUNK):
        frames = (coeffs[..., a:a + _CHUNK, :] @ basis.T) * window  # [..., k, 2n]
        halves = frames.unflatten(-1, (2, n))
        k = frames.shape[-2]
        out[..., a * n:(a + k) * n] += halves[..., 0, :].flatten(-2)  # first halves, hop n apart
        out[..., (a + 1) * n:(a + k + 1) * n] += halves[..., 1, :].flatten(-2)
    return out[..., n:n + length]


def preserve_mask(recon: torch.Tensor, edited: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """The remove/extract mask [frames, bins] in [0, 1] on the MDCT grid at `sample_rate`, from
    the mono reconstruction and edited signals resampled to that rate (same length)."""
    n = stft_size(sample_rate) // 2
    length = recon.shape[-1] + (-recon.shape[-1]) % n  # whole frames, as the MDCT pads

    def magnitude(x):  # STFT frames centred like the MDCT's; bins between two STFT bins averaged
        spec = stft(F.pad(x.double(), (0, length - x.shape[-1])), 2 * n, hop=n).abs()
        return _smooth(0.5 * (spec[:-1] + spec[1:])).T

    r, e = magnitude(recon), magnitude(edited)
    floor = 1e-3 * float(r.max()) + 1e-12  # where neither has energy the edit says nothing: keep
    mask = ((e + floor) / (r + floor)).clamp(0.0, 1.0) ** 2  # a power ratio: Wiener's gain
    freqs = (torch.arange(n, dtype=torch.float64) + 0.5) * sample_rate / (2 * n)
    top = (freqs >= TOP_BAND_HZ[0]) & (freqs < min(TOP_BAND_HZ[1], sample_rate / 2))
    above = freqs >= MODEL_BAND_HZ
    if above.any() and top.any():
        mask[:, above] = mask[:, top].mean(dim=1, keepdim=True)
    # Neighbouring frames with close gains let the MDCT's time-domain aliasing cancel (pre-echo)
    mask = F.avg_pool1d(mask.T[None], 3, stride=1, padding=1, count_include_pad=False)[0].T
    # Frames reaching past either end of the signal stay as they are: only then is the result's
    # MDCT exactly the masked one (their halves outside the signal are cut off). 23 to 70 ms.
    frames = torch.arange(mask.shape[0])
    mask[(frames == 0) | ((frames + 1) * n > recon.shape[-1])] = 1.0
    return mask


def added_part(recon: torch.Tensor, edited: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """What the model added, as a mono STFT at `sample_rate`: edited minus reconstruction where
    the edited bin is louder, zero elsewhere."""
    n_fft = stft_size(sample_rate)
    r, e = stft(recon, n_fft), stft(edited, n_fft)
    return torch.where(e.abs() > r.abs(), e - r, torch.zeros_like(e))


def preserve(original: torch.Tensor, sample_rate: int, recon: torch.Tensor, edited: torch.Tensor,
             model_rate: int, operations) -> torch.Tensor:
    """The edit applied to `original` [C, T] at its rate. `recon` and `edited`: the model's
    mono [T'] at `model_rate`, of the same span of time. `operations`: those applied (add,
    remove, extract), which decide mask, addition or both."""
    length = original.shape[-1]
    r = _fit(resample(recon.double(), model_rate, sample_rate), length)
    e = _fit(resample(edited.double(), model_rate, sample_rate), length)
    n_fft = stft_size(sample_rate)
    out = original.double()
    ops = set(operations)
    if ops & set(REMOVING):
        out = imdct(mdct(out, n_fft // 2) * preserve_mask(r, e, sample_rate), n_fft // 2, length)
    if "add" in ops:
        out = out + istft(added_part(r, e, sample_rate), n_fft, length)
    return out.to(original.dtype)


def model_output(edited: torch.Tensor, model_rate: int, sample_rate: int, channels: int, length: int) -> torch.Tensor:
    """The model's mono output at the original's rate on each of its channels, [C, length]."""
    out = _fit(resample(edited.float(), model_rate, sample_rate), length)
    return out.expand(channels, -1).clone()


def fade_curve(length: int, sample_rate: int, ranges) -> torch.Tensor:
    """[length] weights of the rendered audio: 1 inside each (start, end, fade) range, 0 outside
    it and its fades, raised-cosine ramps of its `fade` seconds just outside each end. No ranges:
    all 1."""
    if not ranges:
        return torch.ones(length, dtype=torch.float64)
    t = torch.arange(length, dtype=torch.float64) / sample_rate
    w = torch.zeros(length, dtype=torch.float64)
    for start, end, fade in ranges:
        if fade > 0:
            rise = ((t - (start - fade)) / fade).clamp(0, 1)
            fall = (((end + fade) - t) / fade).clamp(0, 1)
            one = 0.5 - 0.5 * torch.cos(math.pi * torch.minimum(rise, fall))
        else:
            one = ((t >= start) & (t < end)).double()
        w = torch.maximum(w, one)
    return w


def in_input_form(original: torch.Tensor, sample_rate: int, edited: torch.Tensor, model_rate: int, *,
                  recon: torch.Tensor | None = None, operations=(), ranges=()) -> torch.Tensor:
    """The edit rendered in the original's form, [B, C, T] like `original` at `sample_rate`.
    `edited` [B, T'] is the model's mono output at `model_rate`. With `recon` (the model's
    reconstruction of the original, [B, T']) the edit is applied to the original (`preserve`,
    by `operations`); without, the output itself is used (`model_output`). Either is mixed into
    the original over `ranges` ((start, end, fade) seconds; none: everywhere)."""
    weight = fade_curve(original.shape[-1], sample_rate, ranges)
    out = []
    for b in range(original.shape[0]):
        if recon is not None:
            done = preserve(original[b], sample_rate, recon[b], edited[b], model_rate, operations)
        else:
            done = model_output(edited[b], model_rate, sample_rate, original.shape[1], original.shape[-1])
        out.append(crossfade(original[b], done.to(original.dtype), weight))
    return torch.stack(out)


def crossfade(original: torch.Tensor, rendered: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`rendered` where `weight` is 1, `original` (its very samples) where it is 0, mixed between."""
    out = original.clone()
    inside = weight > 0
    w = weight[inside].to(original.dtype)
    out[..., inside] = original[..., inside] * (1 - w) + rendered[..., inside] * w
    return out


def _fit(x: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(x, (0, max(0, length - x.shape[-1])))[..., :length]
