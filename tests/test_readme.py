"""The README's commands, run as written: every `imgen` and `torchrun` line of its bash blocks, in a
fresh folder, with the hub's address pointed at the stand-in (hub_server.py) serving a parity
fixture under the released names. A command the README gains is run here or listed in NOT_RUN
with its reason, or this test fails."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from hub_harness import Hub, hub_root, online_env
from support import REPO, STEM_RATE, fixture_dir, stem_audio

# What cannot run on a test machine as written, and where the same command runs at a size that can.
NOT_RUN = {
    "imgen make-dataset data/rendered --songs 100 --seconds 30 --seed 0":
        "50 minutes of music; test_dataset_writer.py renders the same with fewer songs",
    "imgen eval --data data/rendered --layout slakh --every-stem --out results/rendered":
        "on those 100 songs; test_eval.py runs it on three",
    "imgen train --config train.yaml": "its config names /data/slakh2100; test_training.py trains on rendered songs",
    "torchrun --nproc_per_node 4 -m imgen_core.cli train --config train.yaml": "the same, on four GPUs",
    "imgen train --config train.yaml --resume runs/slakh/step_0002000": "the same; test_training.py resumes",
    "imgen train --config train.yaml --encode-only": "the same; test_training.py pre-encodes",
    "imgen eval --data /data/slakh2100_flac_redux/test --layout slakh --out results/slakh": "Slakh2100's test split",
    "torchrun --nproc_per_node 4 -m imgen_core.cli eval --data /data/slakh2100_flac_redux/test --layout slakh "
    "--out results/slakh": "the same, in four processes; test_eval.py compares one and two processes",
    "imgen eval --data /data/moisesdb --layout moisesdb --classes drums,bass,guitar,piano --out results/moisesdb":
        "MoisesDB",
}


def readme_commands() -> list[str]:
    """Each `imgen` or `torchrun` command of the README's bash blocks, its comment left out."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] in ("imgen", "torchrun"):
                    commands.append(shlex.join(words))
    return commands


def write_mix(path: Path, seconds: float, seed: int):
    mix = sum(stem_audio(kind, seconds, seed=seed + i) for i, kind in enumerate(("drums", "bass", "piano"))) / 3
    sf.write(str(path), mix, STEM_RATE)


def test_every_readme_command_runs_as_written(tmp_path):
    commands = readme_commands()
    assert set(NOT_RUN) <= set(commands), set(NOT_RUN) - set(commands)  # the list follows the README
    work = tmp_path / "work"
    (work / "songs").mkdir(parents=True)
    write_mix(work / "song.wav", 2.0, seed=0)
    for i, name in enumerate(("a.wav", "b.flac", "c.ogg")):
        write_mix(work / name, 1.5, seed=10 + i)
    for i in range(2):
        write_mix(work / "songs" / f"song{i}.wav", 1.5, seed=20 + i)
    bin_dir = tmp_path / "bin"  # `imgen` and `torchrun` as installed, running this checkout's code
    bin_dir.mkdir()
    for name, module in (("imgen", "imgen_core.cli"), ("torchrun", "torch.distributed.run")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        (bin_dir / name).chmod(0o755)
    hub = Hub(hub_root(tmp_path / "hub", fixture_dir("instruct_musicgen_tiny")))
    # the weights folder is the working folder, so that `imgen convert finetuned.ckpt` finds what
    # `imgen download` fetched, as it would for a user who downloaded it there
    env = dict(online_env(hub, work), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(REPO))
    ran = {}
    try:
        for command in commands:
            if command in NOT_RUN:
                continue
            if command.startswith("torchrun") and " edit " in command:
                os.rename(work / "no_drums", work / "no_drums_one_process")  # so that it edits, not skips
            out = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
            ran[command] = out.stdout + out.stderr
            print(f"$ {command}\n{ran[command]}")  # shown with -s, or when a later check fails
    finally:
        hub.stop()
    assert len(ran) + len(NOT_RUN) == len(commands)
    assert "ok: edited" in ran["imgen demo"]
    for name in ("no_drums.wav", "bass.wav", "more.wav", "instruct_musicgen.safetensors", "out.wav",
                 "imgen_demo.wav"):
        assert (work / name).stat().st_size > 1000, name
    assert sorted(p.name for p in (work / "edited").iterdir()) == ["a.wav", "b.flac", "c.ogg"]
    # four processes write the bytes one process wrote; those left without a batch say so, no empty bar
    four = ran["torchrun --nproc_per_node 4 -m imgen_core.cli edit songs/ -o no_drums/ --op remove --stem drums"]
    assert re.search(r"process 3: no files of its own \(2 files in [12] batch\(es\) of up to \d+, shared among 4 "
                     r"processes\)", four), four
    assert not re.search(r"\): 0file \[", four), four  # an empty bar reads "files (process 3): 0file [00:00, ..."
    for song in ("song0.wav", "song1.wav"):
        assert (work / "no_drums" / song).read_bytes() == (work / "no_drums_one_process" / song).read_bytes()
    models = ran["imgen models"]
    assert models.count("here: ") == 4 and models.rindex("missing (goes to") > models.index("\nbase "), models
    edits = {name: (work / name).read_bytes() for name in ("no_drums.wav", "bass.wav", "more.wav", "out.wav")}
    assert len({edits["no_drums.wav"], edits["bass.wav"], edits["more.wav"]}) == 3  # three edits of one song
    # the free text is the template of "add piano": the same edit as the model converted by hand
    assert edits["more.wav"] == edits["out.wav"]
