"""Synthetic multitrack audio made on the spot, for the offline demo, the benchmarks and the tests:
no file to ship, and every stem known. Tones and noise shaped like parts of a band, not music."""
from __future__ import annotations

import math

import torch

STEMS = ("drums", "bass", "piano", "guitar")
PANS = {"drums": 0.0, "bass": -0.2, "piano": 0.6, "guitar": -0.7}  # -1 left .. 1 right


def stem(kind: str, seconds: float, seed: int, sample_rate: int = 44100) -> torch.Tensor:
    """A mono stem [T] (float64, peak 1): gated noise bursts (drums, full band), a low sine (bass),
    decaying notes with harmonics (piano), a sawtooth with harmonics to Nyquist (guitar), a
    steady tone for any other class."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    if kind == "drums":
        beat = torch.sin(2 * math.pi * (2 + torch.rand(1, generator=g).item()) * t) > 0.8
        x = (torch.rand(t.shape, generator=g, dtype=torch.float64) - 0.5) * 2 * beat
    elif kind == "bass":
        x = torch.sin(2 * math.pi * (45 + 30 * torch.rand(1, generator=g).item()) * t)
    elif kind == "piano":
        f = 220 * 2 ** (torch.randint(0, 12, (1,), generator=g).item() / 12)
        x = sum(torch.sin(2 * math.pi * f * h * t) / h for h in (1, 2, 3)) * torch.exp(-3 * (t % 0.5))
    elif kind == "guitar":
        f = 110 * 2 ** (torch.randint(0, 12, (1,), generator=g).item() / 12)
        x = 2 * ((f * t) % 1) - 1
    else:
        x = torch.sin(2 * math.pi * 330 * 2 ** (torch.randint(0, 12, (1,), generator=g).item() / 12) * t)
    return x / x.abs().max()


def multitrack(seconds: float, seed: int, sample_rate: int = 44100) -> dict[str, torch.Tensor]:
    """Four stereo stems [2, T] (float64), each panned (constant power) and at its own level; their
    sum is the song."""
    out = {}
    for i, kind in enumerate(STEMS):
        angle = (PANS[kind] + 1) * math.pi / 4
        gains = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)[:, None]
        out[kind] = 0.25 * gains * stem(kind, seconds, seed * 10 + i, sample_rate)
    return out


def song(seconds: float, seed: int = 0, sample_rate: int = 44100, channels: int = 2) -> torch.Tensor:
    """The mix of `multitrack` as float32 [channels, T] (1: the channels averaged)."""
    mix = sum(multitrack(seconds, seed, sample_rate).values()).float()
    return mix if channels == 2 else mix.mean(0, keepdim=True).expand(channels, -1).clone()
