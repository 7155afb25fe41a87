"""The device check runs here on the CPU with tiny sizes, so that the day a GPU is lent it cannot
fail on anything but the GPU."""
import importlib.util
import json
import subprocess
import sys

import torch

from support import REPO

SECTIONS = ["engine_tests", "graph_check", "decode_speed", "vram", "edit_60s", "comfyui"]


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_device_check_runs_on_the_cpu_and_reports_every_section(tmp_path):
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                          "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads(out.read_text())
    assert {"device", "torch", "quick", "machine", "started", "seconds", "sections"} <= set(report)
    assert list(report["sections"]) == SECTIONS
    sections = report["sections"]
    for name, entry in sections.items():
        assert entry["status"] in ("ok", "skipped"), (name, entry)
        assert entry["seconds"] >= 0
    assert sections["graph_check"]["status"] == ("ok" if torch.cuda.is_available() else "skipped")
    assert sections["engine_tests"]["status"] == "ok" and sections["engine_tests"]["passed"] > 0
    rows = sections["decode_speed"]["rows"]
    assert {r["label"] for r in rows} == {"ours fp32", "ours bf16", "ours int8"}
    assert all(r["ms_per_step"] > 0 and r["x_floor"] > 0 for r in rows)
    assert sections["decode_speed"]["self_check_overhead"]["tiny"]["eager_step_ms"] > 0
    [memory] = sections["vram"]["rows"]
    assert memory["peak_memory_gb"] > 0 and memory["asked_gb"] > 0
    edit = sections["edit_60s"]
    assert edit["audio_seconds"] == 4.0 and edit["seconds_per_audio_second"] > 0
    if sections["comfyui"]["status"] == "ok":
        [runs] = sections["comfyui"]["modes"].values()
        assert all(r["ok"] for r in runs.values()) and runs
    else:
        print(f"the device check's ComfyUI section was skipped: {sections['comfyui']['reason']}")
    assert "# gpu_check on CPU" in run.stdout and "| tiny | ours fp32 |" in run.stdout
    # a report is never overwritten
    again = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                            "--out", str(out), "--only", "vram"], capture_output=True, text=True)
    assert again.returncode == 2 and "exists" in again.stderr


def test_a_failing_section_is_reported_with_its_error_and_the_next_one_runs():
    check = gpu_check()
    report = {"sections": {}}
    check.run_section("broken", lambda: {"x": 1 / 0}, report)
    check.run_section("fine", lambda: {"x": 1}, report)
    assert report["sections"]["broken"]["status"] == "failed"
    assert "ZeroDivisionError" in report["sections"]["broken"]["error"]
    assert report["sections"]["fine"]["status"] == "ok" and report["sections"]["fine"]["x"] == 1


def test_the_carry_holds_a_stripped_comfyui_within_the_limit(tmp_path):
    comfy = tmp_path / "ComfyUI"
    for name, size in {"main.py": 100, "comfy/model_management.py": 200, "comfy/sd1_tokenizer/vocab.json": 300,
                       "comfy/big.json": 3 << 20, "models/checkpoints/x.safetensors": 50,
                       ".git/objects/pack/x.pack": 500, "tests-unit/test_x.py": 40, "web/index.html": 10,
                       "app/logo.png": 20}.items():
        path = comfy / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    check = gpu_check()
    kept = sorted(str(p.relative_to(comfy)) for p in check.comfy_files(comfy))
    assert kept == ["comfy/model_management.py", "comfy/sd1_tokenizer/vocab.json", "main.py"]
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--carry-dry-run", "--comfyui",
                          str(comfy)], capture_output=True, text=True)
    assert run.returncode == 0 and "to carry: project" in run.stdout and "of 64 MiB" in run.stdout
    target = check.prepare_carry(tmp_path / "carry", comfy)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == kept
    assert (target / "custom_nodes").is_dir() and (target / "models").is_dir()
