"""Decoding speed: our engine against transformers' MusicGen and audiocraft's LM, in one run.

    python benchmarks/decode_speed.py                         # CPU, 2 threads: tiny and small size
    python benchmarks/decode_speed.py --device cuda           # GPU: tiny, small and large size

Every engine decodes `--steps` steps (default 250, 5 s of audio) with classifier-free guidance
(batch 2), top-k sampling, random weights, the same sizes. Printed per engine: ms per step and the
real-time factor (seconds of audio per second of decoding); and the floor: the bytes of weight
one step must read over the measured memory bandwidth. A table on stdout and a JSON file.
audiocraft cannot be a dependency (it pins old torch): its row runs when it can be imported (in a
scratch environment: `pip install --no-deps audiocraft` beside this project's torch, plus the
modules its imports ask for) and otherwise says why not. Peak memory (RSS, and VRAM on CUDA) is
printed for every row.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgen_core.config import FusionConfig, LMConfig  # noqa: E402
from imgen_core.generate import generate  # noqa: E402
from imgen_core.model import InstructMusicGen  # noqa: E402
from imgen_core.quant import (Int8Linear, int8_activation_dtype, pack_for_cpu, quantize_weight,  # noqa: E402
                              swap_to_int8)
from imgen_core.sampling import Sampling  # noqa: E402

SIZES = {
    "tiny": LMConfig(dim=64, num_heads=4, num_layers=2, card=2048),
    "small": LMConfig(dim=1024, num_heads=16, num_layers=24, card=2048),
    "large": LMConfig(dim=2048, num_heads=32, num_layers=48, card=2048),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}

# MusicGen's own settings (audiocraft's top-k 250), as the transformers and audiocraft rows use them
SAMPLING = Sampling(top_k=250)


def activation_dtype(name: str, device) -> torch.dtype:
    """int8 rows compute in the activation dtype the library picks for int8 on that device."""
    if name == "int8":
        return int8_activation_dtype(device)
    return DTYPES[name]
FRAME_RATE = 50


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_bytes(cfg: LMConfig, dtype) -> int:
    """Weights one decoding step reads: per layer self-attention in/out, cross-attention q/out
    (the text keys and values are computed once), the feed-forward; and the output heads."""
    d = cfg.dim
    per_layer = 3 * d * d + d * d + 2 * d * d + 2 * cfg.hidden_scale * d * d
    bits = 8 if dtype == torch.int8 else torch.finfo(dtype).bits
    return (cfg.num_layers * per_layer + cfg.n_q * d * cfg.card) * bits // 8


def bandwidth(device, dtype) -> float:
    """Bytes per second that a matrix-vector product reads from memory (the decode access pattern);
    for int8, through the int8-weight layer the library uses."""
    n = 8192 if device.type == "cuda" else 4096
    size = 1 if dtype == torch.int8 else torch.finfo(dtype).bits // 8
    rows = (2 << 30 if device.type == "cuda" else 256 << 20) // (n * size)
    if dtype == torch.int8:
        act = int8_activation_dtype(device)
        layer = Int8Linear(rows, n, act, device)
        layer.weight_int8, layer.scale = quantize_weight(torch.randn(rows, n, device=device))
        layer.scale = layer.scale.to(act)
        pack_for_cpu(layer)
        x = torch.randn(2, n, device=device).to(act)
        run = lambda: layer(x)  # noqa: E731
    else:
        w = torch.randn(rows, n, device=device).to(dtype)
        x = torch.randn(2, n, device=device).to(dtype)
        run = lambda: x @ w.T  # noqa: E731
    for _ in range(3):
        run()
    sync(device)
    reps = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(reps):
        run()
    sync(device)
    return reps * rows * n * size / (time.perf_counter() - start)


def peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1]) / 2**20


def build_ours(cfg: LMConfig, device, name: str) -> InstructMusicGen:
    """Random weights, materialised once in their final form: on the meta device first, then
    allocated in the activation dtype (and int8 for the int8 layers), never as fp32 first."""
    act = activation_dtype(name, device)
    with torch.device("meta"):
        model = InstructMusicGen(cfg, FusionConfig(num_layers=cfg.num_layers), lora=False)
    if name == "int8":
        swap_to_int8(model, act, "meta")
    model = model.to_empty(device=device).to(act)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.02, generator=g)
            else:  # layer norms as initialised: weight 1, bias 0
                p.fill_(1.0 if pname.endswith("norm1.weight") or pname.endswith("norm2.weight")
                        or pname.endswith("norm_cross.weight") or pname.endswith("out_norm.weight") else 0.0)
        model.fusion.gates.fill_(0.1)
        for layer in model.modules():
            if isinstance(layer, Int8Linear):  # uniform int8 with a std of 0.02, like the float rows
                layer.weight_int8.random_(-127, 128, generator=g)
                layer.scale.fill_(0.02 / 73.3)
    return pack_for_cpu(model).eval().requires_grad_(False)


def time_ours(cfg, device, name, steps, cuda_graph="auto") -> dict:
    model = build_ours(cfg, device, name)
    frames = steps - 1 - cfg.max_delay
    g = torch.Generator(device=device).manual_seed(0)
    text = torch.randn(1, 12, cfg.dim, device=device)  # the null row for guidance is added by generate
    cond = torch.randint(0, cfg.card, (1, cfg.n_q, frames), device=device, generator=g)
    generate(model, cond[..., :8], text, SAMPLING, generator=g, cuda_graph=cuda_graph)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    generate(model, cond, text, SAMPLING, generator=g, cuda_graph=cuda_graph)
    sync(device)
    elapsed = time.perf_counter() - start
    out = {"ms_per_step": 1000 * elapsed / steps, "rtf": frames / FRAME_RATE / elapsed, "peak_rss_gb": peak_rss_gb()}
    if device.type == "cuda":
        out["peak_vram_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model
    return out


class _Enough(Exception):
    pass


def memory_of_10s_edit(cfg, device, name, steps: int | None = None) -> tuple[float, float]:
    """Peak memory (GiB) of one 10 s window: weights, KV cache, prefixes, activations; on CUDA the
    GPU's, on the CPU the process's resident peak. `steps` stops early (the KV cache and the
    prefixes are allocated in full before the first step)."""
    model = build_ours(cfg, device, name)
    act = activation_dtype(name, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    text = torch.randn(1, 12, cfg.dim, device=device, dtype=act)
    cond = torch.randint(0, cfg.card, (1, cfg.n_q, 500), device=device)

    def stop(done, total):
        if steps is not None and done >= steps:
            raise _Enough

    with contextlib.suppress(_Enough):
        generate(model, cond, text, SAMPLING, progress=stop)
    sync(device)
    packed = [m for m in model.modules() if isinstance(m, Int8Linear) and m.packed is not None]
    weights = (sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
               + sum(m.out_features * m.in_features for m in packed)) / 2**30  # fbgemm holds those
    del model
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else peak_rss_gb()
    return peak, weights


def time_transformers(cfg, device, dtype, steps) -> dict:
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM
    hf_cfg = MusicgenDecoderConfig(vocab_size=cfg.card, max_position_embeddings=2048, num_hidden_layers=cfg.num_layers,
                                   ffn_dim=cfg.hidden_scale * cfg.dim, num_attention_heads=cfg.num_heads,
                                   hidden_size=cfg.dim, num_codebooks=cfg.n_q, audio_channels=1,
                                   pad_token_id=cfg.card, bos_token_id=cfg.card, scale_embedding=False,
                                   activation_function="gelu", dropout=0.0, attention_dropout=0.0,
                                   activation_dropout=0.0, tie_word_embeddings=False)
    with torch.device(device):
        model = MusicgenForCausalLM(hf_cfg)
    model = model.to(dtype).eval()
    ids = torch.full((cfg.n_q, 1), cfg.card, dtype=torch.long, device=device)  # doubled inside for guidance
    enc = torch.randn(2, 12, cfg.dim, device=device, dtype=dtype)
    kwargs = dict(encoder_hidden_states=enc, do_sample=True, top_k=250, guidance_scale=3.0,
                  pad_token_id=cfg.card, bos_token_id=cfg.card, decoder_start_token_id=cfg.card,
                  num_return_sequences=1)
    model.generate(ids, max_new_tokens=8, **kwargs)  # warm-up
    sync(device)
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, **kwargs)
    sync(device)
    elapsed = time.perf_counter() - start
    del model
    return {"ms_per_step": 1000 * elapsed / steps, "rtf": (steps - 1 - cfg.max_delay) / FRAME_RATE / elapsed,
            "peak_rss_gb": peak_rss_gb()}


def time_audiocraft(cfg, device, dtype, steps) -> dict | str:
    """audiocraft's own LMModel.generate at MusicGen's settings (pre-norm, no biases, sin positions,
    delay pattern), text through a lookup-table conditioner (the T5 encoder runs once per edit and
    is not timed in any row). A text result says why it could not run."""
    try:
        from audiocraft.modules import transformer as ac_transformer
        from audiocraft.models.lm import LMModel
        from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
        from audiocraft.modules.conditioners import (ConditionFuser, ConditioningAttributes,
                                                     ConditioningProvider, LUTConditioner)
    except Exception as e:  # noqa: BLE001
        return f"skipped: audiocraft is not importable here ({type(e).__name__}: {e})"[:300]
    ac_transformer.set_efficient_attention_backend("torch")  # xformers' kernels need its own torch build
    conditioner = LUTConditioner(n_bins=64, dim=cfg.dim, output_dim=cfg.dim, tokenizer="noop")
    fuser = ConditionFuser({"cross": ["description"], "prepend": [], "sum": [], "input_interpolate": []})
    with torch.device(device):
        model = LMModel(DelayedPatternProvider(cfg.n_q), ConditioningProvider({"description": conditioner}),
                        fuser, n_q=cfg.n_q, card=cfg.card, dim=cfg.dim,
                        num_heads=cfg.num_heads, hidden_scale=cfg.hidden_scale, norm_first=True,
                        bias_proj=False, bias_ff=False, bias_attn=False, causal=True, cross_attention=True,
                        memory_efficient=True, positional_embedding="sin", activation="gelu",
                        num_layers=cfg.num_layers)
    model = model.to(dtype).eval()
    conditions = [ConditioningAttributes(text={"description": "add drums"})]
    kwargs = dict(conditions=conditions, use_sampling=True, top_k=250, cfg_coef=3.0)
    with torch.no_grad():
        model.generate(max_gen_len=8, **kwargs)  # warm-up
        sync(device)
        start = time.perf_counter()
        model.generate(max_gen_len=steps, **kwargs)
        sync(device)
    elapsed = time.perf_counter() - start
    return {"ms_per_step": 1000 * elapsed / steps, "rtf": (steps - 1 - cfg.max_delay) / FRAME_RATE / elapsed,
            "peak_rss_gb": peak_rss_gb()}


def measure_one(spec: dict) -> dict:
    """One engine at one size, in this process (run as a child so that a crash stays contained)."""
    device, cfg = torch.device(spec["device"]), SIZES[spec["size"]]
    torch.set_num_threads(spec["threads"])
    if spec["engine"] == "transformers":
        return time_transformers(cfg, device, DTYPES[spec["dtype"]], spec["steps"])
    if spec["engine"] == "audiocraft":
        out = time_audiocraft(cfg, device, DTYPES[spec["dtype"]], spec["steps"])
        return out if isinstance(out, dict) else {"error": out}
    if spec["engine"] == "memory":
        peak, weights = memory_of_10s_edit(cfg, device, spec["dtype"], spec.get("memory_steps"))
        return {"peak_memory_gb": peak, "weights_gb": weights}
    return time_ours(cfg, device, spec["dtype"], spec["steps"], cuda_graph=spec.get("cuda_graph", "auto"))


def in_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines:
        return json.loads(lines[-1])
    err = [line for line in out.stderr.strip().splitlines() if "Assertion" not in line]
    return {"error": (err[-1] if err else f"exit code {out.returncode}")[:300]}


def plan(device, sizes, ours_only: bool = False, dtypes=None) -> list[dict]:
    """(engine label, spec) rows per size, transformers first; our rows only for `dtypes` when given."""
    rows = []
    for size in sizes:
        hf_dtype = "fp16" if device.type == "cuda" and size != "tiny" else "fp32"
        if not ours_only:
            rows.append({"size": size, "engine": "transformers", "dtype": hf_dtype,
                         "label": f"transformers generate {hf_dtype}"})
            rows.append({"size": size, "engine": "audiocraft", "dtype": hf_dtype,
                         "label": f"audiocraft LM generate {hf_dtype}"})
        for name in (["fp32", "bf16", "fp16", "int8"] if device.type == "cuda" else ["fp32", "bf16", "int8"]):
            if dtypes and name not in dtypes:
                continue
            if device.type == "cuda" and size == "large" and name == "fp32":
                continue  # 13 GB of fp32 weights; the 16-bit rows are the ones that matter
            label = f"ours {name}" + (" (CUDA graph)" if device.type == "cuda" else "")
            rows.append({"size": size, "engine": "ours", "dtype": name, "label": label})
            if device.type == "cuda" and name == "fp16":
                rows.append({"size": size, "engine": "ours", "dtype": name, "label": "ours fp16 (eager)",
                             "cuda_graph": "off"})
        if device.type == "cuda" and size == "large":
            for name in [n for n in ("fp16", "bf16", "int8") if not dtypes or n in dtypes]:
                rows.append({"size": size, "engine": "memory", "dtype": name, "label": f"peak VRAM, 10 s window, {name}"})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", nargs="+", default=None, help="tiny, small, large (default: tiny small; +large on GPU)")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--out", default="decode_speed.json")
    p.add_argument("--ours-only", action="store_true", help="only our engine's rows (no transformers, audiocraft)")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="only these dtypes in our engine's rows")
    p.add_argument("--memory", nargs="*", metavar="DTYPE", help="only the peak memory of a 10 s window at large "
                   "size for these dtypes (on the CPU: prefill and --memory-steps steps)")
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure_one(json.loads(args.child))))
        return
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.memory is not None:
        for name in args.memory or ["int8"]:
            spec = {"size": "large", "engine": "memory", "dtype": name, "device": args.device, "threads": args.threads,
                    "memory_steps": args.memory_steps if device.type == "cpu" else None}
            row = in_child(spec)
            print(f"large {name}: peak {'VRAM' if device.type == 'cuda' else 'RSS'} of a 10 s window "
                  f"{row.get('peak_memory_gb', float('nan')):.2f} GiB, weights {row.get('weights_gb', float('nan')):.2f} GiB"
                  + (f" ({row['error']})" if "error" in row else ""), flush=True)
        return
    sizes = args.sizes or (["tiny", "small", "large"] if device.type == "cuda" else ["tiny", "small"])
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {args.threads} threads"
    dtypes = ["fp32", "bf16", "fp16", "int8"] if device.type == "cuda" else ["fp32", "bf16", "int8"]
    bw = {name: bandwidth(device, DTYPES[name]) for name in dtypes}
    result = {"machine": machine, "torch": torch.__version__, "steps": args.steps, "rows": [],
              "bandwidth_gb_s": {k: v / 1e9 for k, v in bw.items()}}
    print(f"# {machine}, torch {torch.__version__}; matrix-vector read bandwidth: "
          + ", ".join(f"{k} {v / 1e9:.1f} GB/s" for k, v in bw.items()))
    print(f"{'size':6} {'engine':30} {'ms/step':>9} {'RTF':>7} {'floor ms':>9} {'x floor':>8} {'vs transformers':>16}")
    baseline = {}
    for spec in plan(device, sizes, args.ours_only, args.dtypes):
        spec.update(device=args.device, steps=args.steps, threads=args.threads)
        row = {**spec, **in_child(spec)}
        result["rows"].append(row)
        if "peak_memory_gb" in row:
            print(f"{row['size']:6} {row['label']:30} {row['peak_memory_gb']:.2f} GiB ({row['weights_gb']:.2f} GiB "
                  f"weights; T5 and EnCodec not counted)")
            continue
        if "ms_per_step" not in row:
            reason = row["error"] if row["error"].startswith("skipped") else f"failed: {row['error']}"
            print(f"{row['size']:6} {row['label']:30} {reason}")
            continue
        if spec["engine"] == "transformers":
            baseline[row["size"]] = row["ms_per_step"]
        floor = 1000 * step_bytes(SIZES[row["size"]], DTYPES[row["dtype"]]) / bw[row["dtype"]]
        row.update(floor_ms=floor, x_floor=row["ms_per_step"] / floor)
        if row["size"] in baseline:
            row["speedup_vs_transformers"] = baseline[row["size"]] / row["ms_per_step"]
        print(f"{row['size']:6} {row['label']:30} {row['ms_per_step']:9.2f} {row['rtf']:7.2f} {floor:9.2f} "
              f"{row['x_floor']:8.2f} {row.get('speedup_vs_transformers', float('nan')):15.2f}x"
              + (f"  peak VRAM {row['peak_vram_gb']:.2f} GiB" if "peak_vram_gb" in row else
                 f"  peak RSS {row.get('peak_rss_gb', float('nan')):.2f} GiB"), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
