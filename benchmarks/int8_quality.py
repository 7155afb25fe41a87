"""How close int8 weights keep the model to fp32: teacher-forced logits on random weights at
MusicGen-small and -medium size (audiocraft's initialisation), against fp32; bf16 for scale.

    python benchmarks/int8_quality.py [--sizes small medium]

Printed per size and dtype: the relative RMS error of the logits and the top-1 agreement.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgen_core.config import FusionConfig, LMConfig  # noqa: E402
from imgen_core.lm import init_lm_weights  # noqa: E402
from imgen_core.model import InstructMusicGen  # noqa: E402
from imgen_core.quant import int8_activation_dtype, quantize_model  # noqa: E402

SIZES = {"small": LMConfig(dim=1024, num_heads=16, num_layers=24),
         "medium": LMConfig(dim=1536, num_heads=24, num_layers=48)}


def compare(reference, other, target, cond, text) -> tuple[float, float]:
    with torch.no_grad():
        a, mask = reference(target, cond, text)
        b, _ = other(target, cond, text.to(other.dtype))
    a, b = a[mask].float(), b[mask].float()
    return ((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt()).item(), (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["small"])
    p.add_argument("--frames", type=int, default=100)
    args = p.parse_args()
    print(f"{'size':7} {'dtype':5} {'rel. RMS error':>15} {'top-1 agreement':>16}")
    for size in args.sizes:
        cfg = SIZES[size]
        torch.manual_seed(0)
        model = InstructMusicGen(cfg, FusionConfig(num_layers=cfg.num_layers), lora=False)
        init_lm_weights(model.lm, torch.Generator().manual_seed(0))
        with torch.no_grad():
            model.fusion.pos_emb.normal_(0, 0.02)
            for lin in model.fusion.merge_linear:
                lin.weight.normal_(0, cfg.dim ** -0.5)
            model.fusion.gates.fill_(0.3)
        model.eval().requires_grad_(False)
        g = torch.Generator().manual_seed(1)
        target = torch.randint(0, cfg.card, (2, cfg.n_q, args.frames), generator=g)
        cond = torch.randint(0, cfg.card, (2, cfg.n_q, args.frames), generator=g)
        text = torch.randn(2, 12, cfg.dim, generator=g)
        for name in ("bf16", "int8"):
            other = quantize_model(copy.deepcopy(model), int8_activation_dtype(torch.device("cpu"))) if name == "int8" \
                else copy.deepcopy(model).to(torch.bfloat16)
            rel, top1 = compare(model, other, target, cond, text)
            print(f"{size:7} {name:5} {rel:15.4f} {top1:16.3f}", flush=True)
            del other


if __name__ == "__main__":
    main()
