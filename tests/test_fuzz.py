"""Mutated weight and MIDI files: each must load or be refused with our error, in bounded time and
memory, never crash or raise anything else (tests/fuzz_runner.py, in its own process so that a
crash is seen)."""
import json
import subprocess
import sys

import pytest
import torch

from imgen_core.tiny import write_official_checkpoint
from support import FIXTURE_NAMES, FIXTURES, REPO

CASES = 4000
SECONDS = 90


def test_mutated_weight_files_load_or_are_refused(tmp_path, tiny_files):
    official = tmp_path / "official.ckpt"
    write_official_checkpoint(official, adapter_mb=0.2, extra_mb=0.1, dim=32, rank=4)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    state = tmp_path / "trainer_state.pt"
    torch.save({"step": 1, "optimizer": optimizer.state_dict(), "config": "{}"}, state)
    sources = [tiny_files["base"], tiny_files["adapter"], official, state]
    for name in FIXTURE_NAMES:
        if (FIXTURES / name / "reference.pt").is_file():
            sources += [FIXTURES / name / "base_state_dict.bin", FIXTURES / name / "instruct_checkpoint.ckpt"]
    fixture = FIXTURES / FIXTURE_NAMES[0]
    if (fixture / "reference.pt").is_file():  # the whole model in one file, and a base's config.json
        from hub_harness import transformers_config
        from imgen_core.official_checkpoint import convert_official
        from imgen_core.base_config import base_lm_config
        config = tmp_path / "config.json"
        config.write_text(json.dumps(transformers_config(fixture / "base_state_dict.bin"), indent=1))
        whole = tmp_path / "whole.safetensors"
        convert_official(fixture / "instruct_checkpoint.ckpt", whole, base_config=lambda: base_lm_config(config))
        sources += [config, whole]
    summary = fuzz(tmp_path / "fuzz.jsonl", sources, CASES, SECONDS)
    assert summary["cases"] >= 1000 and summary["summary"]["refused"] > 0 and summary["summary"]["loaded"] > 0
    assert summary["seconds"] < 10 and summary["peak_mb"] < 200


def test_mutated_midi_files_are_read_or_refused(tmp_path, rendered_slakh):
    pytest.importorskip("mido")
    sources = sorted(rendered_slakh.glob("Track00001/MIDI/*.mid")) + [rendered_slakh / "Track00001" / "all_src.mid"]
    summary = fuzz(tmp_path / "fuzz.jsonl", sources, 3000, 30)
    assert summary["cases"] >= 1000 and summary["summary"]["refused"] > 0 and summary["summary"]["loaded"] > 0
    assert summary["seconds"] < 5 and summary["peak_mb"] < 100


def fuzz(out, sources, cases: int, seconds: float) -> dict:
    """Run fuzz_runner.py on `sources`; its summary, after checking that nothing failed."""
    run = subprocess.run([sys.executable, str(REPO / "tests" / "fuzz_runner.py"), "0", str(cases), str(seconds),
                          str(out), *map(str, sources)], capture_output=True, text=True, timeout=seconds + 120,
                         cwd=REPO)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    failures = [r["failed"] for r in lines if isinstance(r.get("failed"), str)]
    assert not failures, failures[0]
    assert run.returncode == 0, (run.stderr[-2000:], lines[-1])  # a crash leaves its case started, unfinished
    print(f"fuzz: {lines[-1]}")
    return lines[-1]
