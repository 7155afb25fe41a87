"""Hostile and oversized files, one per finding of the review that found them, each built here and
given to `imgen` as a user would. For every one: a clear one-line refusal (no traceback), nothing
left on disk, peak memory bounded, and done in seconds. All run in one subprocess
(hostile_runner.py) that measures each case's peak resident memory on its own."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from support import (REPO, adapter_with_metadata, base_with, bytearray_payload, deflated_pickle, far_layer,
                     flac_claiming, hollow, integers_for_weights, official_with, resized, text_for_a_tensor,
                     yaml_tag)

# Peak memory a refusal may take above what the process held before it: a bound that every case
# meets with room to spare, and that the findings broke by far (3 to 9 GB each).
PEAK_MB = 200
SECONDS = 10


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
    ]
    assert [c["name"] for c in cases] == list(EXPECTED)
    song_bytes = song.read_bytes()
    (d / "cases.json").write_text(json.dumps(cases))
    subprocess.run([sys.executable, str(REPO / "tests" / "hostile_runner.py"), str(d / "cases.json"),
                    str(d / "results.json")], cwd=REPO, check=True, timeout=600)
    results = json.loads((d / "results.json").read_text())
    for name, r in results.items():  # the table the closing notes quote
        print(f"{name:45s} exit {r['code']}  peak +{r['peak_mb']:6.1f} MB  {r['seconds']:5.2f} s")
    return {"results": results, "left": sorted(p.name for p in out.iterdir()),
            "cache": sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else [],
            "song_kept": song.read_bytes() == song_bytes, "marker": marker.exists()}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_a_hostile_file_is_refused_in_one_line_within_bounded_memory_and_time(outcomes, name):
    finding, says = EXPECTED[name]
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

