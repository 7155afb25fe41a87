"""The notes of a Standard MIDI File (a Slakh2100 stem's MIDI/Sxx.mid), for the evaluation's note
metrics. Read with mido, behind our own bounds: the file's size is checked before it is read, the
number of notes is capped, and any fault of the file becomes a DatasetError naming it."""
from __future__ import annotations

import io
from pathlib import Path

MAX_MIDI_BYTES = 8 << 20   # Slakh2100's per-stem files are a few KB, its all_src.mid files under 1 MB
MAX_NOTES = 500_000


def read_notes(path) -> list[tuple[float, float, int]]:
    """[(onset s, offset s, MIDI pitch)] of every note on any channel, in time order; a note still
    on at the end of the file ends there."""
    from .data import DatasetError
    try:
        import mido
    except ImportError:
        raise DatasetError("reading MIDI files needs mido: pip install mido") from None
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_MIDI_BYTES:
        raise DatasetError(f"MIDI file {path} is {size} bytes; at most {MAX_MIDI_BYTES} are read")
    try:
        midi = mido.MidiFile(file=io.BytesIO(path.read_bytes()))
        notes, sounding, now = [], {}, 0.0
        for message in midi:  # merged tracks, times in seconds (tempo changes applied)
            now += message.time
            if message.type not in ("note_on", "note_off"):
                continue
            key = (message.channel, message.note)
            if key in sounding:
                notes.append((sounding.pop(key), now, message.note))
            if message.type == "note_on" and message.velocity > 0:
                sounding[key] = now
            if len(notes) + len(sounding) > MAX_NOTES:
                raise DatasetError(f"MIDI file {path} holds more than {MAX_NOTES} notes")
        notes += [(start, now, key[1]) for key, start in sounding.items()]
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the parser trips on, the file is at fault
        raise DatasetError(f"unreadable MIDI file {path}: {type(e).__name__}: {str(e)[:200]}") from None
    if not all(0 <= a <= b < float("inf") for a, b, _ in notes):
        raise DatasetError(f"MIDI file {path} has notes at impossible times")
    return sorted(notes)


def notes_between(paths, start: float, seconds: float) -> list[tuple[float, float, int]]:
    """The notes of `paths` that start within [start, start + seconds), timed from `start`, their
    ends cut there."""
    out = []
    for path in paths:
        out += [(a - start, min(b, start + seconds) - start, p) for a, b, p in read_notes(path)
                if start <= a < start + seconds]
    return sorted(out)
