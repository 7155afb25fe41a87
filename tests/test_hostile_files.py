"""Hostile and oversized files, one per finding of the review that found them, each built here and
given to `imgen` as a user would. For every one: a clear one-line refusal (no traceback), nothing
left on disk, peak memory bounded, and done in seconds. All run in one subprocess
(hostile_runner.py) that measures each case's peak resident memory on its own."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from support import (REPO, make_folders, make_moisesdb, make_slakh, adapter_with_metadata, base_with, bytearray_payload, bytearray_pickle, codecs_bomb,
                     deep_list_value, deep_tuple_key, deflated_pickle, far_layer, flac_claiming, hollow,
                     integers_for_weights, official_with, ordered_dict_of_pairs, punycode_pickle, resized,
                     set_bomb, shared_storage, text_for_a_tensor, torch_archive, yaml_tag, Pickle)

# Peak memory a refusal may take above what the process held before it: a bound that every case
# meets with room to spare, and that the findings broke by far (3 to 9 GB each).
PEAK_MB = 200
SECONDS = 10


def shared_layers(pkg):
    """The base's config says 256 layers of width 512 (805 million weights, 1.6 GB in fp16); every
    weight is a view of one storage of the largest's size (2 MB)."""
    resized(num_layers=256, dim=512, num_heads=8)(pkg)
    shapes = {}
    for key, value in pkg["best_state"].items():
        shape = list(value.shape)
        if key.startswith("transformer.layers.0."):
            for i in range(256):
                shapes[key.replace("layers.0.", f"layers.{i}.")] = [512 if n == 64 else 2048 if n == 256 else 1536
                                                                     if n == 192 else n for n in shape]
        elif not key.startswith("transformer.layers."):
            shapes[key] = [512 if n == 64 else n for n in shape]
    store = torch.randn(max(torch.Size(s).numel() for s in shapes.values()), dtype=torch.float16)
    pkg["best_state"] = {k: store[:torch.Size(s).numel()].view(s) for k, s in shapes.items()}


def billion_laughs(old: str) -> str:
    """metadata.yaml whose aliases expand ten levels of ten: 10**10 values from a few hundred bytes."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n" + old


def dataset(root: Path, name: str, change) -> Path:
    """A one-song Slakh set whose track's metadata file is changed by `change(text)`."""
    make_slakh(root, songs=1, kinds=("Drums", "Bass"), seconds=1.0)
    meta = root / "Track00000" / name
    meta.write_text(change(meta.read_text()))
    return root


def moises(root: Path, change) -> Path:
    """A one-song MoisesDB set whose first track is changed by `change(track)`."""
    make_moisesdb(root, songs=1)
    meta = root / "song-0" / "data.json"
    data = json.loads(meta.read_text())
    change(data["stems"][0]["tracks"][0])
    meta.write_text(json.dumps(data))
    return root


def notes_readable() -> bool:
    """Whether `imgen eval` computes note metrics here (and so reads the stems' MIDI files)."""
    from imgen_core import eval_models
    try:
        eval_models.load(["notes"], report=lambda line: None)["notes"]
    except KeyError:
        return False
    return True


def with_midi(root: Path, write) -> Path:
    """A one-song Slakh set whose bass stem has a MIDI file written by `write(path)` (the note
    metrics read it, when basic-pitch's note model can run)."""
    make_slakh(root, songs=1, kinds=("Drums", "Bass"), seconds=1.0)
    (root / "Track00000" / "MIDI").mkdir()
    write(root / "Track00000" / "MIDI" / "S01.mid")
    return root


def empty_stem(root: Path) -> Path:
    make_slakh(root, songs=1, kinds=("Drums", "Bass"), seconds=1.0)
    sf.write(str(root / "Track00000" / "stems" / "S01.wav"), np.zeros(0, dtype="float32"), 44100)
    (root / "Track00000" / "stems" / "S01.flac").unlink()
    (root / "Track00000" / "stems" / "S01.wav").rename(root / "Track00000" / "stems" / "S01.flac")
    return root


def huge_weight(path: Path, adapter: str) -> Path:
    """The tiny adapter with one weight of 1e30: finite in fp32, infinite in fp16."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(adapter, "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors["fusion.merge_linear.0.weight"][0, 0] = 1e30
    save_file(tensors, str(path), metadata=meta)
    return path


def text_delays(pkg):
    cfg = yaml.safe_load(pkg["xp.cfg"])
    cfg["codebooks_pattern"]["delay"]["delays"] = "0123"
    pkg["xp.cfg"] = yaml.safe_dump(cfg)


def deep_config(pkg):
    pkg["xp.cfg"] = "transformer_lm: " + "[" * 100_000 + "]" * 100_000


# name -> (finding, what the message must say)
EXPECTED = {
    "hollow view, converted": (2, "are not tensors stored in the file"),
    "hollow view, as an adapter": (2, "are not tensors stored in the file"),
    "layer index 10**9": (3, "declares an LM of 1000000001 layers"),
    "metadata asking 10**9 layers": (3, "declares an LM of 1000000000 layers"),
    "base config of width 16384": (3, "dim=16384 (accepted: 1 to 8192)"),
    "base config of 256 layers of width 8192": (3, "declares an LM of 274.9 billion parameters"),
    "pickle deflated to 1 GB": (4, "is compressed"),
    "pickle calling bytearray(3e9)": (5, "references 'builtins.bytearray'"),
    "output is the input": (7, "is the input file"),
    "deeply nested metadata": (8, "unreadable metadata"),
    "metadata of the wrong type": (8, "unreadable metadata"),
    "text where a tensor belongs": (8, "(a str) should be tensors"),
    "integers where weights belong": (8, "weights must be float16, bfloat16, float32 or float64"),
    "YAML tag in the base config": (8, "is not plain YAML"),
    "FLAC claiming 2**36 frames x 8 channels": (8, "declares 68719476735 frames x 8 channels"),
    "10 MB metadata value": (9, "is not an Instruct-MusicGen adapter"),
    "100 MB metadata value": (9, "its header is 99000"),
    # the second review (findings 1-6 of its issue, numbered 21.x here)
    "pickle stored as data.PKL": ("21.1", "torch.save writes exactly one, named archive/data.pkl"),
    "data.PKL payload, then a benign data.pkl, as a base": ("21.1", "two entries named archive/data.pkl (in some case)"),
    "200,000-deep tuple as a dictionary key": ("21.2", "uses a tuple as a dictionary key"),
    "200,000-deep tuple key, as a base": ("21.2", "uses a tuple as a dictionary key"),
    "200,000-deep nested lists": ("21.2", "nests containers more than 64 deep"),
    "_codecs.encode of one 1 MB string 1.1 million times": ("21.3", "makes more than 8388608 bytes"),
    "set() of one 100,000-item list 200,000 times": ("21.3", "builds more than 1000000 containers and entries"),
    "OrderedDict of 100,000 pairs": ("21.3", "builds an OrderedDict from arguments"),
    "_codecs.encode with punycode": ("21.4", "_codecs.encode with 'punycode'"),
    "adapter tensors viewing one storage, converted": ("21.5", "view the same bytes of the file"),
    "adapter tensors viewing one storage, as an adapter": ("21.5", "view the same bytes of the file"),
    "256 base layers viewing one storage, trained on": ("21.6", "view the same bytes of the file"),
    "YAML aliases (billion laughs) in a Slakh metadata.yaml, evaluated": ("21.7", "aliases are not accepted"),
    "the same metadata, trained on": ("21.7", "aliases are not accepted"),
    "adapter metadata num_layers 2.0": ("21.11", "num_layers must be a whole number of at least 1, got 2.0"),
    "adapter metadata lora_alpha '64'": ("21.11", "lora_alpha must be a finite number above 0, got '64'"),
    "adapter metadata lora_alpha 1e400": ("21.11", "lora_alpha must be a finite number above 0, got inf"),
    "adapter metadata stems '5'": ("21.11", "are not a list of stem names"),
    "base config num_heads 0": ("21.11", "num_heads must be a whole number of at least 1, got 0"),
    "base config with delays as text": ("21.11", "delays must be whole numbers of at least 0"),
    "base config nested 100,000 deep": ("21.11", "nests values more than 64 deep"),
    "a list-shaped metadata.yaml": ("21.11", "holds a list; expected a mapping"),
    "a MoisesDB track without an id": ("21.11", "needs an id"),
    "a stem of 0 frames": ("21.11", "holds no audio (0 frames)"),
    "an empty training config": ("21.11", "holds nothing; a training config is a mapping"),
    "training config steps: many": ("21.11", "setting steps must be a whole number >= 1, got 'many'"),
    "training config log_every: 0": ("21.11", "setting log_every must be a whole number >= 1, got 0"),
    "--fade 1e308": ("21.11", "fade from 0 to 10"),
    "--window 1e308": ("21.11", "window must be more than 0 and at most 60 seconds"),
    "--overlap 1e308": ("21.11", "overlap must be more than 0 and less than the window"),
    "--device bogus": ("21.11", "unknown device 'bogus'"),
    "--device cuda:99": ("21.11", "there is no CUDA device 99 here"),
    "convert -o <folder> --overwrite": ("21.11", "is a folder; name the adapter file to write"),
    "a MoisesDB track id that is an absolute path": ("21.12", "is not a plain file name"),
    "adapter metadata lora_alpha NaN": ("21.10", "lora_alpha must be a finite number above 0, got nan"),
    "an adapter weight of 1e30 loaded in fp16": ("21.10", "holds values beyond what float16 can hold"),
    "--guidance inf": ("21.10", "guidance must be a number >= 0, got inf"),
    "--temperature 1e-300": ("21.10", "temperature must be 0 (greedy) or at least 0.001"),
    "a stem's MIDI file that is not MIDI, evaluated": ("22", "unreadable MIDI file"),
    "a stem's MIDI file of 9 MB, evaluated": ("22", "at most 8388608 are read"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tiny_files):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("measuring peak memory per case needs Linux's /proc/self/clear_refs")
    d = tmp_path_factory.mktemp("hostile")
    song = d / "song.wav"
    sf.write(str(song), 0.3 * np.sin(np.arange(44100 * 2) / 10.0).repeat(2).reshape(-1, 2), 44100)
    out = d / "out"
    out.mkdir()
    cache = d / "cache"
    marker = d / "ran"
    tiny = {k: str(v) for k, v in tiny_files.items()}

    def edit(name, song=song, base=tiny["base"], adapter=tiny["adapter"], extra=()):
        return {"name": name, "env": {"IMGEN_CACHE": str(cache)},
                "argv": ["edit", str(song), "--op", "remove", "--stem", "drums", "-o", str(out / "edit.wav"),
                         "--base", str(base), "--adapter", str(adapter), "--t5", tiny["t5"],
                         "--encodec", tiny["encodec"], "--offline", *extra]}

    def convert(name, ckpt):
        return {"name": name, "argv": ["convert", str(ckpt), "-o", str(out / "adapter.safetensors")]}

    hollow_ckpt = official_with(d / "hollow.ckpt", hollow)
    shared_ckpt = official_with(d / "shared.ckpt", shared_storage)
    benign = Pickle().raw(b"}").done()

    def train_config(folder, base=tiny["base"], layout="folders", text=None, name="train.yaml"):
        config = folder / name
        config.write_text(text if text is not None else yaml.safe_dump(
            {"out_dir": str(out / "train"), "dataset_root": str(folder), "dataset_layout": layout, "base": str(base),
             "t5": tiny["t5"], "encodec": tiny["encodec"], "device": "cpu"}))
        return config

    def train(name, config):
        return {"name": name, "argv": ["train", "--config", str(config)]}

    def evaluate(name, data, layout="slakh", extra=()):
        return {"name": name, "argv": ["eval", "--data", str(data), "--layout", layout, "--out", str(out / "eval"),
                                       "--base", tiny["base"], "--adapter", tiny["adapter"], "--t5", tiny["t5"],
                                       "--encodec", tiny["encodec"], "--offline", *extra]}

    def fusion(**sizes):
        return json.dumps({"num_layers": 2, **sizes}).replace('"LORA_ALPHA"', "1e400")

    laughs = dataset(d / "laughs", "metadata.yaml", billion_laughs)
    plain = {"base": tiny["base"], "t5": tiny["t5"], "encodec": tiny["encodec"], "out_dir": str(out / "train")}

    cases = [
        convert("hollow view, converted", hollow_ckpt),
        edit("hollow view, as an adapter", adapter=hollow_ckpt),
        convert("layer index 10**9", official_with(d / "far.ckpt", far_layer)),
        edit("metadata asking 10**9 layers",
             adapter=adapter_with_metadata(d / "layers.safetensors", lm_layers="1000000000")),
        edit("base config of width 16384", base=base_with(d / "wide.bin", tiny["base"], resized(dim=16384))),
        edit("base config of 256 layers of width 8192",
             base=base_with(d / "wide_ok.bin", tiny["base"], resized(dim=8192, num_layers=256, num_heads=64))),
        convert("pickle deflated to 1 GB", deflated_pickle(d / "bomb.ckpt", 1)),
        convert("pickle calling bytearray(3e9)", official_with(d / "bytearray.ckpt", bytearray_payload)),
        edit("output is the input", extra=["-o", str(song), "--overwrite"]),
        edit("deeply nested metadata",
             adapter=adapter_with_metadata(d / "nested.safetensors", fusion="[" * 100_000 + "]" * 100_000)),
        edit("metadata of the wrong type", adapter=adapter_with_metadata(d / "type.safetensors", lm_layers="two")),
        edit("text where a tensor belongs", base=base_with(d / "text.bin", tiny["base"], text_for_a_tensor)),
        edit("integers where weights belong", base=base_with(d / "ints.bin", tiny["base"], integers_for_weights)),
        edit("YAML tag in the base config", base=base_with(d / "yaml.bin", tiny["base"], yaml_tag(marker))),
        edit("FLAC claiming 2**36 frames x 8 channels", song=flac_claiming(d / "huge.flac")),
        edit("10 MB metadata value",
             adapter=adapter_with_metadata(d / "meta10.safetensors", format="x" * 10_000_000)),
        edit("100 MB metadata value",
             adapter=adapter_with_metadata(d / "bigmeta.safetensors", format="x" * 99_000_000)),
        convert("pickle stored as data.PKL", torch_archive(d / "upper.ckpt", {"data.PKL": bytearray_pickle()})),
        edit("data.PKL payload, then a benign data.pkl, as a base",
             base=torch_archive(d / "twice.bin", {"data.PKL": bytearray_pickle(), "data.pkl": benign})),
        convert("200,000-deep tuple as a dictionary key", torch_archive(d / "key.ckpt", {"data.pkl": deep_tuple_key()})),
        edit("200,000-deep tuple key, as a base", base=torch_archive(d / "key.bin", {"data.pkl": deep_tuple_key()})),
        convert("200,000-deep nested lists", torch_archive(d / "deep.ckpt", {"data.pkl": deep_list_value()})),
        convert("_codecs.encode of one 1 MB string 1.1 million times",
                torch_archive(d / "codecs.ckpt", {"data.pkl": codecs_bomb()})),
        convert("set() of one 100,000-item list 200,000 times", torch_archive(d / "set.ckpt", {"data.pkl": set_bomb()})),
        convert("OrderedDict of 100,000 pairs", torch_archive(d / "pairs.ckpt", {"data.pkl": ordered_dict_of_pairs()})),
        convert("_codecs.encode with punycode", torch_archive(d / "puny.ckpt", {"data.pkl": punycode_pickle()})),
        convert("adapter tensors viewing one storage, converted", shared_ckpt),
        edit("adapter tensors viewing one storage, as an adapter", adapter=shared_ckpt),
        train("256 base layers viewing one storage, trained on",
              train_config(make_folders(d / "stems", songs=2, seconds=1.0),
                           base_with(d / "shared.bin", tiny["base"], shared_layers))),
        evaluate("YAML aliases (billion laughs) in a Slakh metadata.yaml, evaluated", laughs),
        train("the same metadata, trained on", train_config(laughs, layout="slakh")),
        edit("adapter metadata num_layers 2.0",
             adapter=adapter_with_metadata(d / "float.safetensors", fusion=json.dumps({"num_layers": 2.0}))),
        edit("adapter metadata lora_alpha '64'",
             adapter=adapter_with_metadata(d / "alpha.safetensors", fusion=fusion(lora_alpha="64"))),
        edit("adapter metadata lora_alpha 1e400",
             adapter=adapter_with_metadata(d / "inf.safetensors", fusion=fusion(lora_alpha="LORA_ALPHA"))),
        edit("adapter metadata stems '5'", adapter=adapter_with_metadata(d / "stems.safetensors", stems="5")),
        edit("base config num_heads 0", base=base_with(d / "heads.bin", tiny["base"], resized(num_heads=0))),
        edit("base config with delays as text", base=base_with(d / "delays.bin", tiny["base"], text_delays)),
        edit("base config nested 100,000 deep", base=base_with(d / "nest.bin", tiny["base"], deep_config)),
        evaluate("a list-shaped metadata.yaml", dataset(d / "list", "metadata.yaml", lambda old: "- 1\n- 2\n")),
        evaluate("a MoisesDB track without an id", moises(d / "noid", lambda track: track.pop("id")), "moisesdb"),
        evaluate("a stem of 0 frames", empty_stem(d / "empty")),
        train("an empty training config", train_config(d, text="", name="empty.yaml")),
        train("training config steps: many", train_config(d, text=yaml.safe_dump({**plain, "steps": "many",
                                                                                 "dataset_root": str(d)}),
                                                          name="many.yaml")),
        train("training config log_every: 0", train_config(d, text=yaml.safe_dump({**plain, "log_every": 0,
                                                                                  "dataset_root": str(d)}),
                                                           name="zero.yaml")),
        edit("--fade 1e308", extra=["--start", "0.5", "--fade", "1e308"]),
        edit("--window 1e308", extra=["--window", "1e308"]),
        edit("--overlap 1e308", extra=["--overlap", "1e308"]),
        edit("--device bogus", extra=["--device", "bogus"]),
        edit("--device cuda:99", extra=["--device", "cuda:99"]),
        {"name": "convert -o <folder> --overwrite",
         "argv": ["convert", str(hollow_ckpt), "-o", str(d), "--overwrite"]},
        evaluate("a MoisesDB track id that is an absolute path",
                 moises(d / "escape", lambda track: track.update(id=str(song.with_suffix("")))), "moisesdb"),
        edit("adapter metadata lora_alpha NaN",
             adapter=adapter_with_metadata(d / "nan.safetensors", fusion=fusion(lora_alpha="LORA_ALPHA").replace(
                 "1e400", "NaN"))),
        edit("an adapter weight of 1e30 loaded in fp16", adapter=huge_weight(d / "huge.safetensors", tiny["adapter"]),
             extra=["--dtype", "fp16"]),
        edit("--guidance inf", extra=["--guidance", "inf"]),
        edit("--temperature 1e-300", extra=["--temperature", "1e-300"]),
    ]
    if notes_readable():
        only_notes = ["--skip", "clap,fad,kl"]  # no line about the other metrics' models
        cases += [
            evaluate("a stem's MIDI file that is not MIDI, evaluated",
                     with_midi(d / "notmidi", lambda f: f.write_bytes(b"MThd" + bytes(200))), extra=only_notes),
            evaluate("a stem's MIDI file of 9 MB, evaluated", with_midi(d / "bigmidi", lambda f: f.write_bytes(
                b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk" + (9 << 20).to_bytes(4, "big")
                + bytes(9 << 20))), extra=only_notes)]
    assert [c["name"] for c in cases] == [n for n in EXPECTED if notes_readable() or EXPECTED[n][0] != "22"]
    song_bytes = song.read_bytes()
    (d / "cases.json").write_text(json.dumps(cases))
    runner = subprocess.run([sys.executable, str(REPO / "tests" / "hostile_runner.py"), str(d / "cases.json"),
                             str(d / "results.jsonl")], cwd=REPO, timeout=900, capture_output=True, text=True)
    lines = (d / "results.jsonl").read_text().splitlines() if (d / "results.jsonl").exists() else []
    results = {r.pop("name"): r for r in map(json.loads, lines)}
    if runner.returncode:  # the case after the last one reported took the process down
        crashed = next(c["name"] for c in cases if c["name"] not in results)
        results[crashed] = {"code": f"crashed ({runner.returncode})", "stderr": runner.stderr[-2000:],
                            "seconds": 0.0, "peak_mb": 0.0}
    for name, r in results.items():  # the table the closing notes quote
        print(f"{name:45s} exit {r['code']}  peak +{r['peak_mb']:6.1f} MB  {r['seconds']:5.2f} s")
    return {"results": results, "left": sorted(p.name for p in out.iterdir()),
            "cache": sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else [],
            "song_kept": song.read_bytes() == song_bytes, "marker": marker.exists()}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_a_hostile_file_is_refused_in_one_line_within_bounded_memory_and_time(outcomes, name):
    finding, says = EXPECTED[name]
    if finding == "22" and not notes_readable():
        pytest.skip("MIDI files are read only for the note metrics, whose model is not installed here")
    r = outcomes["results"][name]
    lines = [line for line in r["stderr"].splitlines() if line.strip()]
    assert r["code"] == 2, f"finding {finding}: {r['stderr'][-2000:]}"
    assert "Traceback" not in r["stderr"]
    assert len(lines) == 1 and lines[0].startswith("imgen ") and ": error: " in lines[0], lines
    assert says in lines[0] and len(lines[0]) < 600, lines[0][:1000]
    assert "weights_only" not in r["stderr"]
    assert r["peak_mb"] < PEAK_MB, f"{name}: peak {r['peak_mb']:.0f} MB"
    assert r["seconds"] < SECONDS, f"{name}: {r['seconds']:.1f} s"


def test_hostile_files_leave_nothing_behind(outcomes):
    assert outcomes["left"] == [] and outcomes["cache"] == []
    assert outcomes["song_kept"] and not outcomes["marker"]

