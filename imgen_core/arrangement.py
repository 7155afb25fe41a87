"""Songs written as notes, a part per instrument, deterministic for a seed: what `imgen
make-dataset` renders into Slakh2100-style stems (synthesis.py, dataset_writer.py).

A song has a tempo (70 to 150 bpm), a key, a mode and a four-bar chord progression repeated; its
parts are drums, bass, piano and guitar in most songs, and sometimes strings, organ, a synth
lead or pad, brass, reed or chromatic percussion, each with a General MIDI program of its class
and a pattern of its kind (grooves, bass lines, comping, strums, arpeggios, pads, melodies).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

# Slakh2100's instrument classes, with General MIDI programs of each that the song may use.
PROGRAMS = {"Bass": (32, 33, 34, 35, 38), "Piano": (0, 1, 2, 4, 5), "Guitar": (24, 25, 26, 27, 29, 30),
            "Strings": (40, 41, 42, 44), "Organ": (16, 17, 18, 19), "Synth Lead": (80, 81, 82),
            "Synth Pad": (88, 89, 90), "Brass": (56, 57, 61), "Reed": (64, 65, 66, 71),
            "Chromatic Percussion": (8, 11, 12, 13)}
CORE = ("Drums", "Bass", "Piano", "Guitar")  # in most songs (each with this chance)
CORE_CHANCE = 0.85
MAX_EXTRAS = 2
MAX_PARTS = len(CORE) + MAX_EXTRAS
EXTRAS = ("Strings", "Organ", "Synth Lead", "Synth Pad", "Brass", "Reed", "Chromatic Percussion")

MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
# Four-bar progressions as scale degrees (0 = the tonic), for each mode.
PROGRESSIONS = {MAJOR: ((0, 4, 5, 3), (0, 5, 3, 4), (1, 4, 0, 5), (0, 3, 4, 3), (0, 3, 0, 4), (5, 3, 0, 4)),
                MINOR: ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4))}
GROOVES = ("rock", "half-time", "four on the floor", "shuffle", "funk")


@dataclass(frozen=True)
class Note:
    pitch: int
    start: float  # seconds
    end: float
    velocity: int


@dataclass(frozen=True)
class Part:
    """One instrument of a song: what becomes one stem."""

    inst_class: str  # Slakh's class name: Drums, Bass, Piano, ...
    program: int     # General MIDI program (0 for drums)
    is_drum: bool
    notes: tuple[Note, ...]


@dataclass(frozen=True)
class Song:
    seed: int
    tempo: float
    key: int          # pitch class of the tonic
    minor: bool
    groove: str
    seconds: float
    parts: tuple[Part, ...]


def arrange(seed: int, seconds: float) -> Song:
    """The song of `seed`, `seconds` long: its parts' notes end by then."""
    rng = random.Random(f"arrangement:{seed}")
    tempo = rng.uniform(70, 150)
    key, minor = rng.randrange(12), rng.random() < 0.4
    scale = MINOR if minor else MAJOR
    groove = rng.choice(GROOVES)
    beat = 60.0 / tempo
    bars = [tuple(rng.choice(PROGRESSIONS[scale]))] * 64
    chords = [(bar * 4 * beat, _triad(key, scale, degree)) for bar, degree in
              enumerate(d for four in bars for d in four) if bar * 4 * beat < seconds]
    classes = [c for c in CORE if rng.random() < CORE_CHANCE]
    classes += rng.sample(EXTRAS, rng.choice((0, 0, 1, 1, MAX_EXTRAS)))
    while len(classes) < 2:  # every song has something to add, remove or extract
        classes.append(rng.choice([c for c in CORE if c not in classes]))
    parts = []
    for cls in classes:
        notes = WRITERS[cls](rng, chords, beat, groove, key, scale)
        notes = _untangled([Note(n.pitch, n.start, min(n.end, seconds), n.velocity) for n in notes
                            if n.start < seconds - 0.05])
        parts.append(Part(cls, 0 if cls == "Drums" else rng.choice(PROGRAMS[cls]), cls == "Drums", notes))
    return Song(seed, tempo, key, minor, groove, seconds, tuple(parts))


def _untangled(notes: list[Note]) -> tuple[Note, ...]:
    """The notes in time order, each ending by the next start of its pitch: MIDI cannot tell
    overlapping notes of one pitch apart (nor can a synthesiser's note-off)."""
    notes = sorted(notes, key=lambda n: (n.pitch, n.start))
    kept = []
    for n, after in zip(notes, notes[1:] + [None]):
        end = min(n.end, after.start) if after is not None and after.pitch == n.pitch else n.end
        if end - n.start >= 0.01:
            kept.append(Note(n.pitch, n.start, end, n.velocity))
    return tuple(sorted(kept, key=lambda n: (n.start, n.pitch)))


def _triad(key: int, scale, degree: int) -> tuple[int, int, int]:
    """Pitch classes of the triad on `degree` of the scale."""
    return tuple((key + scale[(degree + step) % 7]) % 12 for step in (0, 2, 4))


def _pitch(pitch_class: int, low: int) -> int:
    """The first pitch of that class at or above `low`."""
    return low + (pitch_class - low) % 12


def _humanise(rng: random.Random, start: float, velocity: int) -> tuple[float, int]:
    return max(0.0, start + rng.gauss(0, 0.006)), max(20, min(127, velocity + rng.randint(-10, 10)))


def _drums(rng, chords, beat, groove, key, scale):
    """General MIDI drums (kick 36, snare 38, hats 42/46, crash 49, toms 45/48) in the groove."""
    swing = groove == "shuffle"
    notes = []
    for bar, (start, _) in enumerate(chords):
        for eighth in range(8):
            at = start + eighth * beat / 2 + (beat / 6 if swing and eighth % 2 else 0)
            hits = [(42 if not (groove == "funk" and eighth == 7) else 46, 70 if eighth % 2 else 90)]
            kick = {"rock": (0, 4, 5), "half-time": (0, 3), "four on the floor": (0, 2, 4, 6), "shuffle": (0, 4),
                    "funk": (0, 3, 5)}[groove]
            snare = (4,) if groove == "half-time" else (2, 6)
            if eighth in kick:
                hits.append((36, 105))
            if eighth in snare:
                hits.append((38, 100))
            if bar % 4 == 0 and eighth == 0:
                hits.append((49, 100))
            if bar % 4 == 3 and eighth >= 6:  # a fill into the next phrase
                hits = [(48 if eighth == 6 else 45, 95)]
            for pitch, velocity in hits:
                t, v = _humanise(rng, at, velocity)
                notes.append(Note(pitch, t, t + 0.1, v))
    return notes


def _bass(rng, chords, beat, groove, key, scale):
    style = rng.choice(("roots", "eighths", "root-fifth", "walking"))
    notes = []
    for start, chord in chords:
        root = _pitch(chord[0], 28)
        steps = {"roots": [(0, 0, 1.0), (2, 0, 1.0)], "eighths": [(i / 2, 0, 0.45) for i in range(8)],
                 "root-fifth": [(0, 0, 1.5), (1.5, 7, 0.5), (2, 12, 1.0), (3, 7, 0.9)],
                 "walking": [(i, (0, 4 if chord[1] - chord[0] in (4, -8) else 3, 7, 9)[i], 0.9) for i in range(4)]}
        for at, interval, length in steps[style]:
            t, v = _humanise(rng, start + at * beat, 95)
            notes.append(Note(root + interval, t, t + length * beat, v))
    return notes


def _chord_pitches(chord, low: int) -> list[int]:
    root = _pitch(chord[0], low)
    return sorted({root, _pitch(chord[1], root), _pitch(chord[2], root)})


def _piano(rng, chords, beat, groove, key, scale):
    style = rng.choice(("block", "comping", "arpeggio"))
    notes = []
    for start, chord in chords:
        voicing = _chord_pitches(chord, 52) + [_pitch(chord[0], 40)]
        if style == "block":
            hits = [(0, voicing, 3.8)]
        elif style == "comping":
            hits = [(at, voicing[:3], 0.8) for at in (0, 1.5, 2.5)]
        else:
            hits = [(i / 2, [voicing[i % 3] + 12 * (i // 3 % 2)], 0.5) for i in range(8)]
        for at, pitches, length in hits:
            for p in pitches:
                t, v = _humanise(rng, start + at * beat, 80)
                notes.append(Note(p, t, t + length * beat, v))
    return notes


def _guitar(rng, chords, beat, groove, key, scale):
    style = rng.choice(("strum", "arpeggio", "power"))
    notes = []
    for start, chord in chords:
        shape = _chord_pitches(chord, 52) + [_pitch(chord[0], 64)]
        if style == "power":
            root = _pitch(chord[0], 40)
            shape, hits = [root, root + 7, root + 12], [(i / 2, 0.45) for i in range(8)]
        elif style == "strum":
            hits = [(at, 0.9 if at % 1 == 0 else 0.4) for at in (0, 1, 1.5, 2.5, 3)]
        else:
            for i in range(8):
                t, v = _humanise(rng, start + i * beat / 2, 75)
                notes.append(Note(shape[(0, 1, 2, 3, 2, 1, 2, 3)[i]], t, t + beat, v))
            continue
        for at, length in hits:
            for j, p in enumerate(shape):  # a strum: the strings one after another
                t, v = _humanise(rng, start + at * beat + 0.012 * j, 85)
                notes.append(Note(p, t, t + length * beat, v))
    return notes


def _sustained(low: int):
    def write(rng, chords, beat, groove, key, scale):
        notes = []
        for start, chord in chords:
            for p in _chord_pitches(chord, low):
                t, v = _humanise(rng, start, 70)
                notes.append(Note(p, t, t + 4 * beat - 0.02, v))
        return notes
    return write


def _melody(low: int, step: float):
    def write(rng, chords, beat, groove, key, scale):
        notes, degree = [], 0
        for start, chord in chords:
            for i in range(int(4 / step)):
                if rng.random() < 0.2:
                    continue  # a rest
                degree = max(-3, min(9, degree + rng.choice((-2, -1, -1, 0, 1, 1, 2))))
                pitch = _pitch((key + scale[degree % 7]) % 12, low) + 12 * (degree // 7)
                if i == 0:
                    pitch = _pitch(chord[0], low)  # on the downbeat, the chord's root
                t, v = _humanise(rng, start + i * step * beat, 85)
                notes.append(Note(pitch, t, t + step * beat * 0.9, v))
        return notes
    return write


WRITERS = {"Drums": _drums, "Bass": _bass, "Piano": _piano, "Guitar": _guitar, "Strings": _sustained(55),
           "Organ": _sustained(48), "Synth Pad": _sustained(55), "Synth Lead": _melody(72, 0.5),
           "Brass": _melody(60, 1.0), "Reed": _melody(62, 0.5), "Chromatic Percussion": _melody(72, 0.5)}
