"""The released weights in one step: the official checkpoint alone is the model, and what is
missing is downloaded through huggingface_hub (resumable, verified, with progress) from a local
server that answers as the hub does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imgen_core.generate import generate
from imgen_core.loader import load_model, resolve_adapter
from hub_harness import CHECKPOINT, Hub, hub_root, online_env, transformers_config
from support import GREEDY, REPO, conditional_text, fixture_dir, stem_audio, STEM_RATE


def write_song(path: Path, seconds: float) -> Path:
    """Drums, bass and piano together (the library's synthetic stems)."""
    import soundfile as sf
    mix = sum(stem_audio(kind, seconds, seed=i) for i, kind in enumerate(("drums", "bass", "piano"))) / 3
    sf.write(str(path), mix, STEM_RATE)
    return path



def imgen(args, env, timeout=600, **kwargs):
    return subprocess.run([sys.executable, "-m", "imgen_core.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.mark.parametrize("name", ["instruct_musicgen_tiny", "instruct_musicgen_tiny_partial"])
def test_the_checkpoint_alone_gives_the_official_outputs(name, tmp_path):
    """The whole model from the official checkpoint, the base read for its config only."""
    path = fixture_dir(name)
    ref = torch.load(path / "reference.pt", weights_only=True)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(transformers_config(path / "base_state_dict.bin")))
    model_file = resolve_adapter(path / "instruct_checkpoint.ckpt", convert_into=[tmp_path], base=str(config))
    model, _ = load_model(None, model_file)
    with torch.no_grad():
        logits, mask = model(ref["target_codes"], ref["cond_codes"], ref["text_cond"])
        assert (logits[mask] - ref["logits_fused"][mask]).abs().max().item() < 1e-4
        logits, mask = model(ref["b2_target_codes"], ref["b2_cond_codes"], ref["b2_text_cond"])
        assert (logits[mask] - ref["b2_logits_fused"][mask]).abs().max().item() < 1e-4
    assert torch.equal(generate(model, ref["cond_codes"], conditional_text(ref), GREEDY), ref["gen_tokens"])
    # the LM's weights are the checkpoint's (not a base's): the file alone carries them, fp16 where exact
    from safetensors import safe_open
    with safe_open(str(model_file), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_slice("lm.emb.0.weight").get_dtype() == "F16"
        assert f.get_slice("fusion.pos_emb").get_dtype() == "F32"
    assert "lm.transformer.layers.0.linear1.weight" in keys and "text_proj.weight" in keys
    assert not any("self_attn.q_proj" in k for k in keys)  # the official model never uses those copies


def test_an_adapter_without_the_lm_needs_a_base_and_says_so(tmp_path):
    from imgen_core.checkpoints import CheckpointError
    from imgen_core.official_checkpoint import convert_official
    path = fixture_dir("instruct_musicgen_tiny")
    adapter = tmp_path / "adapter.safetensors"
    convert_official(path / "instruct_checkpoint.ckpt", adapter)  # no base config: the adapter alone
    with pytest.raises(CheckpointError, match="needs the base MusicGen LM's weights"):
        load_model(None, adapter)


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory):
    return hub_root(tmp_path_factory.mktemp("hub"), fixture_dir("instruct_musicgen_tiny"))


@pytest.mark.parametrize("name", ["instruct_musicgen_tiny", "instruct_musicgen_tiny_partial"])
def test_edit_with_no_base_downloads_every_part_and_equals_the_edit_on_the_base_file(name, tmp_path):
    """`imgen edit` with no --base and no weights: every part comes from the hub and the edit
    equals, byte for byte, the one made with the LM's weights read from the base file (the
    adapter alone on `--base state_dict.bin`); the second run downloads nothing."""
    fixture = fixture_dir(name)
    song = write_song(tmp_path / "song.wav", 1.0)
    hub = Hub(hub_root(tmp_path / "hub", fixture))
    env = online_env(hub, tmp_path / "weights")
    edit = ["edit", song, "--op", "add", "--stem", "drums", "--render", "model"]
    try:
        first = imgen([*edit, "-o", tmp_path / "hub.wav", "--adapter", CHECKPOINT[0]], env)
        assert first.returncode == 0, first.stderr
        again = imgen([*edit, "-o", tmp_path / "again.wav", "--adapter", CHECKPOINT[0]], env)
        assert again.returncode == 0, again.stderr
    finally:
        log = hub.stop()
    assert "downloading model" in first.stderr and "converting model" in first.stderr
    assert len([line for line in log if line.startswith("GET") and CHECKPOINT[1] in line]) == 1  # once
    assert "downloading" not in again.stderr and "converting" not in again.stderr
    weights = tmp_path / "weights"
    assert (weights / "finetuned.ckpt").read_bytes() == (fixture / "instruct_checkpoint.ckpt").read_bytes()
    offline = dict(env, HF_HUB_OFFLINE="1")
    adapter = tmp_path / "adapter.safetensors"
    converted = imgen(["convert", fixture / "instruct_checkpoint.ckpt", "-o", adapter, "--adapter-only"], offline)
    assert converted.returncode == 0, converted.stderr
    local = imgen([*edit, "-o", tmp_path / "local.wav", "--adapter", adapter, "--base", fixture / "base_state_dict.bin",
                   "--t5", weights / "t5-base", "--encodec", weights / "encodec_32khz", "--offline"], offline)
    assert local.returncode == 0, local.stderr
    assert (tmp_path / "hub.wav").read_bytes() == (tmp_path / "local.wav").read_bytes() == \
        (tmp_path / "again.wav").read_bytes()


def test_offline_every_missing_part_is_named_in_one_message(tmp_path):
    song = write_song(tmp_path / "song.wav", 1.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", IMGEN_WEIGHTS=str(tmp_path / "weights"), HF_HOME=str(tmp_path / "hf"))
    out = imgen(["edit", song, "--op", "add", "--stem", "drums", "-o", tmp_path / "out.wav"], env, timeout=120)
    assert out.returncode == 2
    for what in ("finetuned.ckpt", "facebook/musicgen-large (config.json)", "t5-base", "encodec_32khz",
                 "imgen download --to DIR", str(tmp_path / "weights")):
        assert what in out.stderr, what
    assert not (tmp_path / "out.wav").exists()


def test_download_reports_progress_resumes_after_the_server_dies_and_never_leaves_a_partial_file(tmp_path):
    """A file larger than huggingface_hub's 10 MB write chunk, so that part of it reaches the disk
    before the server dies."""
    root = tmp_path / "hub"
    served = root / CHECKPOINT[0] / CHECKPOINT[1]
    served.parent.mkdir(parents=True)
    served.write_bytes(torch.randint(0, 256, (24 * 2**20,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
                       .numpy().tobytes())
    size = served.stat().st_size
    weights = tmp_path / "weights"
    slow = Hub(root, "--rate", str(size / 6))  # about 6 s for the whole file
    env = online_env(slow, weights)
    proc = subprocess.Popen([sys.executable, "-m", "imgen_core.cli", "download", "checkpoint"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = weights / "finetuned.ckpt.partial"
    deadline = time.time() + 60
    while not (partial.is_file() and partial.stat().st_size > 0) and time.time() < deadline:
        time.sleep(0.02)
    slow.stop()  # the server goes away mid-download
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    kept = partial.stat().st_size
    assert 0 < kept < size and not (weights / "finetuned.ckpt").exists()

    hub = Hub(root, port=slow.port)
    try:
        done = imgen(["download", "checkpoint"], env)
    finally:
        log = hub.stop()
    assert done.returncode == 0, done.stderr
    assert f"GET /{CHECKPOINT[0]}/resolve/main/{CHECKPOINT[1]} bytes={kept}-" in log  # continued, not restarted
    assert (weights / "finetuned.ckpt").read_bytes() == served.read_bytes()
    assert not partial.exists()
    assert f"{size}/{size}" in done.stderr and "downloading finetuned.ckpt" in done.stderr  # the file's bar, to the end


@pytest.mark.parametrize("fault", ["--corrupt", "--truncate"])
def test_a_corrupted_or_truncated_download_is_refused(hub_files, tmp_path, fault):
    weights = tmp_path / "weights"
    hub = Hub(hub_files, fault)
    try:
        out = imgen(["download", "checkpoint"], online_env(hub, weights), timeout=120)
    finally:
        hub.stop()
    assert out.returncode == 2
    assert ("corrupt" in out.stderr) if fault == "--corrupt" else ("size" in out.stderr)
    assert not (weights / "finetuned.ckpt").exists()
    if fault == "--corrupt":
        assert not (weights / "finetuned.ckpt.partial").exists()  # never reused


def test_models_lists_what_is_here_and_what_is_missing(hub_files, tmp_path):
    hub = Hub(hub_files)
    env = online_env(hub, tmp_path / "weights")
    try:
        assert imgen(["download", "base-config"], env).returncode == 0
    finally:
        hub.stop()
    out = imgen(["models"], env)
    assert out.returncode == 0
    lines = out.stdout
    assert f"here: {tmp_path / 'weights' / 'musicgen-large'}" in lines
    assert f"missing (goes to {tmp_path / 'weights' / 'finetuned.ckpt'})" in lines
    for fact in ("14.6 GB", "CC-BY-NC 4.0", "Apache 2.0", "none stated", "https://huggingface.co/ldzhangyx/instruct-MusicGen"):
        assert fact in lines, fact


def test_an_unreachable_hub_is_one_line_that_points_to_the_offline_route(tmp_path):
    from comfyui_harness import free_port
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HUB_OFFLINE="0", IMGEN_WEIGHTS=str(tmp_path / "w"),
               HF_HOME=str(tmp_path / "hf"))
    out = imgen(["download", "base-config"], env, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot reach config.json of the Hugging Face repo facebook/musicgen-large" in out.stderr
    assert "`imgen download --to DIR` on a machine with it fetches everything" in out.stderr
