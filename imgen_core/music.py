"""Songs rendered on the spot (arrangement.py, synthesis.py) and mixed to stereo as a mix engineer
would: each class at its own level and place in the stereo field. For the demo, the benchmarks
and the tests where music is needed and no file should be shipped; `imgen make-dataset` writes
the same songs as a dataset instead.

Rendering needs tinysoundfont and a SoundFont (synthesis.prepare says what is missing, raising
synthesis.MissingPart); callers without them fall back to synthetic.py's tones and say so.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .arrangement import arrange
from .audio import resample
from .synthesis import SAMPLE_RATE, prepare, render_part

# class: (RMS level, pan from -1 left to 1 right). Drums and bass in the middle and loudest,
# the harmony instruments either side, pads and strings wide and low.
MIX = {"Drums": (0.12, 0.0), "Bass": (0.10, 0.0), "Piano": (0.06, 0.35), "Guitar": (0.06, -0.45),
       "Strings": (0.04, 0.6), "Organ": (0.045, -0.3), "Synth Lead": (0.05, 0.15), "Synth Pad": (0.035, -0.6),
       "Brass": (0.05, 0.25), "Reed": (0.05, -0.2), "Chromatic Percussion": (0.04, 0.5)}
PEAK = 0.89  # the mix's peak, -1 dBFS


def stems(seconds: float, seed: int, sample_rate: int = SAMPLE_RATE, font=None) -> dict[str, torch.Tensor]:
    """The song of `seed` as stereo stems {class name in lower case: float32 [2, T]}, levelled
    and panned (constant power), scaled together so that their sum peaks at PEAK; their sum is
    the song."""
    font = prepare(font)
    song = arrange(seed, seconds)
    out = {}
    for part in song.parts:
        mono = render_part(part, seconds, font).astype(np.float64)
        rms = float(np.sqrt(np.mean(mono ** 2)))
        level, pan = MIX[part.inst_class]
        angle = (pan + 1) * math.pi / 4
        gains = np.array([[math.cos(angle)], [math.sin(angle)]])
        out[part.inst_class.lower()] = gains * mono * (level / rms if rms > 1e-6 else 0.0)
    peak = float(np.abs(sum(out.values())).max()) or 1.0
    scaled = {k: torch.from_numpy(v * (PEAK / peak)).float() for k, v in out.items()}
    if sample_rate != SAMPLE_RATE:
        scaled = {k: resample(v, SAMPLE_RATE, sample_rate) for k, v in scaled.items()}
    return scaled


def song(seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE, channels: int = 2, font=None) -> torch.Tensor:
    """The mix of `stems` as float32 [channels, T] (1: the channels averaged)."""
    mix = sum(stems(seconds, seed, sample_rate, font).values())
    return mix if channels == 2 else mix.mean(0, keepdim=True).expand(channels, -1).clone()
