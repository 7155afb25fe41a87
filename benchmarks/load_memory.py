"""Peak memory and time to a ready model when loading MusicGen weights with an Instruct-MusicGen
adapter, from synthetic files in the real formats (an audiocraft `state_dict.bin` in fp16 and our
fp32 safetensors adapter), at MusicGen-large size by default.

    python benchmarks/load_memory.py                       # large: writes ~10 GB of files first
    python benchmarks/load_memory.py --size small --dtypes fp32,fp16,bf16

Each load runs in a fresh process; printed per dtype: resident memory before loading (interpreter
and torch), the peak (VmHWM) above it, the bytes of the loaded weights, their ratio, and seconds.
The LM with its adapter is what is measured: T5 and EnCodec come through transformers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgen_core.adapter_file import adapter_metadata, expected_adapter_shapes, write_safetensors  # noqa: E402
from imgen_core.audiocraft_lm import write_audiocraft_lm  # noqa: E402
from imgen_core.config import FusionConfig, LMConfig  # noqa: E402
from imgen_core.model import InstructMusicGen  # noqa: E402

SIZES = {"small": LMConfig(dim=1024, num_heads=16, num_layers=24),
         "medium": LMConfig(dim=1536, num_heads=24, num_layers=48),
         "large": LMConfig(dim=2048, num_heads=32, num_layers=48)}
GB = 1 << 30


def _filled(shape, dtype, seed):
    return torch.empty(shape, dtype=dtype).uniform_(-0.02, 0.02, generator=torch.Generator().manual_seed(seed))


def write_files(cfg: LMConfig, folder: Path) -> tuple[Path, Path]:
    base, adapter = folder / "state_dict.bin", folder / "adapter.safetensors"
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in InstructMusicGen(cfg).base_state_dict().items()}
    state = {k: _filled(s, torch.float16, i) for i, (k, s) in enumerate(shapes.items())}
    write_audiocraft_lm(base, cfg, state, dtype=torch.float16)
    del state
    fusion = FusionConfig(num_layers=cfg.num_layers)
    tensors = {k: _filled(s, torch.float32, i) for i, (k, s) in
               enumerate(expected_adapter_shapes(cfg.num_layers, cfg.dim, fusion).items())}
    write_safetensors(tensors, adapter, adapter_metadata(fusion, cfg.num_layers, cfg.dim, "synthetic", "slakh",
                                                         ["drums", "bass", "piano", "guitar"]))
    return base, adapter


CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[4])
import torch
from imgen_core.loader import load_model
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
before = status('VmRSS')
start = time.perf_counter()
model, _ = load_model(sys.argv[1], sys.argv[2], dtype=sys.argv[3], device='cpu', merge_lora=True)
seconds = time.perf_counter() - start
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({'before': before, 'peak': status('VmHWM'), 'weights': weights, 'seconds': seconds}))
"""


def measure(base: Path, adapter: Path, dtype: str) -> dict:
    run = subprocess.run([sys.executable, "-c", CHILD, str(base), str(adapter), dtype, str(REPO)],
                         capture_output=True, text=True, check=True)
    r = json.loads(run.stdout.strip().splitlines()[-1])
    r["increase"] = r["peak"] - r["before"]
    r["ratio"] = r["increase"] / r["weights"]
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="large")
    p.add_argument("--dtypes", default="fp16,fp32", help="comma-separated, of fp32, fp16, bf16")
    p.add_argument("--workdir", type=Path, default=None, help="where the synthetic files go (default: a temp dir)")
    p.add_argument("--write-into", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    cfg = SIZES[args.size]
    if args.write_into:
        write_files(cfg, args.write_into)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        # written by another process, so that this one holds none of that memory while measuring
        subprocess.run([sys.executable, __file__, "--size", args.size, "--write-into", d], check=True)
        base, adapter = Path(d) / "state_dict.bin", Path(d) / "adapter.safetensors"
        print(f"MusicGen-{args.size}: base {base.stat().st_size / GB:.2f} GB (fp16), adapter "
              f"{adapter.stat().st_size / GB:.2f} GB (fp32), torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"{'dtype':6s} {'RSS before':>11s} {'peak above':>11s} {'weights':>9s} {'peak/weights':>13s} {'seconds':>8s}")
        for dtype in args.dtypes.split(","):
            r = measure(base, adapter, dtype)
            print(f"{dtype:6s} {r['before'] / GB:9.2f} GB {r['increase'] / GB:8.2f} GB {r['weights'] / GB:6.2f} GB "
                  f"{r['ratio']:13.2f} {r['seconds']:8.1f}", flush=True)
            print(json.dumps({"size": args.size, "dtype": dtype, **r}))


if __name__ == "__main__":
    main()
