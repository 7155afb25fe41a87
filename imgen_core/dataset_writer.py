"""`imgen make-dataset`: multitrack songs written in Slakh2100's layout (or MoisesDB's), rendered
here from the arrangements of arrangement.py by synthesis.py. Deterministic for a seed.

Slakh2100's layout, as its readers expect it:

    TrackNNNNN/metadata.yaml     stems: {Sxx: {inst_class, is_drum, program_num, midi_program_name,
                                  audio_rendered, midi_saved, plugin_name, integrated_loudness}}, ...
    TrackNNNNN/stems/Sxx.flac    each part alone: mono, 44.1 kHz, 16-bit
    TrackNNNNN/MIDI/Sxx.mid      its notes
    TrackNNNNN/all_src.mid       every part's notes
    TrackNNNNN/mix.flac          the sum of the stems, sample for sample

Levels follow Slakh2100's recipe: every stem is brought to the same level (NORMALIZATION dB; an RMS
level here, where Slakh measures ITU-R BS.1770 loudness), then all are scaled by one gain
(`overall_gain`) so that the mix peaks at TARGET_PEAK dB; the mix is the integer sum of the
16-bit stems, so it equals their sum exactly. The songs have no Lakh source: `lmd_midi_dir` is
empty.
"""
from __future__ import annotations

import io
import json
import math
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from .arrangement import MAX_PARTS, Part, Song, arrange
from .files import replacing
from .synthesis import SAMPLE_RATE, prepare, render_part

LAYOUTS = ("slakh", "moisesdb")
NORMALIZATION = -13.0  # dB: every stem's level before the overall gain (Slakh's normalization_factor)
TARGET_PEAK = -1.0     # dB: the mix's peak (Slakh's target_peak)
MOISESDB_STEMS = {"Drums": "drums", "Bass": "bass", "Piano": "piano", "Guitar": "guitar", "Strings": "bowed_strings",
                  "Brass": "wind", "Reed": "wind", "Chromatic Percussion": "percussion", "Organ": "other_keys",
                  "Synth Lead": "other_keys", "Synth Pad": "other_keys"}


def song_seed(seed: int, index: int) -> int:
    return zlib.crc32(f"{seed}:{index}".encode())


def make_dataset(out, songs: int, seconds: float, seed: int = 0, layout: str = "slakh", font=None,
                 progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write `songs` songs of `seconds` into the new or empty folder `out`; returns their folders."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if not (isinstance(songs, int) and 1 <= songs <= 100_000) or not 1 <= seconds <= 600:
        raise ValueError(f"--songs must be 1 to 100000 and --seconds 1 to 600, got {songs} and {seconds}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already holds files; make-dataset writes into a new or empty folder")
    font = prepare(font)
    _check_space(out, songs, seconds)
    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for i in range(songs):
        song = arrange(song_seed(seed, i), seconds)
        stems, gain = mixed([render_part(p, seconds, font) for p in song.parts])
        if layout == "slakh":
            folders.append(write_slakh_track(out, i, song, stems, gain, font.name))
        else:
            folders.append(write_moisesdb_track(out, i, song, stems))
        if progress is not None:
            progress(i + 1, songs)
    return folders


def _check_space(out: Path, songs: int, seconds: float):
    """Refuse, before rendering, a set that cannot fit on the disk (at most MAX_PARTS stems and a
    mix per song, 16-bit, counted uncompressed)."""
    need = songs * (MAX_PARTS + 1) * seconds * SAMPLE_RATE * 2
    where = next(p for p in (out, *out.parents) if p.exists())
    free = shutil.disk_usage(where).free
    if need > free:
        raise OSError(f"{songs} songs of {seconds:g} s may need up to {need / 1e9:.1f} GB and {where} has "
                      f"{free / 1e9:.1f} GB free; ask for fewer songs or seconds")


def mixed(audio: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """(the stems as int16, each at NORMALIZATION dB times one gain, their sum peaking at
    TARGET_PEAK dB; that gain). A silent part stays silent."""
    level = 10 ** (NORMALIZATION / 20)
    levelled = []
    for x in audio:
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        levelled.append(x.astype(np.float64) * (level / rms if rms > 1e-6 else 0.0))
    peak = float(np.abs(np.sum(levelled, axis=0)).max()) or 1.0
    gain = 10 ** (TARGET_PEAK / 20) / peak
    return [np.round(x * gain * 32767).astype(np.int16) for x in levelled], gain


def _loudness(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (Slakh gives an integrated loudness here)."""
    rms = float(np.sqrt(np.mean((x / 32768.0) ** 2)))
    return round(20 * math.log10(rms), 2) if rms > 0 else -120.0


def _program_name(part: Part) -> str:
    import pretty_midi
    return "Drums" if part.is_drum else pretty_midi.program_to_instrument_name(part.program)


def _midi(song: Song, parts) -> bytes:
    import pretty_midi
    pm = pretty_midi.PrettyMIDI(initial_tempo=song.tempo)
    for part in parts:
        instrument = pretty_midi.Instrument(program=part.program, is_drum=part.is_drum, name=part.inst_class)
        instrument.notes = [pretty_midi.Note(n.velocity, n.pitch, n.start, n.end) for n in part.notes]
        pm.instruments.append(instrument)
    buffer = io.BytesIO()
    pm.write(buffer)
    return buffer.getvalue()


def _uuid(song: Song, *where) -> uuid.UUID:
    """An identifier that is a function of the song's seed and its place (deterministic)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"imgen make-dataset {song.seed} {' '.join(map(str, where))}")


def _write(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as f:
        f.write(data)


def _audio(path: Path, samples: np.ndarray):
    """16-bit mono at SAMPLE_RATE, FLAC or WAV by the name."""
    import soundfile as sf
    buffer = io.BytesIO()
    sf.write(buffer, samples, SAMPLE_RATE, format="FLAC" if path.suffix == ".flac" else "WAV", subtype="PCM_16")
    _write(path, buffer.getvalue())


def write_slakh_track(out: Path, index: int, song: Song, stems: list[np.ndarray], gain: float, font: str) -> Path:
    track = out / f"Track{index + 1:05d}"
    meta = {"UUID": _uuid(song, index).hex, "audio_dir": "stems", "lmd_midi_dir": "", "midi_dir": "MIDI",
            "normalization_factor": NORMALIZATION, "normalized": True, "overall_gain": gain, "stems": {},
            "target_peak": TARGET_PEAK}
    for j, (part, samples) in enumerate(zip(song.parts, stems)):
        sid = f"S{j:02d}"
        meta["stems"][sid] = {"audio_rendered": True, "inst_class": part.inst_class,
                              "integrated_loudness": _loudness(samples), "is_drum": part.is_drum,
                              "midi_program_name": _program_name(part), "midi_saved": True, "plugin_name": font,
                              "program_num": part.program}
        _audio(track / "stems" / f"{sid}.flac", samples)
        _write(track / "MIDI" / f"{sid}.mid", _midi(song, [part]))
    _write(track / "all_src.mid", _midi(song, song.parts))
    _audio(track / "mix.flac", np.sum([s.astype(np.int32) for s in stems], axis=0).astype(np.int16))
    _write(track / "metadata.yaml", yaml.safe_dump(meta, sort_keys=True).encode())
    return track


def write_moisesdb_track(out: Path, index: int, song: Song, stems: list[np.ndarray]) -> Path:
    track_id = _uuid(song, index)
    folder = out / str(track_id)
    entries: dict[str, list] = {}
    for j, (part, samples) in enumerate(zip(song.parts, stems)):
        name = MOISESDB_STEMS[part.inst_class]
        part_id = str(_uuid(song, index, j))
        entries.setdefault(name, []).append({"id": part_id, "extension": "wav", "trackType": _program_name(part)})
        _audio(folder / name / f"{part_id}.wav", samples)
    data = {"song": f"Song {index + 1}", "artist": "imgen make-dataset", "genre": song.groove,
            "stems": [{"stemName": name, "tracks": tracks} for name, tracks in entries.items()]}
    _write(folder / "data.json", json.dumps(data, indent=1).encode())
    return folder
