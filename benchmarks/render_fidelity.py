"""How much of the true result each render mode gives back, measured without real weights: an
oracle stands in for the model.

    python benchmarks/render_fidelity.py [--songs 8] [--seconds 6] [--material rendered,loops,synthetic]
                                         [--noise-db -25,-15,-5]

Material (44.1 kHz stereo, every stem known):
- rendered: songs written as MIDI and rendered part by part with a General MIDI SoundFont
  (imgen_core/music.py: drums, bass, piano, guitar in most songs, other instruments in some),
  each class at its own level and place in the stereo field, as a mix engineer would;
- loops: the same songs with their drums replaced by a recorded drum loop (CC0, Debian's
  sonic-pi-samples: the Amen break, a breakbeat, two kits, a tabla), in its own stereo;
- synthetic: imgen_core/synthetic.py's tones and noise (four panned "stems").
The targets are the Slakh model's four stems (drums, bass, piano, guitar), where a song has them.

For each operation the ideal result is known (remove: the mix without the stem; extract: the
stem; add: the full mix from the mix without it). The oracle "model" returns that ideal result
through a channel like the model's path: mono, 32 kHz (so band-limited to 16 kHz), with noise at
a level below the signal's (--noise-db; it stands for everything a real model and its codec get
wrong); its "reconstruction" of the input goes through the same channel (fresh noise). `model`
rendering is that output on both channels at 44.1 kHz; `preserve` is render.py applied to the
original. Printed per material and noise level: SI-SDR of each against the true stereo 44.1 kHz
result and the correlation between the left and right channels (the target's for reference), per
operation, and per operation and stem at the first noise level; and the seconds the material
took (making the songs, preserve's rendering against real time). The last line is every
result as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgen_core import render  # noqa: E402
from imgen_core.audio import resample  # noqa: E402

SR, MODEL_SR = 44100, 32000
NOISE_DB = (-25.0,)
TARGETS = ("drums", "bass", "piano", "guitar")
OPERATIONS = ("remove", "extract", "add")
LOOPS = Path("/usr/share/sonic-pi/samples")
DRUM_LOOPS = ("loop_amen_full", "loop_breakbeat", "loop_compus", "loop_safari", "loop_tabla")


def lossy(x: torch.Tensor, seed: int, noise_db: float) -> torch.Tensor:
    """The model's path: stereo 44.1 kHz -> mono 32 kHz with white noise `noise_db` below it."""
    mono = resample(x.mean(dim=0), SR, MODEL_SR).double()
    noise = torch.randn(mono.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return mono + noise * mono.pow(2).mean().sqrt() * 10 ** (noise_db / 20)


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    est, ref = estimate.flatten().double(), reference.flatten().double()
    scale = (est @ ref) / (ref @ ref)
    target = scale * ref
    return float(10 * torch.log10(target.pow(2).sum() / (est - target).pow(2).sum()))


def channel_correlation(x: torch.Tensor) -> float:
    a, b = x[0] - x[0].mean(), x[1] - x[1].mean()
    return float((a @ b) / (a.norm() * b.norm() + 1e-12))


def case(operation: str, target_stem: str, stems: dict[str, torch.Tensor], seed: int, noise_db: float) -> dict:
    mix = sum(stems.values()).double()
    rest = mix - stems[target_stem].double()
    source, target = {"remove": (mix, rest), "extract": (mix, stems[target_stem].double()),
                      "add": (rest, mix)}[operation]
    recon, edited = lossy(source, seed, noise_db), lossy(target, seed + 1, noise_db)
    length = source.shape[-1]
    began = time.perf_counter()
    preserved = render.preserve(source, SR, recon, edited, MODEL_SR, [operation])
    seconds = time.perf_counter() - began
    outputs = {"model": render.model_output(edited, MODEL_SR, SR, 2, length).double(), "preserve": preserved}
    row = {"operation": operation, "stem": target_stem, "noise_db": noise_db,
           "target_correlation": channel_correlation(target),
           "preserve_seconds_per_second": seconds / (length / SR)}
    for mode, out in outputs.items():
        row[f"{mode}_si_sdr"] = si_sdr(out, target)
        row[f"{mode}_correlation"] = channel_correlation(out)
    return row


# ------------------------------------------------------------------ material

def rendered_stems(seconds: float, seed: int) -> dict[str, torch.Tensor]:
    from imgen_core import music
    return music.stems(seconds, seed)


def loop_stems(seconds: float, seed: int) -> dict[str, torch.Tensor]:
    """A rendered song with a recorded drum loop (repeated to length, in its own stereo) at the
    level its rendered drums had, or given the drums' level where the song had none."""
    import soundfile as sf

    from imgen_core import music
    stems = music.stems(seconds, seed)
    data, rate = sf.read(LOOPS / f"{DRUM_LOOPS[seed % len(DRUM_LOOPS)]}.flac", dtype="float64", always_2d=True)
    loop = resample(torch.from_numpy(data.T.copy()), rate, SR).double()
    n = stems["bass" if "bass" in stems else next(iter(stems))].shape[-1]
    loop = loop.repeat(1, math.ceil(n / loop.shape[-1]))[:, :n]
    level = stems["drums"].double().pow(2).mean().sqrt() if "drums" in stems else music.MIX["Drums"][0] * 0.5
    stems["drums"] = (loop * level / loop.pow(2).mean().sqrt()).float()
    peak = float(sum(stems.values()).abs().max())
    return {k: v * (music.PEAK / peak) for k, v in stems.items()}


def synthetic_stems(seconds: float, seed: int) -> dict[str, torch.Tensor]:
    from imgen_core.synthetic import multitrack
    return multitrack(seconds, seed, SR)


MATERIALS = {"rendered": (rendered_stems, "songs rendered from MIDI (FluidR3 GM or TimGM6mb), panned and levelled"),
             "loops": (loop_stems, "rendered songs with recorded CC0 drum loops in place of their drums"),
             "synthetic": (synthetic_stems, "synthetic tones and noise, four panned stems")}


def available(material: str) -> str | None:
    """Why `material` cannot be made here, or None."""
    if material in ("rendered", "loops"):
        from imgen_core.synthesis import MissingPart, prepare
        try:
            prepare()
        except MissingPart as e:
            return str(e)
    if material == "loops" and not all((LOOPS / f"{name}.flac").is_file() for name in DRUM_LOOPS):
        return f"the recorded loops are not in {LOOPS} (apt-get install sonic-pi-samples)"
    return None


def measure(material: str, songs: int = 8, seconds: float = 6.0, noise_db=NOISE_DB) -> tuple[list[dict], float]:
    """(a row per song, noise level, operation and target stem present, seconds spent making the
    songs)."""
    make = MATERIALS[material][0]
    rows, making = [], 0.0
    for s in range(songs):
        began = time.perf_counter()
        stems = make(seconds, s)
        making += time.perf_counter() - began
        for db in noise_db:
            for operation in OPERATIONS:
                for target_stem in TARGETS:
                    if target_stem in stems and len(stems) > 1:
                        rows.append(case(operation, target_stem, stems, 1000 * s + len(rows), db))
    return rows, making


def means(rows: list[dict], **where) -> dict:
    sel = [r for r in rows if all(r[k] == v for k, v in where.items())]
    return {**where, "cases": len(sel),
            **{k: sum(r[k] for r in sel) / len(sel) for k in sel[0] if k not in ("operation", "stem", "noise_db")}}


def summary(rows: list[dict], noise_db: float) -> list[dict]:
    """Mean per operation over songs and stems, at one noise level."""
    return [means(rows, noise_db=noise_db, operation=op) for op in OPERATIONS
            if any(r["operation"] == op for r in rows)]


def per_stem(rows: list[dict], noise_db: float) -> list[dict]:
    return [means(rows, noise_db=noise_db, operation=op, stem=stem) for op in OPERATIONS for stem in TARGETS
            if any(r["operation"] == op and r["stem"] == stem for r in rows)]


def table(entries: list[dict], first: str) -> list[str]:
    lines = [f"| {first} | cases | SI-SDR preserve | SI-SDR model | gain | L/R preserve | L/R model | L/R target |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in entries:
        name = r["operation"] + (f" {r['stem']}" if "stem" in r else "")
        lines.append(f"| {name} | {r['cases']} | {r['preserve_si_sdr']:.1f} dB | {r['model_si_sdr']:.1f} dB | "
                     f"{r['preserve_si_sdr'] - r['model_si_sdr']:+.1f} dB | {r['preserve_correlation']:.2f} | "
                     f"{r['model_correlation']:.2f} | {r['target_correlation']:.2f} |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--songs", type=int, default=8)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--material", default="rendered,loops",
                   help=f"comma-separated, among {', '.join(MATERIALS)} (default rendered,loops)")
    p.add_argument("--noise-db", default=",".join(f"{n:g}" for n in NOISE_DB),
                   help="comma-separated levels of the oracle's errors against the signal, in dB (default -25)")
    args = p.parse_args()
    chosen = [m.strip() for m in args.material.split(",") if m.strip()]
    if not chosen or any(m not in MATERIALS for m in chosen):
        p.error(f"--material takes a comma-separated list of {', '.join(MATERIALS)}; got {args.material!r}")
    try:
        noise = [float(n) for n in args.noise_db.split(",")]
    except ValueError:
        p.error(f"--noise-db takes comma-separated numbers (dB); got {args.noise_db!r}")
    results = {}
    for material in chosen:
        why = available(material)
        if why:
            print(f"{material}: SKIPPED, {why}")
            continue
        began = time.perf_counter()
        rows, making = measure(material, args.songs, args.seconds, noise)
        took = time.perf_counter() - began
        rate = sum(r["preserve_seconds_per_second"] for r in rows) / len(rows)
        print(f"\n{material}: {args.songs} songs of {args.seconds:g} s, {MATERIALS[material][1]}; oracle through "
              f"mono 32 kHz; means over songs (and stems). {took:.0f} s in all ({making:.0f} s making the songs); "
              f"preserve rendered {1 / rate:.0f}x faster than real time on {torch.get_num_threads()} threads.")
        results[material] = {"seconds": took, "making_seconds": making}
        for db in noise:
            print(f"\noracle's errors at {db:g} dB")
            print("\n".join(table(summary(rows, db), "operation")))
            results[material][f"{db:g}"] = {"summary": summary(rows, db), "per_stem": per_stem(rows, db)}
        print(f"\nper stem, errors at {noise[0]:g} dB")
        print("\n".join(table(per_stem(rows, noise[0]), "operation and stem")))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
