"""Safe checkpoint reading: refusals are clear, nothing runs, nothing is written."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open

from imgen_core.checkpoints import CheckpointError
from imgen_core.loader import load_model
from imgen_core.official_checkpoint import OFFICIAL_GLOBALS, convert_official, read_official_checkpoint
from imgen_core.safe_pickle import safe_load
from imgen_core.cli import main
from imgen_core.tiny import write_official_checkpoint
from support import REPO, adapter_with_metadata, far_layer, fixture_dir, hollow, official_with, resized


class RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_pickle_with_unexpected_global_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": RunsCommand(f"touch {marker}")}, bad)
    out = tmp_path / "out.safetensors"
    with pytest.raises(CheckpointError, match=r"references '(posix|os)\.system'.*Nothing from the file was executed"):
        convert_official(bad, out)
    assert not marker.exists()
    assert not out.exists()
    assert main(["convert", str(bad), "-o", str(out)]) == 2
    assert not marker.exists() and not out.exists()


def test_builtins_eval_is_refused(tmp_path):
    class CallsEval:
        def __reduce__(self):
            return (eval, ("1+1",))
    bad = tmp_path / "eval.ckpt"
    torch.save({"state_dict": {}, "x": CallsEval()}, bad)
    with pytest.raises(CheckpointError, match="eval"):
        read_official_checkpoint(bad)


def test_truncated_checkpoint_is_refused(tmp_path):
    src = fixture_dir("instruct_musicgen_tiny")
    data = (src / "instruct_checkpoint.ckpt").read_bytes()
    for name, blob in [("half.ckpt", data[: len(data) // 2]), ("noise.ckpt", os.urandom(4096)),
                       ("empty.ckpt", b"")]:
        bad = tmp_path / name
        bad.write_bytes(blob)
        out = tmp_path / (name + ".safetensors")
        with pytest.raises(CheckpointError, match="truncated or corrupt|empty"):
            convert_official(bad, out)
        assert not out.exists()


def test_corrupt_entry_inside_the_archive_is_refused(tmp_path, fixture):
    path, _ = fixture
    data = bytearray((path / "instruct_checkpoint.ckpt").read_bytes())
    start = data.find(b"data.pkl") + 200
    data[start:start + 64] = b"\xff" * 64  # garble the pickle itself
    bad = tmp_path / "garbled.ckpt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        read_official_checkpoint(bad)


def _official_state(path):
    return dict(safe_load(path / "instruct_checkpoint.ckpt", OFFICIAL_GLOBALS)["state_dict"])


def test_missing_and_misshaped_keys_are_named(tmp_path, fixture):
    path, _ = fixture
    state = _official_state(path)
    missing = "model.cp_transformer.merge_linear.1.weight"
    del state[missing]
    state["model.cp_transformer.gates"] = torch.zeros(5)
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(CheckpointError, match="merge_linear"):
        convert_official(bad, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    state = _official_state(path)
    key = "model.peft_model.lm.transformer.base_model.model.layers.0.cross_attention.q_proj.lora_A.default.weight"
    state[key] = torch.zeros(32, 7)
    torch.save({"state_dict": state}, bad)
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: .*layers\.0\.cross_attention\.q_proj\.lora_A"):
        read_official_checkpoint(bad)


def test_base_with_missing_key_is_named(tmp_path, fixture):
    path, _ = fixture
    pkg = torch.load(path / "base_state_dict.bin", weights_only=True)
    del pkg["best_state"]["transformer.layers.0.linear1.weight"]
    bad = tmp_path / "state_dict.bin"
    torch.save(pkg, bad)
    adapter = tmp_path / "adapter.safetensors"
    convert_official(path / "instruct_checkpoint.ckpt", adapter)  # the adapter alone runs on a base
    with pytest.raises(CheckpointError, match=r"missing keys: lm\.transformer\.layers\.0\.linear1\.weight"):
        load_model(bad, adapter)


def test_a_checkpoint_missing_an_lm_weight_is_named_when_converted(tmp_path, fixture):
    path, _ = fixture
    from imgen_core.loader import resolve_adapter
    state = dict(safe_load(path / "instruct_checkpoint.ckpt", OFFICIAL_GLOBALS)["state_dict"])
    del state["model.peft_model.lm.transformer.base_model.model.layers.0.linear1.weight"]
    bad = tmp_path / "finetuned.ckpt"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(CheckpointError, match=r"missing keys: lm\.transformer\.layers\.0\.linear1\.weight"):
        resolve_adapter(bad, convert_into=[tmp_path], base=str(path / "base_state_dict.bin"))
    assert [p.name for p in tmp_path.iterdir()] == ["finetuned.ckpt"]  # nothing half-written


def test_adapter_for_another_base_is_refused(tmp_path, tiny_files):
    src = fixture_dir("instruct_musicgen_tiny_partial")
    with pytest.raises(CheckpointError, match="made for an LM of 2 layers"):
        load_model(src / "base_state_dict.bin", tiny_files["adapter"])


def test_convert_never_overwrites_and_keeps_the_input(tmp_path, fixture):
    path, _ = fixture
    src = path / "instruct_checkpoint.ckpt"
    before = src.stat().st_mtime_ns, src.stat().st_size
    out = tmp_path / "adapter.safetensors"
    out.write_text("precious")
    with pytest.raises(FileExistsError, match="already exists"):
        convert_official(src, out)
    assert out.read_text() == "precious"
    convert_official(src, out, overwrite=True)
    assert (src.stat().st_mtime_ns, src.stat().st_size) == before
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == "instruct-musicgen-adapter"
    assert json.loads(meta["stems"]) == ["drums", "bass", "piano", "guitar"]
    assert "fusion.pos_emb" in keys and not any("linear1" in k or "emb." in k for k in keys)


def test_conversion_streams(tmp_path):
    """Peak memory of a conversion stays well below twice the adapter (benchmark script, small size)."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "convert_memory.py"), "--adapter-mb", "96",
                          "--extra-mb", "192", "--workdir", str(tmp_path), "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["peak_increase_mb"] < 1.5 * result["adapter_mb"], result


def test_official_checkpoint_is_converted_once_beside_it_or_in_the_next_folder(tmp_path, fixture):
    from imgen_core.loader import converted_adapter
    path, _ = fixture
    ckpt = tmp_path / "models" / "finetuned.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(path / "instruct_checkpoint.ckpt", ckpt)
    before = ckpt.read_bytes()
    base = str(path / "base_state_dict.bin")
    first = converted_adapter(ckpt, [ckpt.parent], base=base)
    assert first.parent == ckpt.parent and first.name.startswith("finetuned.") and first.name.endswith(".model.safetensors")
    stamp = first.stat().st_mtime_ns
    assert converted_adapter(ckpt, [ckpt.parent], base=base) == first and first.stat().st_mtime_ns == stamp  # not redone
    assert ckpt.read_bytes() == before
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where a folder would go")
    assert converted_adapter(ckpt, [blocked / "sub", tmp_path / "cache"], base=base).parent == tmp_path / "cache"


def test_a_merged_model_refuses_to_save_its_adapter(fixture, load_fixture):
    path, _ = fixture
    model, _ = load_fixture(path)
    model.merge_lora()
    with pytest.raises(ValueError, match="unmerge_lora"):
        model.adapter_state_dict()
    assert "fusion.gates" in model.unmerge_lora().adapter_state_dict()


def test_conversion_reports_its_progress_to_the_end(tmp_path, fixture):
    from imgen_core.loader import converted_adapter
    path, _ = fixture
    calls = []
    out = converted_adapter(path / "instruct_checkpoint.ckpt", [tmp_path], lambda done, total: calls.append((done, total)),
                            base=str(path / "base_state_dict.bin"))
    assert len(calls) > 10
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len({t for _, t in calls}) == 1
    assert calls[-1][0] == calls[-1][1] == out.stat().st_size - (8 + int.from_bytes(out.read_bytes()[:8], "little"))


@pytest.mark.parametrize("meta, message", [
    ({"lm_layers": "1000000000"}, "declares an LM of 1000000000 layers"),
    ({"lm_dim": "16384"}, "width 16384"),
    ({"fusion": json.dumps({"num_layers": 1000000000})}, "fusion sizes out of range"),
    ({"fusion": "[" * 100000 + "]" * 100000}, "unreadable metadata"),
    ({"fusion": json.dumps(["not", "a", "dict"])}, "unreadable metadata"),
    ({"lm_layers": "two"}, "unreadable metadata"),
    ({"format": "x" * 10_000_000}, "is not an Instruct-MusicGen adapter"),
])
def test_adapter_metadata_is_bounded_before_anything_is_built(tmp_path, meta, message):
    """Tiny files whose metadata asks for unbounded work or memory: one short line, at once."""
    from imgen_core.adapter_file import read_adapter
    path = adapter_with_metadata(tmp_path / "hostile.safetensors", **meta)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message) as e:
        read_adapter(path)
    assert time.perf_counter() - start < 5
    assert "\n" not in str(e.value) and len(str(e.value)) < 600


def test_refusals_never_suggest_weights_only_false():
    from imgen_core.checkpoints import brief
    torch_message = ("Weights only load failed. This file can still be loaded, to do so you have two options, "
                     "do those steps only if you trust the source of the checkpoint.\n (1) ... set `weights_only` "
                     "to `False` ...\n WeightsUnpickler error: Unsupported operand 149\n\nCheck the documentation")
    assert brief(torch_message) == "Unsupported operand 149"


def test_a_conversion_stopped_midway_leaves_nothing(tmp_path):
    """SIGTERM while the adapter is being written: the temporary file is removed, no output."""
    import signal
    ckpt, out = tmp_path / "finetuned.ckpt", tmp_path / "out" / "adapter.safetensors"
    out.parent.mkdir()
    write_official_checkpoint(ckpt, adapter_mb=400, extra_mb=0)
    proc = subprocess.Popen([sys.executable, "-m", "imgen_core.cli", "convert", str(ckpt), "-o", str(out)],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.parent.glob("*.part")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the conversion ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) != 0
    assert "interrupted; nothing was written of the file in progress" in proc.stderr.read()
    assert list(out.parent.iterdir()) == []


def test_a_view_claiming_more_values_than_the_file_holds_is_refused(tmp_path):
    """A stride-0 view stores one value and claims a whole tensor; converting it would write them all."""
    ckpt, out = official_with(tmp_path / "hollow.ckpt", hollow), tmp_path / "out.safetensors"
    with pytest.raises(CheckpointError, match="merge_linear.0.weight are not tensors stored in the file"):
        convert_official(ckpt, out)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["hollow.ckpt"]


def test_a_compressed_entry_is_refused_before_it_is_unpacked(tmp_path):
    """A deflated data.pkl can unpack to gigabytes from a small file; torch.save never compresses."""
    import zipfile
    plain, bomb = tmp_path / "plain.ckpt", tmp_path / "bomb.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(4)}}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data += b"\0" * 50_000_000  # pads out to 50 MB, deflates to about 50 KB
                dst.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
            else:
                dst.writestr(info, data)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(CheckpointError, match="is compressed .* torch.save never compresses"):
        safe_load(bomb)


def test_a_layer_index_far_beyond_any_model_is_refused_at_once(tmp_path):
    ckpt = official_with(tmp_path / "far.ckpt", far_layer)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="declares an LM of 1000000001 layers"):
        convert_official(ckpt, tmp_path / "out.safetensors")
    assert time.perf_counter() - start < 5 and not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("cfg, message", [
    ("!!python/object/apply:os.system ['touch {marker}']", "is not plain YAML"),
    ("transformer_lm: {dim: [1, 2]}", "unusable 'xp.cfg'"),
    ("transformer_lm: 7", "unusable 'xp.cfg'"),
])
def test_a_base_config_that_is_not_plain_yaml_is_one_line(tmp_path, cfg, message):
    from imgen_core.audiocraft_lm import read_audiocraft_lm
    marker = tmp_path / "ran"
    path = tmp_path / "state_dict.bin"
    torch.save({"best_state": {}, "xp.cfg": cfg.replace("{marker}", str(marker)), "version": "1.3.0",
                "exported": True}, path)
    with pytest.raises(CheckpointError, match=message) as e:
        read_audiocraft_lm(path)
    assert "\n" not in str(e.value) and not marker.exists()


def test_a_base_declaring_a_huge_model_is_checked_before_anything_is_allocated(tmp_path, tiny_files):
    """64 layers of width 4096 (17 billion parameters, under the bound) declared by a file of tiny
    weights: the model is only sized on the meta device, and the weights' shapes refuse it at
    once. 256 layers of width 8192 (275 billion) are refused by the config alone."""
    pkg = torch.load(tiny_files["base"], weights_only=True)
    resized(dim=4096, num_layers=64, num_heads=32)(pkg)
    path = tmp_path / "state_dict.bin"
    torch.save(pkg, path)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: lm\.emb\.0\.weight \[65, 64\] \(expected \[65, 4096\]\)"):
        load_model(path)
    assert time.perf_counter() - start < 10
    resized(dim=8192, num_layers=256, num_heads=64)(pkg)
    torch.save(pkg, path)
    with pytest.raises(CheckpointError, match=r"declares an LM of 274\.9 billion parameters; accepted: at most 20"):
        load_model(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("merge", [False, True])
def test_weights_are_loaded_straight_into_their_dtype(fixture, load_fixture, dtype, merge):
    """Every parameter materialised (none left on the meta device) in the dtype asked for, and the
    model the same as the fp32 one rounded (LoRA merged in fp32 first)."""
    path, ref = fixture
    model, _ = load_fixture(path, dtype=dtype, merge_lora=merge)
    reference, _ = load_fixture(path)
    if merge:
        reference.merge_lora()
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert {p.dtype for p in model.parameters()} == {dtype}
    theirs = {k.replace(".base_layer.weight", ".weight") if merge else k: v
              for k, v in reference.state_dict().items() if not (merge and ".lora_" in k)}
    ours = model.state_dict()
    assert set(ours) == set(theirs)
    tolerance = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    for key, value in ours.items():
        assert torch.allclose(value.float(), theirs[key].to(dtype).float(), rtol=tolerance, atol=1e-6), key
