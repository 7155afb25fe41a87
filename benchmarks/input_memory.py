"""Peak memory of `imgen edit` on the largest inputs it accepts, with the tiny model (CPU).

    python benchmarks/input_memory.py                  # 1 s at 768 kHz, and 2**28 samples
    python benchmarks/input_memory.py --only rate      # just the first

Each input is written to a temporary folder and edited by `imgen edit` (remove drums, preserve
rendering, the output in the input's format) in a fresh process; printed: the input's length,
its samples as float32, the process's peak resident memory (VmHWM) and the seconds it took, and
the same for a one-second 48 kHz edit (what loading the tiny model and the libraries costs).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from imgen_core.cli import main
code = main(sys.argv[2:])
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print('PEAK', code, int(hwm) * 1024)
"""


def write_input(path: Path, seconds: float, rate: int, channels: int = 2):
    """A chord with a beat, a block at a time (the file can be larger than memory should hold)."""
    with sf.SoundFile(str(path), "w", rate, channels, subtype="PCM_16") as f:
        block = 1 << 20
        total = int(seconds * rate)
        for start in range(0, total, block):
            t = np.arange(start, min(total, start + block)) / rate
            x = 0.2 * (np.sin(2 * np.pi * 220 * t) + np.sin(2 * np.pi * 277 * t)) + 0.1 * (np.sin(2 * np.pi * 2 * t) > 0.9)
            f.write(np.repeat(x[:, None], channels, axis=1).astype(np.float32))


def measure(path: Path, tiny: dict, out: Path) -> dict:
    args = ["edit", str(path), "--op", "remove", "--stem", "drums", "-o", str(out), "--base", tiny["base"],
            "--adapter", tiny["adapter"], "--t5", tiny["t5"], "--encodec", tiny["encodec"], "--offline"]
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", CHILD, str(REPO), *args], capture_output=True, text=True)
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("PEAK")]
    if not line or line[0].split()[1] != "0":
        raise SystemExit(f"imgen edit failed on {path.name}:\n{run.stderr[-3000:]}")
    info = sf.info(str(path))
    return {"input": path.name, "seconds_of_audio": info.duration, "rate": info.samplerate,
            "samples": info.frames * info.channels, "float32_gb": info.frames * info.channels * 4 / 2 ** 30,
            "peak_rss_gb": int(line[0].split()[2]) / 2 ** 30, "seconds": time.perf_counter() - start}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["rate", "length"], help="measure one of the two inputs")
    args = p.parse_args()
    from imgen_core.tiny import save_tiny
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tiny = {k: str(v) for k, v in save_tiny(folder / "tiny").items()}
        inputs = [("reference.wav", 1.0, 48000)]
        if args.only in (None, "rate"):
            inputs.append(("768kHz.wav", 1.0, 768000))
        if args.only in (None, "length"):
            inputs.append(("2pow28.flac", 2 ** 27 / 48000, 48000))  # 2**27 frames x 2 channels
        rows = []
        for name, seconds, rate in inputs:
            write_input(folder / name, seconds, rate)
            rows.append(measure(folder / name, tiny, folder / f"out_{name}"))
            r = rows[-1]
            print(f"{r['input']:>14}: {r['seconds_of_audio']:8.1f} s at {r['rate']} Hz, {r['samples']:>10} samples "
                  f"({r['float32_gb']:.2f} GB as float32): peak RSS {r['peak_rss_gb']:.2f} GB, {r['seconds']:.0f} s",
                  flush=True)
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
