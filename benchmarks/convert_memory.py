"""Peak memory of `imgen convert` on a large synthetic checkpoint in the official format.

    python benchmarks/convert_memory.py --adapter-mb 1024 --extra-mb 1024   # a ~2 GB checkpoint

Writes a Lightning-style checkpoint whose `state_dict` holds adapter tensors (fusion, LoRA,
cross-attention q/k/v) of about --adapter-mb and frozen LM weights plus optimizer state of about
--extra-mb, converts it in a fresh process, and prints that process's resident memory before the
conversion (after imports) and its peak (VmHWM), against the adapter's size.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
MB = 1 << 20


def write_checkpoint(path: Path, adapter_mb: float, extra_mb: float, dim: int = 512, rank: int = 32,
                     edit=None) -> None:
    """`edit(state_dict)`, when given, changes the weights before they are saved (hostile variants)."""
    per_layer = 4 * dim * (501 + 4 * dim + 4 * rank)
    layers = max(2, math.ceil(adapter_mb * MB / per_layer))
    lm = "model.peft_model.lm.transformer.base_model.model.layers"
    state = {"model.cp_transformer.pos_emb": torch.randn(layers + 1, 501, dim),
             "model.cp_transformer.gates": torch.zeros(layers)}
    for i in range(layers):
        state[f"model.cp_transformer.merge_linear.{i}.weight"] = torch.randn(dim, dim)
        p = f"{lm}.{i}.cross_attention."
        for proj in ("q_proj", "v_proj"):
            state[p + f"{proj}.base_layer.weight"] = torch.randn(dim, dim)
            state[p + f"{proj}.lora_A.default.weight"] = torch.randn(rank, dim)
            state[p + f"{proj}.lora_B.default.weight"] = torch.zeros(dim, rank)
        state[p + "k_proj.weight"] = torch.randn(dim, dim)
    frozen = max(1, int(extra_mb * MB / 2 / (dim * dim * 2)))
    for i in range(frozen):  # frozen LM weights, fp16 as in the released file
        state[f"{lm}.{i % layers}.self_attn.frozen_{i}.weight"] = torch.randn(dim, dim).half()
    optimizer = {"state": {i: {"exp_avg": torch.randn(dim, dim // 2)} for i in range(frozen)},
                 "param_groups": [{"lr": 1e-4}]}
    if edit is not None:
        edit(state)
    torch.save({"state_dict": state, "optimizer_states": [optimizer], "global_step": 1,
                "hyper_parameters": {"optimizer": functools.partial(torch.optim.AdamW, lr=1e-4)}}, path)


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
    write_checkpoint(ckpt, adapter_mb, extra_mb)
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
