"""How an edit is generated (`Sampling`, the one place its defaults are declared) and how the next
token is chosen from logits: greedy, temperature, top-k, top-p (audiocraft's rules)."""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch

Sampler = Callable[[torch.Tensor], torch.Tensor]  # logits [..., card] -> token ids [...]
# No model has position tables for longer windows (checkpoints.MAX_FRAMES at 50 frames/s); the
# model's own limit (the released one's: 10 s) is checked against it.
MAX_WINDOW_SECONDS = 60
MIN_TEMPERATURE = 1e-3
MAX_BATCH = 64  # songs decoded together at most (imgen edit and eval --batch)


@dataclass(frozen=True)
class Sampling:
    """The settings of one edit. The defaults are the released model's: guidance 3, top-k 100,
    temperature 1 (what Instruct-MusicGen samples with), and windows of the 5 s it was trained on
    (its position embeddings beyond 5 s are untrained), each re-reading 2 s of the one before.
    Checked when made, so a bad setting is refused before any model runs."""

    guidance: float | None = 3.0  # classifier-free guidance coefficient; None: no null-condition rows
    top_k: int = 100              # sample among the k most likely tokens; 0 disables, 1 is greedy
    top_p: float = 0.0            # nucleus sampling threshold; 0 disables (takes precedence over top_k)
    temperature: float = 1.0      # 0 is greedy
    window_seconds: float = 5.0   # songs are edited window by window (windows.py)
    overlap_seconds: float = 2.0  # how much of the previous window each window re-reads
    seed: int = 0                 # the edit's random generator starts from it

    def __post_init__(self):
        if not _real(self.temperature) or not (self.temperature == 0 or self.temperature >= MIN_TEMPERATURE):
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE} (smaller ones overflow the "
                             f"scores; they are greedy in effect), got {self.temperature!r}")
        if not _whole(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not _real(self.top_p) or not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1] (0 disables it), got {self.top_p!r}")
        if self.guidance is not None and (not _real(self.guidance) or not self.guidance >= 0):
            raise ValueError(f"guidance must be a number >= 0, got {self.guidance!r}")
        if not _real(self.window_seconds) or not 0 < self.window_seconds <= MAX_WINDOW_SECONDS:
            raise ValueError(f"the window must be more than 0 and at most {MAX_WINDOW_SECONDS} seconds, got "
                             f"{self.window_seconds!r}")
        if not _real(self.overlap_seconds) or not 0 < self.overlap_seconds < self.window_seconds:
            raise ValueError(f"the overlap must be more than 0 and less than the window ({self.window_seconds} s), "
                             f"got {self.overlap_seconds!r}")
        if not _whole(self.seed) or not -2 ** 63 <= self.seed < 2 ** 64:
            raise ValueError(f"seed must be an integer from -2**63 to 2**64 - 1, got {self.seed!r}")

    def sampler(self, generator=None) -> Sampler:
        """Token ids from logits with these settings, drawing from `generator` (one, or one per
        item: see `sample`)."""
        return functools.partial(sample, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                 generator=generator)

    def window_frames(self, frame_rate: float, max_frames: int) -> tuple[int, int]:
        """(window, overlap) in frames of `frame_rate`, the window at most the model's `max_frames`."""
        window = round(self.window_seconds * frame_rate)
        overlap = round(self.overlap_seconds * frame_rate)
        if not 2 <= window <= max_frames:
            raise ValueError(f"the window must be from {2 / frame_rate:.2f} to {max_frames / frame_rate:.0f} s for "
                             f"this model, got {self.window_seconds} s")
        if not 0 < overlap < window:
            raise ValueError(f"the overlap must be at least one frame ({1 / frame_rate:.2f} s) and less than the "
                             f"window, got {self.overlap_seconds} s")
        return window, overlap


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0,
           generator=None) -> torch.Tensor:
    """Token ids [...] from logits [..., card]. Temperature 0 (or top_k 1) is greedy; top_p > 0
    takes precedence over top_k, as in audiocraft. `generator`: one torch.Generator (or None)
    for all, or a list of one per item (logits [items, ...]), so that an item draws the same
    numbers whatever else is in the batch."""
    if temperature <= 0 or (top_k == 1 and top_p <= 0):
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p > 0:
        probs = _keep_top_p(probs, top_p)
    elif top_k > 0:
        probs = _keep_top_k(probs, min(top_k, probs.shape[-1]))
    # one draw from each row, as torch.multinomial draws it (the same numbers for the same
    # generator) but without its validity check, which waits for the device
    if isinstance(generator, (list, tuple)):  # one generator per item: its draws are its own
        if len(generator) != probs.shape[0]:
            raise ValueError(f"{len(generator)} generators for {probs.shape[0]} items")
        race = torch.stack([torch.empty_like(p).exponential_(1, generator=g) for p, g in zip(probs, generator)])
    else:
        race = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / race).argmax(dim=-1)


def _keep_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(probs, k, dim=-1).values[..., -1:]
    probs = probs * (probs >= kth)
    return probs / probs.sum(dim=-1, keepdim=True)


def _keep_top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)
