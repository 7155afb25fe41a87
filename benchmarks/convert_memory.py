"""Peak memory of `imgen convert` on a large synthetic checkpoint in the official format.

    python benchmarks/convert_memory.py --adapter-mb 1024 --extra-mb 1024   # a ~2 GB checkpoint

Writes a Lightning-style checkpoint whose `state_dict` holds adapter tensors (fusion, LoRA,
cross-attention q/k/v) of about --adapter-mb and frozen LM weights plus optimizer state of about
--extra-mb, converts it in a fresh process, and prints that process's resident memory before the
conversion (after imports) and its peak (VmHWM), against the adapter's size.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgen_core.tiny import write_official_checkpoint  # noqa: E402

MB = 1 << 20


CHILD = """
import json, sys
from imgen_core.official_checkpoint import convert_official
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
before = status('VmRSS')
convert_official(sys.argv[1], sys.argv[2], base_model='synthetic')
print(json.dumps({'rss_before': before, 'peak': status('VmHWM')}))
"""


def measure(adapter_mb: float, extra_mb: float, workdir: Path) -> dict:
    ckpt, out = workdir / "synthetic.ckpt", workdir / "synthetic_adapter.safetensors"
    write_official_checkpoint(ckpt, adapter_mb, extra_mb)
    run = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(out)], capture_output=True, text=True,
                         cwd=REPO, check=True)
    child = json.loads(run.stdout.strip().splitlines()[-1])
    result = {"checkpoint_mb": ckpt.stat().st_size / MB, "adapter_mb": out.stat().st_size / MB,
              "rss_before_mb": child["rss_before"] / MB, "peak_mb": child["peak"] / MB,
              "peak_increase_mb": (child["peak"] - child["rss_before"]) / MB}
    result["increase_over_adapter"] = result["peak_increase_mb"] / result["adapter_mb"]
    ckpt.unlink()
    out.unlink()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter-mb", type=float, default=1024)
    p.add_argument("--extra-mb", type=float, default=1024)
    p.add_argument("--workdir", type=Path, default=None, help="where the synthetic files go (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        r = measure(args.adapter_mb, args.extra_mb, Path(d))
    if not args.json:
        print(f"checkpoint            {r['checkpoint_mb']:9.1f} MB")
        print(f"adapter written       {r['adapter_mb']:9.1f} MB")
        print(f"RSS before converting {r['rss_before_mb']:9.1f} MB (interpreter + torch)")
        print(f"peak RSS (VmHWM)      {r['peak_mb']:9.1f} MB")
        print(f"peak increase         {r['peak_increase_mb']:9.1f} MB = {r['increase_over_adapter']:.2f} x adapter")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
