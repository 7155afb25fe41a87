"""The node pack inside a real ComfyUI server (see comfyui_harness.py for where it comes from)."""
import json
import time

import pytest
import soundfile as sf
import torch

from comfyui_harness import (CLIP_SECONDS, error_of, INPUT_RATES, REPO, ROOMY, SLOW, SONG_SECONDS, api_prompt,
                             error_message)

NODE_IDS = ["InstructMusicGenLoader", "InstructMusicGenLoadAudio", "InstructMusicGenEncode",
            "InstructMusicGenEdit", "InstructMusicGenDecode", "InstructMusicGenSaveAudio"]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def server(comfy_server):
    return comfy_server


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def test_every_node_is_registered_with_docs(object_info):
    for node_id in NODE_IDS:
        info = object_info[node_id]
        assert info["category"] == "audio/Instruct-MusicGen"
        assert info["display_name"].endswith("(Instruct-MusicGen)") and info["description"]
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_decode_says_what_it_returns(object_info):
    if "output_tooltips" not in object_info["InstructMusicGenDecode"]:
        pytest.skip("this ComfyUI predates output tooltips")
    [tooltip] = object_info["InstructMusicGenDecode"]["output_tooltips"]
    assert "input's rate" in tooltip and "input's channels" in tooltip




def _set_input_file(prompt: dict, name: str):
    for node in prompt.values():
        if node["class_type"] == "InstructMusicGenLoadAudio":
            node["inputs"]["audio"] = name


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_shipped_workflow_runs(server, object_info, workflow):
    data = json.loads(workflow.read_text())
    types = {n["type"] for n in data["nodes"]}
    assert types & {"Note", "MarkdownNote"}, "every shipped workflow explains itself in a note"
    assert all(t.startswith("InstructMusicGen") or t in ("Note", "MarkdownNote", "SaveAudio", "PreviewAudio")
               for t in types)
    prompt = api_prompt(workflow, object_info)
    history = server.wait(server.queue(prompt))
    assert history["status"]["status_str"] == "success", error_message(history) or server.log_text()[-3000:]
    files = list(server.output_files(history).values())
    inputs = [n["inputs"]["audio"] for n in prompt.values() if n["class_type"] == "InstructMusicGenLoadAudio"]
    assert len(files) == len(inputs) >= 1
    for path, name in zip(sorted(files), sorted(inputs)):
        data, sr = sf.read(str(path), always_2d=True)
        seconds = CLIP_SECONDS.get(name, SONG_SECONDS)
        assert sr == INPUT_RATES[name]  # preserve rendering: the input's rate
        assert abs(data.shape[0] / sr - seconds) < 0.01, (path, data.shape)
        assert torch.isfinite(torch.from_numpy(data)).all()


def _run_and_read(server, prompt) -> torch.Tensor:
    history = server.wait(server.queue(prompt))
    assert history["status"]["status_str"] == "success", error_message(history)
    [path] = server.output_files(history).values()
    return torch.from_numpy(sf.read(str(path), always_2d=True)[0])


def test_two_songs_give_two_different_results(server, object_info):
    prompt = api_prompt(REPO / "workflows" / "Remove a stem.json", object_info)
    first = _run_and_read(server, prompt)
    _set_input_file(prompt, "other song.wav")
    second = _run_and_read(server, prompt)
    assert first.shape == second.shape
    assert (first - second).norm() > 0.3 * first.norm()


def test_a_chained_edit_differs_from_its_first_edit_alone(server, object_info):
    single = _run_and_read(server, api_prompt(REPO / "workflows" / "Extract a stem.json", object_info))
    chained = _run_and_read(server, api_prompt(REPO / "workflows" / "Extract then add.json", object_info))
    assert single.shape == chained.shape
    assert (single - chained).norm() > 0.3 * single.norm()


def test_a_range_edit_keeps_every_sample_outside_the_range(server, object_info):
    """Add in a time range (1.0 to 2.5 s, fades 0.05 s), saved by our 16-bit WAV saver, like the
    input: outside the range the input's very samples; inside, the edit. Model rendering of the
    same range keeps the outside too."""
    prompt = api_prompt(REPO / "workflows" / "Add in a time range.json", object_info)
    for node in prompt.values():
        if node["class_type"] in ("SaveAudio", "InstructMusicGenSaveAudio"):
            node["class_type"], node["inputs"]["filename_prefix"] = "InstructMusicGenSaveAudio", "range"
    song = torch.from_numpy(sf.read(str(server.input_dir / "song.wav"), always_2d=True)[0])
    t = torch.arange(song.shape[0]) / 44100
    outside, inside = (t < 0.95) | (t > 2.55), (t > 1.0) & (t < 2.5)
    for mode in ("auto", "model"):
        for node in prompt.values():
            if node["class_type"] == "InstructMusicGenDecode":
                node["inputs"]["render"] = mode
        out = _run_and_read(server, prompt)
        assert out.shape == song.shape
        assert torch.equal(out[outside], song[outside]), mode
        assert (out[inside] - song[inside]).abs().max() > 1e-3, mode


def test_the_loader_offers_int8_weights(server, object_info):
    assert "int8" in object_info["InstructMusicGenLoader"]["input"]["required"]["dtype"][0]
    prompt = api_prompt(REPO / "workflows" / "Remove a stem.json", object_info)
    for node in prompt.values():
        if node["class_type"] == "InstructMusicGenLoader":
            node["inputs"]["dtype"] = "int8"
    out = _run_and_read(server, prompt)
    assert torch.isfinite(out).all() and out.abs().max() > 1e-3


def test_second_workflow_reuses_the_loaded_model(server, object_info):
    """A second workflow with the same model files, while the first still holds them, loads nothing."""
    def loads():
        return sum(1 for line in server.log_text().splitlines()
                   if "[Instruct-MusicGen] loading weights" in line and "tiny.safetensors (auto)" in line)
    counts = []
    for name in ("Remove a stem.json", "Add a stem.json"):
        history = server.wait(server.queue(api_prompt(REPO / "workflows" / name, object_info)))
        assert history["status"]["status_str"] == "success"
        counts.append(loads())
    assert counts[1] == counts[0] >= 1, counts


def test_long_song_through_the_nodes_keeps_its_length_rate_and_channels(server, object_info):
    prompt = api_prompt(REPO / "workflows" / "Replace a stem.json", object_info)
    _set_input_file(prompt, "long.wav")
    for node in prompt.values():
        if node["class_type"] == "InstructMusicGenDecode":
            node["inputs"]["sample_rate"] = "input"
    history = server.wait(server.queue(prompt))
    assert history["status"]["status_str"] == "success", error_message(history)
    [path] = server.output_files(history).values()
    data, sr = sf.read(str(path), always_2d=True)
    assert (sr, data.shape) == (44100, (12 * 44100, 2))


def _run_roomy(server, object_info, i: int, seed: int = 0):
    prompt = api_prompt(REPO / "workflows" / "Remove a stem.json", object_info, ROOMY[i])
    for node in prompt.values():
        if node["class_type"] == "InstructMusicGenEdit":
            node["inputs"]["seed"] = seed
    history = server.wait(server.queue(prompt))
    assert history["status"]["status_str"] == "success", error_message(history)


def _model_bytes(server, i: int) -> int:
    """What the roomy model's weights take once loaded in fp32 (the base file is fp32)."""
    return (server.base / "models" / "musicgen" / ROOMY[i]["base"]).stat().st_size


def _rss_after(server, before: int, drop: int, timeout: float = 30) -> int:
    """The server's resident memory once it has fallen `drop` bytes below `before` (or after
    `timeout` s)."""
    deadline = time.time() + timeout
    while server.rss() > before - drop and time.time() < deadline:
        time.sleep(0.5)
    return server.rss()


def _has_unload_callbacks(server) -> bool:
    extension = server.comfy_dir / "comfy" / "patcher_extension.py"
    return extension.exists() and "ON_DETACH" in extension.read_text(errors="replace")


def _load_count(server, i: int) -> int:
    name = ROOMY[i]["adapter"]
    return sum(1 for line in server.log_text().splitlines() if "[Instruct-MusicGen] loading weights" in line
               and name in line)


@pytest.mark.parametrize("flags", [{"unload_models": True, "free_memory": True}, {"unload_models": True}],
                         ids=["free memory", "unload models"])
def test_freeing_memory_releases_the_model_and_the_next_run_loads_it_again(server, object_info, flags):
    """POST /free (the menu's "Free model and node cache", and "Unload Models") gives our model's
    memory back: the server's resident memory drops by at least the weights, and the next Run
    loads them again and succeeds."""
    if "free_memory" not in flags and not _has_unload_callbacks(server):
        pytest.skip("this ComfyUI has no unload callbacks: its Unload Models keeps what a workflow holds")
    _run_roomy(server, object_info, 0)
    loads = _load_count(server, 0)
    loaded = server.rss()
    size = _model_bytes(server, 0)
    server.post("/free", flags)
    freed = loaded - _rss_after(server, loaded, size)
    assert freed >= size, f"the server's memory fell {freed / 2**20:.0f} MiB after /free; the model takes {size / 2**20:.0f} MiB"
    print(f"\n/free {flags}: the server's memory fell {freed / 2**20:.0f} MiB (weights {size / 2**20:.0f} MiB)")
    if "free_memory" not in flags:  # the workflow's cache still holds the model: it released its weights itself
        assert "[Instruct-MusicGen] released the weights" in server.log_text()
    _run_roomy(server, object_info, 0, seed=1)  # another seed, so that the edit runs again
    assert _load_count(server, 0) == loads + 1


def test_other_weights_replace_the_previous_ones(server, object_info):
    """Two different weight sets in a row: once the second has run, only it is in memory."""
    server.post("/free", {"unload_models": True, "free_memory": True})
    _run_roomy(server, object_info, 0)
    one = server.rss()
    _run_roomy(server, object_info, 1)
    time.sleep(2)
    two = server.rss()
    size = _model_bytes(server, 1)
    assert two - one < 0.5 * size, f"the second model added {(two - one) / 2**20:.0f} MiB; one takes {size / 2**20:.0f} MiB"
    print(f"\nother weights: the server's memory moved {(two - one) / 2**20:+.0f} MiB (weights {size / 2**20:.0f} MiB)")
    _run_roomy(server, object_info, 0)  # and the first comes back when asked for
    assert _load_count(server, 0) >= 2


def test_encode_wired_straight_to_decode_says_the_edit_is_missing(server, object_info):
    prompt = api_prompt(REPO / "workflows" / "Remove a stem.json", object_info)
    edit = next(k for k, n in prompt.items() if n["class_type"] == "InstructMusicGenEdit")
    encode = next(k for k, n in prompt.items() if n["class_type"] == "InstructMusicGenEncode")
    decode = next(k for k, n in prompt.items() if n["class_type"] == "InstructMusicGenDecode")
    del prompt[edit]
    prompt[decode]["inputs"]["codes"] = [encode, 0]
    history = server.wait(server.queue(prompt))
    assert history["status"]["status_str"] == "error"
    assert "connect an Instruct Edit between Encode and Decode" in error_message(history)
    prompt[decode]["inputs"]["render"] = "model"  # EnCodec's reconstruction, asked for: allowed
    assert server.wait(server.queue(prompt))["status"]["status_str"] == "success"


def test_bad_input_file_reports_our_message_and_server_recovers(server, object_info):
    prompt = api_prompt(REPO / "workflows" / "Remove a stem.json", object_info)
    _set_input_file(prompt, "corrupt.wav")
    history = server.wait(server.queue(prompt))
    assert history["status"]["status_str"] == "error"
    message = error_message(history)
    # libsndfile's own reason where it gives one ("Short 'fmt ' chunk"), never its "does not exist"
    assert message.startswith("corrupt.wav cannot be read as audio: ") and "Readable: WAV, FLAC" in message, message
    assert "does not exist" not in message and ".." not in message and len(message) < 220
    # named as core errors are: the built-in type, not the pack's module under the server's path
    assert error_of(history)["exception_type"] == "ValueError"
    _set_input_file(prompt, "../outside.wav")
    refused = server.post("/prompt", {"prompt": prompt})
    assert "outside the input folder" in json.dumps(refused) or "not found" in json.dumps(refused)
    history = server.wait(server.queue(api_prompt(REPO / "workflows" / "Remove a stem.json", object_info)))
    assert history["status"]["status_str"] == "success"


def test_out_of_range_and_nan_times_are_refused(server, object_info):
    """Load Audio's start below its minimum is refused by ComfyUI's own range check (the node's
    VALIDATE_INPUTS takes only the file, so ComfyUI still applies it); NaN, which passes any
    range check, is refused by the nodes themselves, in words."""
    prompt = api_prompt(REPO / "workflows" / "Add in a time range.json", object_info)
    loader = next(k for k, n in prompt.items() if n["class_type"] == "InstructMusicGenLoadAudio")
    prompt[loader]["inputs"]["start"] = -1.0
    refused = server.post("/prompt", {"prompt": prompt})
    assert "start" in json.dumps(refused.get("node_errors", {})), refused
    prompt[loader]["inputs"]["start"] = float("nan")
    history = server.wait(server.queue(prompt))
    assert "start must be a finite number of seconds" in error_message(history)
    prompt[loader]["inputs"]["start"] = 0.0
    editor = next(k for k, n in prompt.items() if n["class_type"] == "InstructMusicGenEdit")
    prompt[editor]["inputs"]["end_seconds"] = float("nan")
    history = server.wait(server.queue(prompt))
    assert "end_seconds must be a finite number of seconds" in error_message(history)


def test_unknown_stem_for_the_checkpoint_is_a_readable_error(server, object_info):
    prompt = api_prompt(REPO / "workflows" / "Add a stem.json", object_info)
    for node in prompt.values():
        if node["class_type"] == "InstructMusicGenEdit":
            node["inputs"]["stem"] = "organ (other checkpoints)"
    history = server.wait(server.queue(prompt))
    assert "unknown stem 'organ' for this checkpoint" in error_message(history)
    assert "valid stems: drums, bass, piano, guitar" in error_message(history)
    assert error_of(history)["node_type"] == "InstructMusicGenEdit"  # at the edit, before any generation


def test_interrupt_stops_a_long_edit_within_seconds(server, object_info):
    prompt = api_prompt(REPO / "workflows" / "Remove a stem.json", object_info, models=SLOW)
    _set_input_file(prompt, "long.wav")
    prompt_id = server.queue(prompt)
    server.wait_until_decoding(prompt_id, "slow.safetensors")
    start = time.time()
    server.post("/interrupt")
    history = server.wait(prompt_id, timeout=60)
    assert time.time() - start < 10
    assert history["status"]["status_str"] == "error"
    kinds = [m[0] for m in history["status"]["messages"]]
    assert "execution_interrupted" in kinds
    history = server.wait(server.queue(api_prompt(REPO / "workflows" / "Extract a stem.json", object_info)))
    assert history["status"]["status_str"] == "success"


def test_workflows_are_served_as_templates(server):
    try:
        listing = server.get("/workflow_templates")
    except Exception:  # noqa: BLE001 - a 404 on ComfyUI versions before templates
        pytest.skip(f"{server.description} predates custom-node workflow templates")
    names = sorted(listing.get("instruct_musicgen", []))
    assert names == sorted(w.stem for w in WORKFLOWS)
    served = server.get("/api/workflow_templates/instruct_musicgen/Extract%20a%20stem.json")
    assert served["nodes"] and served["links"]


def test_pack_imports_without_comfyui():
    """Outside ComfyUI the pack defines its nodes and registers nothing; imgen_core never needs ComfyUI."""
    import subprocess
    import sys
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('pack', {str(REPO / '__init__.py')!r}, "
            f"submodule_search_locations=[{str(REPO)!r}])\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n"
            "assert len(m.NODE_CLASS_MAPPINGS) == 6\n"
            "assert not [k for k in sys.modules if k == 'folder_paths' or k.startswith('comfy')]\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_a_missing_model_file_is_reported_once(server, object_info):
    prompt = api_prompt(REPO / "workflows" / "Remove a stem.json", object_info)
    loader = next(k for k, n in prompt.items() if n["class_type"] == "InstructMusicGenLoader")
    prompt[loader]["inputs"]["adapter"] = "missing.safetensors"
    refused = server.post("/prompt", {"prompt": prompt})
    errors = refused["node_errors"][loader]["errors"]
    assert len(errors) == 1, errors
    assert errors[0]["details"].startswith("adapter") and "missing.safetensors" in errors[0]["details"]
    assert "tiny.safetensors" in errors[0]["details"], "the message lists the files that are there"


@pytest.mark.parametrize("name", ["t5", "encodec"])
def test_text_and_codec_folders_are_checked_against_the_list(server, object_info, name):
    prompt = api_prompt(REPO / "workflows" / "Remove a stem.json", object_info)
    loader = next(k for k, n in prompt.items() if n["class_type"] == "InstructMusicGenLoader")
    prompt[loader]["inputs"][name] = "/etc"
    refused = server.post("/prompt", {"prompt": prompt})
    assert [e["details"].split(":")[0] for e in refused["node_errors"][loader]["errors"]] == [name]
