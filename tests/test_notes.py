"""The note metrics' two halves: reference notes read from MIDI files (bounded, refused with our
error), and notes heard in audio by basic-pitch's ONNX model (timed right across its windows)."""
import numpy as np
import pytest

from imgen_core.data import DatasetError
from support import RENDER_SKIP

mido = pytest.importorskip("mido", reason="reading MIDI needs mido: pip install mido")


def write_midi(path, notes, ticks_per_beat=480, tempo=500_000):
    """A one-track file of (onset s, offset s, pitch) at `tempo` (microseconds per beat)."""
    events = sorted([(a, "note_on", p) for a, b, p in notes] + [(b, "note_off", p) for a, b, p in notes],
                    key=lambda e: (e[0], e[1] == "note_on"))
    track, now = [mido.MetaMessage("set_tempo", tempo=tempo)], 0
    for at, kind, pitch in events:
        tick = round(at * 1e6 / tempo * ticks_per_beat)
        track.append(mido.Message(kind, note=pitch, velocity=90 if kind == "note_on" else 0, time=tick - now))
        now = tick
    midi = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    midi.tracks.append(mido.MidiTrack(track))
    midi.save(path)
    return path


def test_midi_notes_are_read_in_seconds_and_cropped(tmp_path):
    from imgen_core.midi_file import notes_between, read_notes
    notes = [(0.0, 0.5, 60), (0.25, 1.0, 64), (1.5, 2.5, 67), (3.0, 3.2, 72)]
    path = write_midi(tmp_path / "a.mid", notes, tempo=400_000)
    assert [(round(a, 3), round(b, 3), p) for a, b, p in read_notes(path)] == notes
    assert [(round(a, 3), round(b, 3), p) for a, b, p in notes_between([path], 1.0, 2.0)] == [(0.5, 1.5, 67), (2.0, 2.0, 72)]


def test_the_notes_of_a_rendered_stem_are_its_arrangement(rendered_slakh):
    from imgen_core.arrangement import arrange
    from imgen_core.dataset_writer import song_seed
    from imgen_core.midi_file import read_notes
    song = arrange(song_seed(0, 0), 8.0)
    for j, part in enumerate(song.parts):
        read = read_notes(rendered_slakh / "Track00001" / "MIDI" / f"S{j:02d}.mid")
        assert len(read) == len(part.notes)
        by_pitch = lambda notes: sorted(notes, key=lambda n: (n[2], n[0]))  # noqa: E731
        for (a, b, p), n in zip(by_pitch(read), by_pitch([(n.start, n.end, n.pitch) for n in part.notes])):
            assert p == n[2] and abs(a - n[0]) < 0.003 and abs(b - n[1]) < 0.003  # a tick of 220 per beat


def test_hostile_midi_files_are_refused_with_our_error(tmp_path):
    from imgen_core.midi_file import MAX_MIDI_BYTES, read_notes
    big = tmp_path / "big.mid"
    with open(big, "wb") as f:
        f.truncate(MAX_MIDI_BYTES + 1)
    good = write_midi(tmp_path / "good.mid", [(0.0, 1.0, 60)]).read_bytes()
    cases = {"big.mid": None, "zero_ticks.mid": good[:12] + b"\x00\x00" + good[14:], "cut.mid": good[:30],
             "not_midi.mid": b"RIFF" + bytes(40), "empty.mid": b""}
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(DatasetError, match=r"MIDI file .*" + name.replace(".", r"\.")):
            read_notes(tmp_path / name)


@pytest.fixture(scope="module")
def note_model():
    from imgen_core.transcription import NoteModel, Unavailable
    try:
        return NoteModel()
    except Unavailable as e:
        pytest.skip(f"note model unavailable: {e}")


def played(notes, seconds, program=0):
    """`notes` played on a General MIDI program by the renderer of make-dataset, mono 44.1 kHz."""
    from imgen_core.arrangement import Note, Part
    from imgen_core.synthesis import MissingPart, prepare, render_part
    try:
        font = prepare()
    except MissingPart as e:
        pytest.skip(f"{RENDER_SKIP}: {e}")
    return render_part(Part("Piano", program, False, tuple(Note(p, a, b, 90) for a, b, p in notes)), seconds, font)


def test_notes_are_timed_right_across_the_models_windows(note_model):
    # onsets spread over five of the model's 1.64 s windows, each window's frames joined
    notes = [(0.3 + 1.13 * i, 0.3 + 1.13 * i + 0.6, 60 + 2 * i) for i in range(7)]
    heard = note_model.notes(played(notes, 8.6), 44100)
    for a, _, p in notes:
        onsets = [h[0] for h in heard if h[2] == p]
        assert onsets and min(abs(o - a) for o in onsets) < 0.03, (a, p, onsets)


def test_note_scores_of_a_rendered_stem_and_of_silence(note_model, rendered_slakh):
    import soundfile as sf
    import yaml

    from imgen_core.metrics import note_scores
    from imgen_core.midi_file import read_notes
    track = rendered_slakh / "Track00001"
    meta = yaml.safe_load((track / "metadata.yaml").read_text())
    piano = next(s for s, i in meta["stems"].items() if i["inst_class"] == "Piano")
    audio, rate = sf.read(track / "stems" / f"{piano}.flac", dtype="float32")
    reference = read_notes(track / "MIDI" / f"{piano}.mid")
    right = note_scores(reference, note_model.notes(audio, rate))
    assert right["note_recall"] > 0.8 and right["note_f1"] > 0.6, right
    late = note_scores(reference, note_model.notes(np.concatenate([np.zeros(rate // 5, np.float32), audio]), rate))
    assert late["note_f1"] < 0.2 * right["note_f1"], late  # 200 ms late: no onset within 50 ms
    assert note_model.notes(np.zeros(3 * rate, np.float32), rate) == []
    assert note_scores(reference, [])["note_f1"] == 0.0
