"""How much of the true result each render mode gives back, measured without real weights: an
oracle stands in for the model.

    python benchmarks/render_fidelity.py [--songs 8] [--seconds 6]

Songs are synthetic multitracks (`imgen_core/synthetic.py`: drums, bass, piano, guitar), stereo
at 44.1 kHz, each stem panned differently. For each operation the ideal result is known (remove: the mix without the
stem; extract: the stem; add: the full mix from the mix without it). The oracle "model" returns
that ideal result through a channel like the model's path: mono, 32 kHz (so band-limited to 16
kHz), with noise at -25 dB; its "reconstruction" of the input goes through the same channel
(fresh noise). `model` rendering is that output on both channels at 44.1 kHz; `preserve` is
render.py applied to the original. Printed: SI-SDR of each against the true stereo 44.1 kHz
result, and the correlation between the left and right channels (the target's for reference).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgen_core import render  # noqa: E402
from imgen_core.audio import resample  # noqa: E402
from imgen_core.synthetic import STEMS, multitrack  # noqa: E402

SR, MODEL_SR = 44100, 32000
NOISE_DB = -25.0


def lossy(x: torch.Tensor, seed: int) -> torch.Tensor:
    """The model's path: stereo 44.1 kHz -> mono 32 kHz with noise at NOISE_DB."""
    mono = resample(x.mean(dim=0), SR, MODEL_SR).double()
    noise = torch.randn(mono.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return mono + noise * mono.pow(2).mean().sqrt() * 10 ** (NOISE_DB / 20)


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    est, ref = estimate.flatten().double(), reference.flatten().double()
    scale = (est @ ref) / (ref @ ref)
    target = scale * ref
    return float(10 * torch.log10(target.pow(2).sum() / (est - target).pow(2).sum()))


def channel_correlation(x: torch.Tensor) -> float:
    a, b = x[0] - x[0].mean(), x[1] - x[1].mean()
    return float((a @ b) / (a.norm() * b.norm() + 1e-12))


def case(operation: str, target_stem: str, stems: dict[str, torch.Tensor], seed: int) -> dict:
    mix = sum(stems.values())
    rest = mix - stems[target_stem]
    source, target = {"remove": (mix, rest), "extract": (mix, stems[target_stem]), "add": (rest, mix)}[operation]
    recon, edited = lossy(source, seed), lossy(target, seed + 1)
    length = source.shape[-1]
    outputs = {"model": render.model_output(edited, MODEL_SR, SR, 2, length).double(),
               "preserve": render.preserve(source, SR, recon, edited, MODEL_SR, [operation])}
    row = {"operation": operation, "stem": target_stem, "target_correlation": channel_correlation(target)}
    for mode, out in outputs.items():
        row[f"{mode}_si_sdr"] = si_sdr(out, target)
        row[f"{mode}_correlation"] = channel_correlation(out)
    return row


def measure(songs: int = 8, seconds: float = 6.0) -> list[dict]:
    rows = []
    for s in range(songs):
        stems = multitrack(seconds, s, SR)
        for operation in ("remove", "extract", "add"):
            for target_stem in STEMS:
                rows.append(case(operation, target_stem, stems, seed=1000 * s + len(rows)))
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Mean per operation over songs and stems."""
    out = []
    for operation in ("remove", "extract", "add"):
        sel = [r for r in rows if r["operation"] == operation]
        mean = {k: sum(r[k] for r in sel) / len(sel) for k in sel[0] if k not in ("operation", "stem")}
        out.append({"operation": operation, **mean})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--songs", type=int, default=8)
    p.add_argument("--seconds", type=float, default=6.0)
    args = p.parse_args()
    rows = measure(args.songs, args.seconds)
    print(f"{args.songs} synthetic songs of {args.seconds:g} s, 4 stems each, oracle through mono 32 kHz "
          f"with noise at {NOISE_DB:g} dB; means over songs and stems")
    print("| operation | SI-SDR preserve | SI-SDR model | gain | L/R correlation preserve | model | target |")
    print("|---|---|---|---|---|---|---|")
    for r in summary(rows):
        print(f"| {r['operation']} | {r['preserve_si_sdr']:.1f} dB | {r['model_si_sdr']:.1f} dB | "
              f"{r['preserve_si_sdr'] - r['model_si_sdr']:+.1f} dB | {r['preserve_correlation']:.2f} | "
              f"{r['model_correlation']:.2f} | {r['target_correlation']:.2f} |")
    print(json.dumps(summary(rows)))


if __name__ == "__main__":
    main()
