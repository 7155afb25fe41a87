"""MusicGen's delay pattern: codebook k is shifted right by delays[k] steps behind one leading
special step. Step s of the pattern sequence holds, for codebook k, frame t = s - 1 - delays[k].
"""
from __future__ import annotations

import torch


def pattern_length(frames: int, delays) -> int:
    """Steps of the full pattern of `frames` frames: the leading special step, the frames, the delays."""
    return frames + 1 + max(delays)


def build_sequence(codes: torch.Tensor, delays, special: int, steps: int | None = None) -> torch.Tensor:
    """Codes [B, K, T] -> pattern sequence [B, K, S]; empty slots hold `special`.

    `steps` defaults to the full pattern; teacher forcing keeps only T + 1 steps (audiocraft's
    `keep_only_valid_steps`)."""
    b, k, t = codes.shape
    steps = pattern_length(t, delays) if steps is None else steps
    seq = torch.full((b, k, steps), special, dtype=codes.dtype, device=codes.device)
    for cb, d in enumerate(delays):
        n = max(0, min(t, steps - 1 - d))
        seq[:, cb, 1 + d:1 + d + n] = codes[:, cb, :n]
    return seq


def revert_sequence(seq: torch.Tensor, delays, frames: int) -> torch.Tensor:
    """Pattern sequence [B, K, S] -> codes [B, K, frames]."""
    return torch.stack([seq[:, cb, 1 + d:1 + d + frames] for cb, d in enumerate(delays)], dim=1)


def revert_logits(seq_logits: torch.Tensor, delays, frames: int):
    """Logits over the teacher-forced sequence [B, K, S, card] -> per-frame logits [B, K, T, card]
    and the mask of frames whose prediction is valid. The logit at step s predicts step s + 1, so
    frame t of codebook k is predicted at step t + delays[k]; invalid frames hold NaN."""
    b, k, s, card = seq_logits.shape
    out = torch.full((b, k, frames, card), float("nan"), dtype=seq_logits.dtype, device=seq_logits.device)
    mask = torch.zeros((k, frames), dtype=torch.bool, device=seq_logits.device)
    for cb, d in enumerate(delays):
        n = max(0, min(frames, s - 1 - d))
        out[:, cb, :n] = seq_logits[:, cb, d:d + n]
        mask[cb, :n] = True
    return out, mask[None].expand(b, -1, -1)


def valid_mask(frames: int, delays, device=None) -> torch.Tensor:
    """[K, S] mask of the full pattern: True where a step holds a real frame of that codebook."""
    steps = pattern_length(frames, delays)
    s = torch.arange(steps, device=device)
    return torch.stack([(s >= 1 + d) & (s < 1 + d + frames) for d in delays])
