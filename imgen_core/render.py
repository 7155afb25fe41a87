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


# Frames per FFT batch: bounds the memory of long songs (about 64 MB whatever the rate).
_FFT_VALUES = 1 << 22


def _mdct_tables(n: int):
    """Sine window [2n] and the twiddles that make the orthonormal MDCT of frames of 2n samples,
    sqrt(2/n) sum_t w[t] x[t] cos(pi/n (t + 1/2 + n/2)(k + 1/2)), one 2n-point FFT (forward: before
    and after it; inverse: before and after the inverse FFT)."""
    t = torch.arange(2 * n, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64)
    shift, scale = 0.5 + n / 2, math.sqrt(2 / n)
    window = torch.sin(math.pi * (t + 0.5) / (2 * n))
    forward = (torch.exp(-1j * math.pi * t / (2 * n)), scale * torch.exp(-1j * math.pi * shift * (k + 0.5) / n))
    inverse = (torch.exp(1j * math.pi * shift * k / n), scale * 2 * n * torch.exp(1j * math.pi * (t + shift) / (2 * n)))
    return window, *forward, *inverse


def mdct(x: torch.Tensor, n: int) -> torch.Tensor:
    """[..., T] -> [..., frames, n]; frame f is centred on sample f * n (the STFT's centres).
    Computed with FFTs of 2n points, a batch of frames at a time: O(n log n) a frame."""
    window, pre, post, _, _ = _mdct_tables(n)
    length = x.shape[-1]
    frames = F.pad(x.double(), (n, n + (-length) % n)).unfold(-1, 2 * n, n)
    step = max(1, _FFT_VALUES // (2 * n))
    return torch.cat([(torch.fft.fft(frames[..., a:a + step, :] * (window * pre), dim=-1)[..., :n] * post).real
                      for a in range(0, frames.shape[-2], step)], dim=-2)


def imdct(coeffs: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """The inverse of `mdct`: windowed frames overlap-added, [..., length]."""
    window, _, _, pre, post = _mdct_tables(n)
    count = coeffs.shape[-2]
    out = torch.zeros(*coeffs.shape[:-2], (count + 1) * n, dtype=torch.float64)
    step = max(1, _FFT_VALUES // (2 * n))
    for a in range(0, count, step):
        part = coeffs[..., a:a + step, :]
        spectrum = F.pad(part * pre, (0, n))  # the upper half of the 2n-point spectrum is empty
        frames = (torch.fft.ifft(spectrum, dim=-1) * post).real * window  # [..., k, 2n]
        halves = frames.unflatten(-1, (2, n))
        k = frames.shape[-2]
        out[..., a * n:(a + k) * n] += halves[..., 0, :].flatten(-2)  # first halves, hop n apart
        out[..., (a + 1) * n:(a + k + 1) * n] += halves[..., 1, :].flatten(-2)
    return out[..., n:n + length]


def magnitude(x: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Smoothed magnitudes [frames, bins] of a mono signal on the MDCT grid at `sample_rate`: STFT
    frames centred like the MDCT's, bins between two STFT bins averaged."""
    n = stft_size(sample_rate) // 2
    length = x.shape[-1] + (-x.shape[-1]) % n  # whole frames, as the MDCT pads
    spec = stft(F.pad(x.double(), (0, length - x.shape[-1])), 2 * n, hop=n).abs()
    return _smooth(0.5 * (spec[:-1] + spec[1:])).T


def preserve_mask(recon: torch.Tensor, edited: torch.Tensor, sample_rate: int, peak: float | None = None) -> torch.Tensor:
    """The remove/extract mask [frames, bins] in [0, 1] on the MDCT grid at `sample_rate`, from
    the mono reconstruction and edited signals resampled to that rate (same length). `peak`: the
    largest of the reconstruction's magnitudes over the whole song (default: over these)."""
    n = stft_size(sample_rate) // 2
    r, e = magnitude(recon, sample_rate), magnitude(edited, sample_rate)
    floor = 1e-3 * (float(r.max()) if peak is None else peak) + 1e-12  # where neither has energy: keep
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
    return preserve_at_rate(original, sample_rate, at_rate(recon, model_rate, sample_rate, length),
                            at_rate(edited, model_rate, sample_rate, length), operations)


def preserve_at_rate(original: torch.Tensor, sample_rate: int, recon: torch.Tensor, edited: torch.Tensor,
                     operations, peak: float | None = None) -> torch.Tensor:
    """`preserve` with the model's signals already at the original's rate and length (`peak`:
    see `preserve_mask`)."""
    length = original.shape[-1]
    n_fft = stft_size(sample_rate)
    out = original.double()
    ops = set(operations)
    if ops & set(REMOVING):
        mask = preserve_mask(recon, edited, sample_rate, peak)
        out = imdct(mdct(out, n_fft // 2) * mask, n_fft // 2, length)
    if "add" in ops:
        out = out + istft(added_part(recon, edited, sample_rate), n_fft, length)
    return out.to(original.dtype)


def model_output(edited: torch.Tensor, model_rate: int, sample_rate: int, channels: int, length: int) -> torch.Tensor:
    """The model's mono output at the original's rate on each of its channels, [C, length]."""
    return at_rate(edited.float(), model_rate, sample_rate, length).expand(channels, -1).clone()


def fade_curve(length: int, sample_rate: int, ranges, first: int = 0) -> torch.Tensor:
    """[length] weights of the rendered audio from sample `first` on: 1 inside each (start, end,
    fade) range, 0 outside it and its fades, raised-cosine ramps of its `fade` seconds just
    outside each end. No ranges: all 1."""
    if not ranges:
        return torch.ones(length, dtype=torch.float64)
    t = (first + torch.arange(length, dtype=torch.float64)) / sample_rate
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


# Songs are rendered a segment at a time, so that memory follows the segment, not the song. Each
# segment is rendered with context on both sides, wider than any frame reaches (an STFT frame,
# the mask's smoothing over neighbouring frames), and only its middle kept.
SEGMENT_SECONDS = 30.0
CONTEXT_SECONDS = 1.0


def at_rate(signal: torch.Tensor, model_rate: int, sample_rate: int, length: int) -> torch.Tensor:
    """The model's mono signal [T'] at `sample_rate`, cut or padded to `length` samples."""
    return _fit(resample(signal, model_rate, sample_rate), length)


def in_input_form(original: torch.Tensor, sample_rate: int, edited: torch.Tensor, recon: torch.Tensor | None = None,
                  operations=(), ranges=(), out: torch.Tensor | None = None) -> torch.Tensor:
    """The edit rendered in the original's form, [C, T] like `original` at `sample_rate`, into
    `out` when given. `edited` [T] is the model's mono output at that rate (`at_rate`). With
    `recon` (the model's reconstruction of the original, [T]) the edit is applied to the
    original (`preserve`, by `operations`); without, the output itself is used. Either is mixed
    into the original over `ranges` ((start, end, fade) seconds; none: everywhere), a segment of
    SEGMENT_SECONDS at a time (a song shorter than that in one go)."""
    length = original.shape[-1]
    segments = _segments(length, sample_rate)
    out = torch.empty_like(original) if out is None else out
    peak = None
    if recon is not None and set(operations) & set(REMOVING) and len(segments) > 1:  # the whole song's
        peak = max(float(_kept_rows(magnitude(recon[lo:hi], sample_rate), start - lo, end - lo, end == length,
                                    sample_rate).max()) for start, end, lo, hi in segments)
    for start, end, lo, hi in segments:
        weight = fade_curve(hi - lo, sample_rate, ranges, first=lo)
        piece = original[:, lo:hi]
        if not weight.any():  # outside every range: the original's very samples
            out[:, start:end] = piece[:, start - lo:end - lo]
            continue
        if recon is not None:
            done = preserve_at_rate(piece, sample_rate, recon[lo:hi], edited[lo:hi], operations, peak)
        else:
            done = edited[lo:hi].expand(piece.shape[0], -1)
        out[:, start:end] = crossfade(piece, done.to(original.dtype), weight)[:, start - lo:end - lo]
    return out


def _segments(length: int, sample_rate: int) -> list[tuple[int, int, int, int]]:
    """(start, end, lo, hi): the samples [start, end) a segment gives, rendered from [lo, hi),
    all on the frames' grid so that every frame falls where it would in the whole song."""
    grid = stft_size(sample_rate)
    step = max(grid, round(SEGMENT_SECONDS * sample_rate / grid) * grid)
    if length <= step:
        return [(0, length, 0, length)]
    context = max(grid, round(CONTEXT_SECONDS * sample_rate / grid) * grid)
    return [(start, min(start + step, length), max(0, start - context), min(length, start + step + context))
            for start in range(0, length, step)]


def _kept_rows(frames: torch.Tensor, start: int, end: int, last: bool, sample_rate: int) -> torch.Tensor:
    """The rows of [frames, bins] on the MDCT grid whose frames are centred in [start, end) (and
    the song's last frame, centred on its end, with the last segment)."""
    n = stft_size(sample_rate) // 2
    return frames[start // n:(frames.shape[0] if last else -(-end // n))]


def crossfade(original: torch.Tensor, rendered: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`rendered` where `weight` is 1, `original` (its very samples) where it is 0, mixed between."""
    out = original.clone()
    inside = weight > 0
    w = weight[inside].to(original.dtype)
    out[..., inside] = original[..., inside] * (1 - w) + rendered[..., inside] * w
    return out


def _fit(x: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(x, (0, max(0, length - x.shape[-1])))[..., :length]
