"""What many tests share: synthetic signals, tiny stem datasets in the real layouts, the command
line's options for the tiny model, and hostile weight files built on the spot."""
from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from imgen_core.sampling import Sampling
from imgen_core.synthetic import stem

REPO = Path(__file__).resolve().parent.parent
# The official implementation's tiny checkpoints and outputs (never copied into the project): beside
# the checkout, or inside it where a copy of the working tree carries them.
FIXTURES = Path(os.environ.get("IMGEN_FIXTURES") or next(
    (p for p in (REPO.parent / "shared" / "fixtures", REPO / "shared" / "fixtures") if p.is_dir()),
    REPO.parent / "shared" / "fixtures"))
FIXTURE_NAMES = ["instruct_musicgen_tiny", "instruct_musicgen_tiny_partial"]
STEM_RATE = 44100


GREEDY = Sampling(top_k=1)


def conditional_text(ref: dict) -> torch.Tensor:
    """A fixture's instruction rows for `generate`. The official run's guidance batch holds them
    and null rows after them, which must be all zeros: what `generate` adds under guidance."""
    cond, null = ref["cfg_text_cond"].chunk(2)
    assert not null.any(), "the official null condition is not all zeros"
    return cond


def fixture_dir(name: str) -> Path:
    """A parity fixture's folder; the test is skipped, saying where it looked, without it."""
    path = FIXTURES / name
    if not (path / "reference.pt").is_file():
        pytest.skip(f"parity fixture {path} not found: set IMGEN_FIXTURES to the fixtures folder")
    return path


# ------------------------------------------------------------------ signals

def tone(seconds: float, sr: int = 32000, channels: int = 1, freq: float = 440.0, level: float = 0.5,
         spread: float = 0.0) -> torch.Tensor:
    """A sine [channels, T]; channel c at freq * (1 + spread * c)."""
    t = torch.arange(int(seconds * sr)) / sr
    return torch.stack([level * torch.sin(2 * math.pi * freq * (1 + spread * c) * t) for c in range(channels)])


def chord(seconds: float, root: float, sr: int = 32000, channels: int = 1) -> torch.Tensor:
    """Three partials of `root` with a beeping beat, the same on every channel: [channels, T]."""
    t = torch.arange(int(seconds * sr)) / sr
    x = sum(torch.sin(2 * math.pi * root * r * t) for r in (1.0, 1.26, 1.5)) / 3
    beat = torch.sin(2 * math.pi * 3 * t) > 0.9
    x = 0.5 * x + 0.2 * beat * torch.sin(2 * math.pi * 1500 * t)
    return x.repeat(channels, 1)


def differs(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of positions where two code tensors differ."""
    return (a != b).float().mean().item()


# ------------------------------------------------------------------ stem datasets

def stem_audio(kind: str, seconds: float, seed: int, level: float = 0.5) -> np.ndarray:
    """A mono stem at STEM_RATE, float32, peak `level`."""
    return (level * stem(kind, seconds, seed, STEM_RATE)).float().numpy()


def write_stem(path: Path, kind: str, seconds=3.0, seed=0, level=0.5):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), stem_audio(kind, seconds, seed, level), STEM_RATE)


def make_slakh(root: Path, songs=3, kinds=("Drums", "Bass", "Piano", "Guitar", "Strings"), seconds=3.0):
    for i in range(songs):
        track = root / f"Track{i:05d}"
        stems = {}
        for j, kind in enumerate(kinds):
            sid = f"S{j:02d}"
            stems[sid] = {"inst_class": kind, "audio_rendered": True, "program_num": j}
            write_stem(track / "stems" / f"{sid}.flac", kind.lower(), seconds=seconds, seed=i * 10 + j)
        (track / "metadata.yaml").write_text(yaml.safe_dump({"stems": stems}))
    return root


RENDER_SKIP = "rendered music unavailable"  # the start of every skip for want of rendering (conftest reports them)


def render_set(root: Path, songs=3, seconds=8.0, seed=0, layout="slakh") -> Path:
    """Songs rendered from MIDI as `imgen make-dataset` writes them; the test is skipped, saying
    what to install, where tinysoundfont or a SoundFont is missing."""
    from imgen_core.dataset_writer import make_dataset
    from imgen_core.synthesis import MissingPart
    try:
        make_dataset(root, songs, seconds, seed, layout)
    except MissingPart as e:
        pytest.skip(f"{RENDER_SKIP}: {e}")
    return root


def make_moisesdb(root: Path, songs=2):
    for i in range(songs):
        track = root / f"song-{i}"
        stems = []
        for kind in ("drums", "bass", "guitar", "vocals", "other"):
            sid = f"{kind}-{i}"
            stems.append({"stemName": kind, "tracks": [{"id": sid, "extension": "wav", "trackType": kind}]})
            write_stem(track / kind / f"{sid}.wav", kind, seed=i)
        (track / "data.json").write_text(json.dumps({"song": f"song {i}", "stems": stems}))
    return root


def make_folders(root: Path, songs=4, seconds=4.0):
    for i in range(songs):
        for kind in ("drums", "bass", "piano", "guitar"):
            write_stem(root / f"song{i}" / f"{kind}.wav", kind, seconds=seconds, seed=i)
    return root


# ------------------------------------------------------------------ the command line

def tiny_args(files) -> list[str]:
    """`imgen` options that load the tiny model written by `imgen_core.tiny.save_tiny`."""
    return ["--base", str(files["base"]), "--adapter", str(files["adapter"]), "--t5", str(files["t5"]),
            "--encodec", str(files["encodec"]), "--offline"]


# ------------------------------------------------------------------ hostile files

class BigBytes:
    """Pickles as `builtins.bytearray(3_000_000_000)`: 3 GB from a few bytes, if ever unpickled."""

    def __reduce__(self):
        return bytearray, (3_000_000_000,)


def official_with(path: Path, edit) -> Path:
    """A small checkpoint in the official layout, changed by `edit(state_dict)`."""
    from imgen_core.tiny import write_official_checkpoint
    write_official_checkpoint(path, adapter_mb=1, extra_mb=0, dim=64, edit=edit)
    return path


def base_with(path: Path, tiny_base: Path, edit) -> Path:
    """The tiny base changed by `edit(package)`."""
    pkg = torch.load(tiny_base, weights_only=True)  # our own tiny file: trusted
    edit(pkg)
    torch.save(pkg, path)
    return path


def adapter_with_metadata(path: Path, **meta) -> Path:
    """An adapter file of one tensor whose metadata says `meta` (over plausible defaults)."""
    from safetensors.torch import save_file

    from imgen_core.adapter_file import ADAPTER_FORMAT
    base = {"format": ADAPTER_FORMAT, "fusion": json.dumps({"num_layers": 2}), "lm_layers": "2", "lm_dim": "64"}
    save_file({"x": torch.zeros(1)}, str(path), metadata={**base, **meta})  # a tensor: safetensors 0.4.1 refuses none
    return path


def deflated_pickle(path: Path, gigabytes: int) -> Path:
    """A torch.save file whose data.pkl is padded to `gigabytes` and deflated to a few MB."""
    plain = path.with_suffix(".plain")
    torch.save({"state_dict": {"x": torch.zeros(4)}}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("data.pkl"):
                dst.writestr(info, src.read(info))
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(entry, "w", force_zip64=True) as f:
                f.write(src.read(info))
                zeros = bytes(64 << 20)
                for _ in range(gigabytes * 16):
                    f.write(zeros)
    plain.unlink()
    return path


def flac_claiming(path: Path, frames_bits=36, channels=8) -> Path:
    """A real FLAC whose header says 2**36 - 1 frames of 8 channels (2 TB as float32)."""
    sf.write(str(path), np.zeros((1000, channels), dtype="float32"), 44100)
    data = bytearray(path.read_bytes())
    word = int.from_bytes(data[18:26], "big")  # STREAMINFO: rate, channels, bits, 36-bit frame count
    data[18:26] = ((word >> 36 << 36) | (2 ** frames_bits - 1)).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def resized(**sizes):
    """An edit of a base package: its config declares other LM sizes (its weights stay tiny)."""
    def edit(pkg):
        cfg = yaml.safe_load(pkg["xp.cfg"])
        cfg["transformer_lm"].update(sizes)
        pkg["xp.cfg"] = yaml.safe_dump(cfg)
    return edit


def text_for_a_tensor(pkg):
    key = next(iter(pkg["best_state"]))
    pkg["best_state"][key] = "not a tensor"


def integers_for_weights(pkg):
    pkg["best_state"] = {k: torch.zeros(v.shape, dtype=torch.int64) for k, v in pkg["best_state"].items()}


def yaml_tag(marker: Path):
    def edit(pkg):
        pkg["xp.cfg"] = f"!!python/object/apply:os.system ['touch {marker}']"
    return edit


def hollow(state):
    """A stride-0 view: one stored value claiming a whole tensor."""
    key = "model.cp_transformer.merge_linear.0.weight"
    state[key] = torch.zeros(1).expand(*state[key].shape)


def far_layer(state):
    key = "model.peft_model.lm.transformer.base_model.model.layers.1000000000.cross_attention.k_proj.weight"
    state[key] = torch.zeros(64, 64)


def bytearray_payload(state):
    state["model.cp_transformer.gates"] = BigBytes()


# ------------------------------------------------------------------ hand-written torch.save files

class Pickle:
    """A protocol-2 pickle written opcode by opcode, as a hostile file would be."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")

    def raw(self, code: bytes) -> "Pickle":
        self.out += code
        return self

    def text(self, s: str) -> "Pickle":
        data = s.encode()
        return self.raw(b"X" + struct.pack("<I", len(data)) + data)

    def integer(self, n: int) -> "Pickle":
        return self.raw(b"J" + struct.pack("<i", n))

    def name(self, module: str, name: str) -> "Pickle":
        return self.raw(b"c" + f"{module}\n{name}\n".encode())

    def put(self, i: int) -> "Pickle":
        return self.raw(b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i))

    def get(self, i: int) -> "Pickle":
        return self.raw(b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i))

    def done(self) -> bytes:
        return bytes(self.out + b".")


def torch_archive(path: Path, pickles: dict[str, bytes], storages: dict[str, bytes] | None = None,
                  folder: str = "archive") -> Path:
    """A zip laid out as torch.save lays it out (stored entries under one folder), holding each
    pickle under its name (torch.save writes one, `data.pkl`)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, pickle in pickles.items():
            z.writestr(f"{folder}/{name}", pickle)
        z.writestr(f"{folder}/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr(f"{folder}/data/{key}", data)
        z.writestr(f"{folder}/version", "3\n")
    return path


def bytearray_pickle() -> bytes:
    """{'state_dict': bytearray(3_000_000_000)}: 3 GB from a few bytes, if ever unpickled."""
    return (Pickle().raw(b"}").text("state_dict").name("__builtin__", "bytearray")
            .integer(2 ** 31 - 1).raw(b"\x85R").raw(b"s").done())


def deep_tuple_key(depth: int = 200_000) -> bytes:
    """A dict whose key is a tuple nested `depth` deep: hashing it overflows the C stack."""
    return Pickle().raw(b"}").raw(b")" + b"\x85" * depth).integer(1).raw(b"s").done()


def deep_list_value(depth: int = 200_000) -> bytes:
    """{'x': [[[...]]]} nested `depth` deep."""
    return Pickle().raw(b"}").text("x").raw(b"]" * depth + b"a" * (depth - 1)).raw(b"s").done()


def codecs_bomb(megabytes: int = 1, times: int = 1_100_000) -> bytes:
    """_codecs.encode called `times` on one memoized string of `megabytes`: each call copies it."""
    p = Pickle().raw(b"}").text("x").raw(b"]").name("_codecs", "encode").put(0)
    p.text("a" * (megabytes << 20)).text("latin1").raw(b"\x86").put(1).raw(b"Ra")
    for _ in range(times):
        p.get(0).get(1).raw(b"Ra")
    return p.raw(b"s").done()


def set_bomb(items: int = 100_000, times: int = 200_000) -> bytes:
    """set(list) called `times` on one memoized list of `items` integers: each call copies it."""
    p = Pickle().raw(b"}").text("x").raw(b"]").name("__builtin__", "set").put(0)
    p.raw(b"](" + b"K\x01" * items + b"e\x85").put(1).raw(b"Ra")
    for _ in range(times):
        p.get(0).get(1).raw(b"Ra")
    return p.raw(b"s").done()


def punycode_pickle(kilobytes: int = 46) -> bytes:
    """_codecs.encode(text, 'punycode'): quadratic in the text's length."""
    return (Pickle().raw(b"}").text("x").name("_codecs", "encode").text("\u00e9a" * (kilobytes << 9))
            .text("punycode").raw(b"\x86R").raw(b"s").done())


def ordered_dict_of_pairs(pairs: int = 100_000) -> bytes:
    """OrderedDict(list of pairs): a copy of every pair."""
    p = Pickle().raw(b"}").text("x").name("collections", "OrderedDict").raw(b"](")
    p.raw(b"K\x01K\x02\x86" * pairs).raw(b"e\x85R")
    return p.raw(b"s").done()


def shared_storage(state: dict):
    """Every float tensor of a state becomes a view of one storage (the largest's size)."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    store = torch.randn(max(v.numel() for v in tensors.values()), dtype=next(iter(tensors.values())).dtype)
    for k, v in tensors.items():
        state[k] = store[:v.numel()].view(v.shape)
