"""Training data: stems of songs, and the (input, instruction, output) triplets built from them.

Three layouts are read: Slakh2100 (track folders with `metadata.yaml` and `stems/Sxx.flac`,
classes from `inst_class`), MoisesDB (track folders with `data.json` and one folder per stem)
and a plain folder of stems per song (`song/drums.wav`, `song/bass_2.flac`, ...). The triplet
rules are the official training recipe's; every draw is a function of (seed, sample index), so a
dataset is deterministic and resumable without saving any sampler state.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import plain_text
from .audio import AUDIO_SUFFIXES, resample
from .instructions import OPERATIONS, phrase

SAMPLE_RATE = 32000
MAX_METADATA_BYTES = 1 << 20  # Slakh2100's metadata.yaml files are a few KB


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file or class at fault."""


@dataclass
class Song:
    name: str
    stems: dict[str, list[Path]] = field(default_factory=dict)  # class -> files (summed)
    # Slakh2100: class -> the MIDI files of its pitched stems (MIDI/Sxx.mid), and the drum classes
    midi: dict[str, list[Path]] = field(default_factory=dict)
    unpitched: set[str] = field(default_factory=set)

    def notes_known(self, classes) -> bool:
        """Whether the notes of every stem of `classes` are known (MIDI, or drums: no pitches)."""
        return all(c in self.unpitched or len(self.midi.get(c, ())) == len(self.stems.get(c, ())) for c in classes)


def _add(song: Song, cls: str, path: Path):
    """A stem file of a song, its header checked now, before any model loads."""
    if not path.is_file():
        raise DatasetError(f"missing stem file {path} (song {song.name}, class {cls})")
    stem_seconds([path])
    song.stems.setdefault(cls, []).append(path)


def read_slakh(root) -> list[Song]:
    songs = []
    for meta_path in sorted(Path(root).glob("*/metadata.yaml")):
        track = meta_path.parent
        meta = _metadata(meta_path, plain_text.parse_yaml)
        stems = meta.get("stems") or {}
        if not isinstance(stems, dict):
            raise DatasetError(f"{meta_path}: 'stems' is a {type(stems).__name__}; expected stem ids (S00, ...) "
                               f"mapping to their information")
        song = Song(track.name)
        for stem_id, info in sorted(stems.items(), key=lambda item: str(item[0])):
            if not info or (isinstance(info, dict) and info.get("audio_rendered") is False):
                continue
            if not isinstance(info, dict):
                raise DatasetError(f"{meta_path}: stem {_shown(stem_id)} is described by a {type(info).__name__}, "
                                   f"expected a mapping with inst_class")
            cls = str(info.get("inst_class", "")).strip().lower()
            if cls:
                name = _file_name(stem_id, meta_path)
                _add(song, cls, track / "stems" / f"{name}.flac")
                midi = track / "MIDI" / f"{name}.mid"
                if info.get("is_drum") is True:
                    song.unpitched.add(cls)
                elif info.get("midi_saved") is not False and midi.is_file():
                    song.midi.setdefault(cls, []).append(midi)
        songs.append(song)
    return songs


def read_moisesdb(root) -> list[Song]:
    songs = []
    for meta_path in sorted(Path(root).glob("*/data.json")):
        track = meta_path.parent
        meta = _metadata(meta_path, plain_text.parse_json)
        stems = meta.get("stems", [])
        if not isinstance(stems, list) or not all(isinstance(s, dict) for s in stems):
            raise DatasetError(f"{meta_path}: 'stems' must be a list of stems, each with stemName and tracks")
        song = Song(track.name)
        for stem in stems:
            cls = str(stem.get("stemName", "")).strip().lower()
            if not cls or cls == "vocals":  # vocals are dropped, as in the official recipe
                continue
            tracks = stem.get("tracks", [])
            if not isinstance(tracks, list) or not all(isinstance(t, dict) and "id" in t for t in tracks):
                raise DatasetError(f"{meta_path}: every track of stem {_shown(cls)} needs an id")
            for t in tracks:
                name = f"{_file_name(t['id'], meta_path)}.{_file_name(t.get('extension', 'wav'), meta_path)}"
                _add(song, cls, track / _file_name(cls, meta_path) / name)
        songs.append(song)
    return songs


def _metadata(path: Path, parse) -> dict:
    """A track's metadata file: bounded, plain, a mapping."""
    try:
        meta = parse(plain_text.read_file(path, "metadata", MAX_METADATA_BYTES), str(path))
    except (ValueError, OSError) as e:
        raise DatasetError(f"unreadable {path}: {e}") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path} holds a {type(meta).__name__}; expected a mapping (stems: ...)")
    return meta


def _file_name(value, source: Path) -> str:
    """A name from metadata used as a file or folder name: plain, never a path that could leave
    the track's folder."""
    name = str(value)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or len(name) > 255:
        raise DatasetError(f"{source}: {_shown(value)} is not a plain file name (metadata may not point outside "
                           f"the dataset)")
    return name


def _shown(value) -> str:
    return repr(value) if len(repr(value)) <= 80 else repr(value)[:80] + "..."


def read_stem_folders(root) -> list[Song]:
    songs = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        song = Song(folder.name)
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in AUDIO_SUFFIXES:
                _add(song, re.sub(r"[_ -]?\d+$", "", f.stem).strip().lower(), f)
        songs.append(song)
    return songs


READERS = {"slakh": read_slakh, "moisesdb": read_moisesdb, "folders": read_stem_folders}


def read_songs(layout: str, root) -> list[Song]:
    if layout not in READERS:
        raise DatasetError(f"unknown dataset layout {layout!r}; valid: {', '.join(READERS)}")
    if not Path(root).is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    songs = [s for s in READERS[layout](root) if s.stems]
    if not songs:
        raise DatasetError(f"no songs with stems found in {root} (layout {layout}); see the layout's description "
                           f"in imgen_core/data.py")
    return songs


def load_crop(paths: list[Path], start_s: float, seconds: float) -> torch.Tensor:
    """The sum of `paths` over [start_s, start_s + seconds), mono, 32 kHz, [samples]."""
    import soundfile as sf
    n = round(seconds * SAMPLE_RATE)
    total = torch.zeros(n)
    for p in paths:
        try:
            with sf.SoundFile(str(p)) as f:
                sr = f.samplerate
                f.seek(min(int(start_s * sr), max(0, f.frames - 1)))
                data = f.read(int(np.ceil(seconds * sr)) + 1, dtype="float32", always_2d=True)
        except (RuntimeError, TypeError, ValueError) as e:
            raise DatasetError(f"corrupt or unreadable stem {p}: {e}") from None
        mono = resample(torch.from_numpy(data.mean(axis=1).copy()), sr, SAMPLE_RATE)[:n]
        total[:mono.shape[0]] += mono
    return total


def stem_seconds(paths: list[Path]) -> float:
    """The shortest of the stems' durations; a stem without audio is refused, naming it."""
    import soundfile as sf
    durations = []
    for p in paths:
        try:
            info = sf.info(str(p))
        except (RuntimeError, TypeError) as e:
            raise DatasetError(f"corrupt or unreadable stem {p}: {' '.join(str(e).split())[:200]}") from None
        if info.frames < 1 or info.samplerate < 1:
            raise DatasetError(f"stem {p} holds no audio ({info.frames} frames)")
        durations.append(info.frames / info.samplerate)
    return min(durations)


@dataclass
class Triplet:
    input: torch.Tensor   # [samples], 32 kHz mono
    output: torch.Tensor  # [samples]
    operation: str
    target: str
    text: str
    song: str = ""
    start: float = 0.0                      # crop start, seconds (the same for every stem)
    input_classes: tuple[str, ...] = ()
    output_classes: tuple[str, ...] = ()


def choose_mix(rng: random.Random, operation: str, target: str, present: list[str]) -> tuple[list[str], list[str]]:
    """Classes summed into the input and the output, as the official recipe draws them: add: input = 1..N-1 others,
    output = input + target; remove: the reverse; extract: input = target + others, output = target."""
    others = [c for c in present if c != target]
    chosen = rng.sample(others, rng.randint(1, len(others)))
    if operation == "add":
        return chosen, chosen + [target]
    if operation == "remove":
        return chosen + [target], chosen
    return chosen + [target], [target]


class TripletDataset(torch.utils.data.Dataset):
    """`length` triplets drawn from `songs`; item i is the same for the same seed."""

    def __init__(self, songs: list[Song], classes, seconds: float = 5.0, operations=OPERATIONS, seed: int = 0,
                 length: int = 10_000, dialect: str = "slakh", retries: int = 10):
        self.songs, self.seconds, self.seed, self.length = songs, seconds, seed, length
        self.operations, self.dialect, self.retries = tuple(operations), dialect, retries
        self.classes = [c.lower() for c in classes]
        bad = [op for op in self.operations if op not in OPERATIONS]
        if bad:
            raise DatasetError(f"unknown operations {bad}; valid: {', '.join(OPERATIONS)}")
        found = sorted({c for s in songs for c in s.stems})
        missing = [c for c in self.classes if c not in found]
        if missing:
            raise DatasetError(f"class(es) {missing} never occur in the dataset; classes found: {', '.join(found)}")
        # a song is usable when it has a target class and at least one other stem
        self.usable = [s for s in songs if len(s.stems) >= 2 and any(c in s.stems for c in self.classes)]
        if not self.usable:
            raise DatasetError("no song has one of the target classes and at least one other stem")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        t = self.triplet(index)
        return {"input": t.input, "output": t.output, "text": t.text, "operation": t.operation, "target": t.target,
                "index": index}

    def triplet(self, index: int) -> Triplet:
        rng = random.Random(f"{self.seed}:{index}")
        song = rng.choice(self.usable)
        return draw_triplet(rng, song, rng.choice(self.operations), self.classes, self.seconds, self.dialect,
                            self.retries)


def draw_triplet(rng: random.Random, song: Song, operation: str, classes: list[str], seconds: float,
                 dialect: str, retries: int = 10, target: str | None = None) -> Triplet:
    """One triplet of `song` for `operation`: the target (`target`, or drawn among `classes`, never
    an "other" class), the mix (`choose_mix`), and a crop of `seconds` that is not near silent (up
    to `retries` tries)."""
    present = sorted(song.stems)
    if target is None:
        target = rng.choice([c for c in classes if c in song.stems and not c.startswith("other")])
    ins, outs = choose_mix(rng, operation, target, present)
    length = stem_seconds([p for c in present for p in song.stems[c]])
    for _ in range(max(1, retries)):
        start = rng.uniform(0.0, max(0.0, length - seconds))
        stems = {c: load_crop(song.stems[c], start, seconds) for c in set(ins) | set(outs)}
        x = sum(stems[c] for c in ins)
        y = sum(stems[c] for c in outs)
        if not near_silent(x, y):
            break
    x, y = normalise(x, y)
    return Triplet(x, y, operation, target, phrase(operation, target, dialect, classes),
                   song.name, start, tuple(sorted(ins)), tuple(sorted(outs)))


def eval_triplets(songs: list[Song], classes, operations, every_stem: bool = False
                  ) -> list[tuple[str, Song, str, str | None]]:
    """The evaluation set: one triplet per song and operation (songs with a target class and
    another stem), or with `every_stem` one per song, operation and target class present, in a
    fixed order. Returned as (clip id, song, operation, target or None: drawn); the triplet itself
    is `draw_eval_triplet(...)`, a function of the seed, the song, the operation and the target."""
    classes = [c.lower() for c in classes]
    bad = [op for op in operations if op not in OPERATIONS]
    if bad:
        raise DatasetError(f"unknown operations {bad}; valid: {', '.join(OPERATIONS)}")
    usable = [s for s in songs if len(s.stems) >= 2 and any(c in s.stems and not c.startswith("other")
                                                            for c in classes)]
    if not usable:
        raise DatasetError(f"no song has one of the classes {classes} and at least one other stem")
    if not every_stem:
        return [(f"{op}/{s.name}", s, op, None) for op in operations for s in usable]
    return [(f"{op}/{s.name}/{c}", s, op, c) for op in operations for s in usable for c in classes
            if c in s.stems and not c.startswith("other")]


def draw_eval_triplet(song: Song, operation: str, classes, seconds: float = 5.0, seed: int = 0,
                      dialect: str = "slakh", target: str | None = None) -> Triplet:
    rng = random.Random(f"{seed}:{song.name}:{operation}" + (f":{target}" if target else ""))
    return draw_triplet(rng, song, operation, [c.lower() for c in classes], seconds, dialect, target=target)


def near_silent(x: torch.Tensor, y: torch.Tensor) -> bool:
    """The official rejection: a quiet output, or an edit that changes almost nothing."""
    return bool(y.abs().max() < 0.1 or ((y - x).abs() < 0.01).float().mean() > 0.7)


def normalise(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Divide both by their common peak when it exceeds 1 (the pair keeps its relative levels)."""
    peak = max(float(x.abs().max()), float(y.abs().max()))
    return (x / peak, y / peak) if peak > 1 else (x, y)
