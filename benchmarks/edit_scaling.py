"""How editing scales with song length, with the tiny random model (CPU).

    python benchmarks/edit_scaling.py                      # seconds per audio second, 3 lengths
    python benchmarks/edit_scaling.py --rss 60 600         # peak RSS of a 1-minute vs a 10-minute edit

Each measurement edits a synthesized stereo 44.1 kHz song end to end (resample, encode, windowed
edit, decode, back to 44.1 kHz stereo). Peak RSS is measured in a fresh process per length.
Synthetic tones, not rendered music, on purpose: what an edit costs is set by the length (windows
and decoding steps), not by the notes, and rendering ten minutes of music in the measured
process would weigh in its peak.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def edit_once(seconds: float) -> float:
    from imgen_core.synthetic import song
    from imgen_core.tiny import tiny_editor
    editor = tiny_editor(seed=0)
    wav = song(seconds)
    start = time.perf_counter()
    out, rate = editor.edit_audio(wav, 44100, editor.instruction("remove", "drums"), rate="input")
    elapsed = time.perf_counter() - start
    assert out.shape[-1] == wav.shape[-1] and rate == 44100
    return elapsed


def peak_rss(seconds: float) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); sys.argv = ['x']\n"
            "from benchmarks.edit_scaling import edit_once\n"
            f"t = edit_once({seconds})\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "print(t, int(hwm) * 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    elapsed, hwm = out.stdout.split()
    return {"seconds": seconds, "edit_s": float(elapsed), "peak_rss_mb": int(hwm) / 2**20,
            "audio_buffers_mb": seconds * 44100 * 2 * 4 / 2**20}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=float, nargs=3, default=[30.0, 60.0, 120.0], help="song lengths in seconds")
    p.add_argument("--rss", type=float, nargs="+", help="measure peak RSS for these lengths instead")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss:
        rows = [peak_rss(s) for s in args.rss]
        print(f"{'length':>8} {'edit time':>10} {'peak RSS':>10} {'one input buffer':>17}")
        for r in rows:
            print(f"{r['seconds']:7.0f}s {r['edit_s']:9.1f}s {r['peak_rss_mb']:8.0f}MB {r['audio_buffers_mb']:15.1f}MB")
        print(json.dumps(rows))
        return
    edit_once(2.0)  # warm-up: imports, first allocations
    rows = []
    for seconds in args.lengths:
        elapsed = edit_once(seconds)
        rows.append({"seconds": seconds, "edit_s": elapsed, "s_per_audio_s": elapsed / seconds})
    print(f"{'length':>8} {'edit time':>10} {'s per audio s':>14}")
    for r in rows:
        print(f"{r['seconds']:7.0f}s {r['edit_s']:9.2f}s {r['s_per_audio_s']:13.4f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
