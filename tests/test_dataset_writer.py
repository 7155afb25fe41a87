"""`imgen make-dataset`: songs rendered from MIDI, checked as data. The set is read back with a
reader written here from Slakh2100's documented layout (yaml, soundfile, mido), not with the
product's own reader, and every stem is re-rendered from its MIDI file by tinysoundfont's own
MIDI sequencer to check that it was played on the program its metadata names.

The measures of each class's character, with what 24 songs of 8 s (seeds 0 to 2) measured with
FluidR3 GM and with pretty_midi's TimGM6mb (the fallback font):
- drums: spectral flatness (geometric over arithmetic mean of the power spectrum, 40 Hz to
  16 kHz, median over frames) above 0.01 (measured 0.025 to 0.049: broadband) and a crest factor
  of 20 ms RMS frames (loudest over mean) above 4 (measured 6.1 to 17: percussive);
- bass: more than 55% of the energy below 300 Hz (measured 0.85 to 1.0 with FluidR3, 0.59 to
  0.95 with TimGM6mb, whose finger and pick basses are brighter);
- piano and guitar: flatness below 0.005 (measured 0.002 and under) and a pitch strength (the
  highest normalised autocorrelation at lags of 1 ms to 25 ms, median over 93 ms frames) above
  0.45 (measured 0.52 and up): pitched.
"""
from __future__ import annotations

import dataclasses
import io
import json

import mido
import numpy as np
import pytest
import soundfile as sf
import yaml

from support import RENDER_SKIP, render_set

tinysoundfont = pytest.importorskip("tinysoundfont", reason=f"{RENDER_SKIP}: pip install --no-deps tinysoundfont")

SLAKH_TRACK_KEYS = {"UUID", "audio_dir", "lmd_midi_dir", "midi_dir", "normalization_factor", "normalized",
                    "overall_gain", "stems", "target_peak"}
SLAKH_STEM_KEYS = {"audio_rendered", "inst_class", "integrated_loudness", "is_drum", "midi_program_name",
                   "midi_saved", "plugin_name", "program_num"}
RATE = 44100


@pytest.fixture(scope="module")
def font():
    from imgen_core.synthesis import MissingPart, prepare
    try:
        return prepare()
    except MissingPart as e:
        pytest.skip(f"{RENDER_SKIP}: {e}")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, font):
    """Three songs of 8 s written by the command itself."""
    from imgen_core.cli import main
    out = tmp_path_factory.mktemp("made") / "set"
    assert main(["make-dataset", str(out), "--songs", "3", "--seconds", "8", "--seed", "0"]) == 0
    return out


# ------------------------------------------------------------------ an independent Slakh reader

def read_track(track):
    """(metadata, {stem id: int16 samples}, mix as int16), read as a Slakh2100 user would."""
    meta = yaml.safe_load((track / "metadata.yaml").read_text())
    stems = {}
    for sid, info in meta["stems"].items():
        if info["audio_rendered"]:
            data, rate = sf.read(track / meta["audio_dir"] / f"{sid}.flac", dtype="int16")
            assert rate == RATE and data.ndim == 1, f"{track.name}/{sid}: {rate} Hz, shape {data.shape}"
            stems[sid] = data
    mix, rate = sf.read(track / "mix.flac", dtype="int16")
    assert rate == RATE and mix.ndim == 1
    return meta, stems, mix


def assert_mix_is_sum(track):
    _, stems, mix = read_track(track)
    total = np.sum([s.astype(np.int32) for s in stems.values()], axis=0)
    assert total.shape == mix.shape, f"{track.name}: mix of {mix.shape[0]} samples, stems of {total.shape[0]}"
    wrong = np.flatnonzero(total != mix)
    assert wrong.size == 0, f"{track.name}: the mix differs from the sum of the stems at {wrong.size} samples"


def sequencer_render(midi_file, font, samples):
    """The MIDI file played by tinysoundfont's own sequencer (its parser, its program changes)."""
    synth = tinysoundfont.Synth(samplerate=RATE)
    synth.sfload(str(font))
    tinysoundfont.Sequencer(synth).midi_load(str(midi_file))
    return np.frombuffer(synth.generate(samples), dtype=np.float32).reshape(-1, 2).mean(axis=1)


def band_spectrogram(x):
    """Log energy in 39 logarithmic bands from 40 Hz to 16 kHz, frames of 2048 hopping 1024."""
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), 2048)[::1024] * np.hanning(2048)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(2048, 1 / RATE)
    edges = np.geomspace(40, 16000, 40)
    bands = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) for lo, hi in zip(edges, edges[1:])], 1)
    return np.log10(bands + 1e-8)


def timbre_match(a, b) -> float:
    """Correlation of two band spectrograms (1: the same notes on the same instrument). A stem
    re-rendered on its own program scored 0.99 and up; on another program, 0.97 and under (violin
    against viola 0.967, most pairs under 0.95)."""
    a, b = band_spectrogram(a), band_spectrogram(b)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def assert_programs(track, font):
    """Each stem sounds like its own MIDI file played on the program its metadata names."""
    meta, stems, _ = read_track(track)
    for sid, samples in stems.items():
        info = meta["stems"][sid]
        midi = mido.MidiFile(track / meta["midi_dir"] / f"{sid}.mid")
        programs = {m.program for t in midi.tracks for m in t if m.type == "program_change"}
        channels = {m.channel for t in midi.tracks for m in t if m.type == "note_on"}
        assert programs == {info["program_num"]}, f"{track.name}/{sid}: MIDI programs {programs}"
        assert (channels == {9}) == info["is_drum"], f"{track.name}/{sid}: note channels {channels}"
        again = sequencer_render(track / meta["midi_dir"] / f"{sid}.mid", font, len(samples))
        match = timbre_match(samples / 32768, again)
        assert match > 0.98, f"{track.name}/{sid} ({info['inst_class']}, program {info['program_num']}) does " \
                             f"not sound like its MIDI on that program: {match:.3f}"


# ------------------------------------------------------------------ measures of character

def _power(x):
    frames = np.lib.stride_tricks.sliding_window_view(x, 2048)[::1024] * np.hanning(2048)
    return np.abs(np.fft.rfft(frames, axis=1)) ** 2, np.fft.rfftfreq(2048, 1 / RATE)


def flatness(x) -> float:
    power, freqs = _power(x)
    power = power[:, (freqs > 40) & (freqs < 16000)] + 1e-12
    loud = power.sum(1) > 1e-3 * power.sum(1).max()
    return float(np.median(np.exp(np.log(power[loud]).mean(1)) / power[loud].mean(1)))


def crest(x) -> float:
    n = int(0.02 * RATE)
    rms = np.sqrt(np.mean(x[:len(x) // n * n].reshape(-1, n) ** 2, axis=1))
    return float(rms.max() / (rms.mean() + 1e-12))


def low_fraction(x, below=300.0) -> float:
    power, freqs = _power(x)
    return float(power[:, freqs < below].sum() / power.sum())


def pitch_strength(x) -> float:
    n, values = 4096, []
    for start in range(0, len(x) - n, n):
        frame = x[start:start + n]
        if np.sqrt(np.mean(frame ** 2)) < 1e-3 * np.abs(x).max():
            continue
        ac = np.correlate(frame, frame, "full")[n - 1:]
        values.append((ac / (ac[0] + 1e-12))[RATE // 1000:RATE // 40].max())
    return float(np.median(values))


# ------------------------------------------------------------------ the tests

def test_the_set_has_slakhs_layout_and_metadata(rendered, font):
    tracks = sorted(p for p in rendered.iterdir())
    assert [t.name for t in tracks] == ["Track00001", "Track00002", "Track00003"]
    classes = []
    for track in tracks:
        meta, stems, mix = read_track(track)
        assert set(meta) == SLAKH_TRACK_KEYS, track.name
        assert meta["audio_dir"] == "stems" and meta["midi_dir"] == "MIDI" and meta["normalized"] is True
        assert meta["normalization_factor"] == -13.0 and meta["target_peak"] == -1.0 and meta["lmd_midi_dir"] == ""
        assert 0 < meta["overall_gain"] < 1 and len(meta["UUID"]) == 32
        assert sorted(meta["stems"]) == [f"S{i:02d}" for i in range(len(meta["stems"]))]
        assert sorted(p.name for p in (track / "stems").iterdir()) == [f"{s}.flac" for s in sorted(meta["stems"])]
        assert sorted(p.name for p in (track / "MIDI").iterdir()) == [f"{s}.mid" for s in sorted(meta["stems"])]
        all_src = mido.MidiFile(track / "all_src.mid")
        assert {m.program for t in all_src.tracks for m in t if m.type == "program_change"} == \
            {i["program_num"] for i in meta["stems"].values()}
        for sid, info in meta["stems"].items():
            assert set(info) == SLAKH_STEM_KEYS and info["audio_rendered"] and info["midi_saved"]
            assert info["is_drum"] == (info["inst_class"] == "Drums") and info["plugin_name"] == font.name
            assert (info["midi_program_name"] == "Drums") == info["is_drum"]
            peak_db = 20 * np.log10(np.abs(stems[sid]).max() / 32768)
            assert peak_db > -40, f"{track.name}/{sid} is near silent ({peak_db:.1f} dBFS)"
            assert info["integrated_loudness"] == pytest.approx(
                20 * np.log10(np.sqrt(np.mean((stems[sid] / 32768.0) ** 2))), abs=0.01)
            classes.append(info["inst_class"])
        # every stem at one level before the overall gain, as Slakh mixes
        levels = [info["integrated_loudness"] for info in meta["stems"].values()]
        assert max(levels) - min(levels) < 0.1
        assert 20 * np.log10(np.abs(mix).max() / 32767) == pytest.approx(-1.0, abs=0.05)
        assert len(mix) == 8 * RATE
    assert {"Drums", "Bass", "Piano", "Guitar"} <= set(classes) and len(set(classes)) > 4


def test_each_stem_has_the_character_of_its_class(rendered):
    measured = []
    for track in sorted(rendered.iterdir()):
        meta, stems, _ = read_track(track)
        for sid, samples in stems.items():
            x, cls = samples / 32768.0, meta["stems"][sid]["inst_class"]
            where = f"{track.name}/{sid} ({cls})"
            if cls == "Drums":
                assert flatness(x) > 0.01 and crest(x) > 4, f"{where}: flatness {flatness(x)}, crest {crest(x)}"
            elif cls == "Bass":
                assert low_fraction(x) > 0.55, f"{where}: {low_fraction(x):.2f} of its energy below 300 Hz"
            elif cls in ("Piano", "Guitar"):
                assert flatness(x) < 0.005 and pitch_strength(x) > 0.45, \
                    f"{where}: flatness {flatness(x)}, pitch strength {pitch_strength(x)}"
            measured.append(cls)
    assert {"Drums", "Bass", "Piano", "Guitar"} <= set(measured)


def test_the_mix_is_the_sum_of_the_stems_and_each_stem_is_its_midi_on_its_program(rendered, font):
    for track in sorted(rendered.iterdir()):
        assert_mix_is_sum(track)
        assert_programs(track, font)


def test_a_mix_that_is_not_the_sum_of_its_stems_is_caught(rendered, tmp_path):
    import shutil
    track = tmp_path / "Track00001"
    shutil.copytree(rendered / "Track00001", track)
    meta, stems, mix = read_track(track)
    without_one = mix - stems["S01"]  # one stem left out of the mix
    sf.write(track / "mix.flac", without_one, RATE, subtype="PCM_16")
    with pytest.raises(AssertionError, match="differs from the sum of the stems"):
        assert_mix_is_sum(track)
    sf.write(track / "mix.flac", mix // 2 * 2, RATE, subtype="PCM_16")  # off by one in half the samples
    with pytest.raises(AssertionError, match="differs from the sum of the stems"):
        assert_mix_is_sum(track)


def test_a_stem_rendered_with_the_wrong_program_is_caught(tmp_path, font, monkeypatch):
    from imgen_core import dataset_writer, synthesis

    def wrong_for_guitar(part, seconds, font):  # a guitar part played on a piano
        if part.inst_class == "Guitar":
            part = dataclasses.replace(part, program=0)
        return synthesis.render_part(part, seconds, font)
    monkeypatch.setattr(dataset_writer, "render_part", wrong_for_guitar)
    render_set(tmp_path / "set", songs=1, seconds=8.0, seed=0)
    track = tmp_path / "set" / "Track00001"
    assert "Guitar" in {i["inst_class"] for i in read_track(track)[0]["stems"].values()}
    assert_mix_is_sum(track)  # the mix is still the sum of what was rendered
    with pytest.raises(AssertionError, match=r"\(Guitar, program \d+\) does not sound like its MIDI"):
        assert_programs(track, font)


def test_the_same_seed_writes_the_same_files_and_another_seed_other_music(rendered, tmp_path):
    again = render_set(tmp_path / "again", songs=3, seconds=8.0, seed=0)
    files = sorted(p.relative_to(rendered) for p in rendered.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (again / f).read_bytes() == (rendered / f).read_bytes(), f
    other = render_set(tmp_path / "other", songs=3, seconds=8.0, seed=1)
    for name in ("Track00001", "Track00002", "Track00003"):
        mine, theirs = read_track(rendered / name), read_track(other / name)
        assert mine[0]["UUID"] != theirs[0]["UUID"]
        assert not np.array_equal(mine[2], theirs[2])
    described = lambda root: [(i["inst_class"], i["program_num"]) for t in sorted(root.iterdir())  # noqa: E731
                              for i in read_track(t)[0]["stems"].values()]
    assert described(rendered) != described(other)


def test_moisesdb_layout_is_read_back_by_the_product(tmp_path):
    from imgen_core.data import read_songs
    root = render_set(tmp_path / "moises", songs=2, seconds=4.0, seed=3, layout="moisesdb")
    folders = sorted(p for p in root.iterdir())
    assert len(folders) == 2
    for folder in folders:
        data = json.loads((folder / "data.json").read_text())
        for stem in data["stems"]:
            for t in stem["tracks"]:
                audio, rate = sf.read(folder / stem["stemName"] / f"{t['id']}.{t['extension']}")
                assert rate == RATE and np.abs(audio).max() > 0.01
    songs = read_songs("moisesdb", root)
    assert len(songs) == 2 and all(len(s.stems) >= 2 for s in songs)
    assert "drums" in {c for s in songs for c in s.stems}


def test_what_is_missing_is_said_in_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    import sys

    from imgen_core.cli import main
    monkeypatch.setitem(sys.modules, "tinysoundfont", None)  # as on a machine without the package
    assert main(["make-dataset", str(tmp_path / "set"), "--songs", "1", "--seconds", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs tinysoundfont" in err[0] and "pip install --no-deps tinysoundfont" in err[0]
    assert not (tmp_path / "set").exists()


def test_bad_requests_are_refused_before_rendering(tmp_path, capsys):
    from imgen_core.cli import main
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for args, words in (([str(tmp_path / "full")], "already holds files"),
                        ([str(tmp_path / "a"), "--songs", "0"], "--songs must be 1 to 100000"),
                        ([str(tmp_path / "a"), "--seconds", "0.5"], "--seconds 1 to 600"),
                        ([str(tmp_path / "a"), "--font", str(tmp_path / "none.sf2")], "SoundFont not found"),
                        ([str(tmp_path / "a"), "--songs", "100000", "--seconds", "600"], "GB free")):
        assert main(["make-dataset", *args]) == 2
        assert words in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine" and not (tmp_path / "a").exists()


def test_midi_files_are_standard_midi_that_mido_reads(rendered):
    for midi in rendered.rglob("*.mid"):
        parsed = mido.MidiFile(file=io.BytesIO(midi.read_bytes()))
        assert parsed.type == 1 and parsed.length > 1.0


def test_a_part_renders_the_same_whatever_was_rendered_before(font):
    """One synthesiser serves a process (loading a font takes longer than a part): it is brought
    back to a new one's state after each part, so a song does not depend on the songs before it."""
    from imgen_core import synthesis
    from imgen_core.arrangement import arrange
    song, before = arrange(5, 4.0), arrange(7, 4.0)
    synthesis._SYNTHS.clear()
    alone = []
    for part in song.parts:
        synthesis._SYNTHS.clear()
        alone.append(synthesis.render_part(part, 4.0, font))
    for part in before.parts:
        synthesis.render_part(part, 4.0, font)
    after = [synthesis.render_part(part, 4.0, font) for part in song.parts]
    assert all(np.array_equal(a, b) for a, b in zip(alone, after))


def test_the_stereo_mix_of_the_demo_and_the_benchmarks(font):
    """music.py: the same songs, levelled and panned as a mix engineer would; their sum is the song."""
    import torch

    from imgen_core import music
    stems = music.stems(4.0, seed=0, font=font)
    assert {"drums", "bass", "piano", "guitar"} <= set(stems)
    assert all(s.shape == (2, 4 * RATE) for s in stems.values())
    mix = music.song(4.0, seed=0, font=font)
    assert torch.allclose(mix, sum(stems.values()), atol=1e-6) and abs(float(mix.abs().max()) - music.PEAK) < 1e-4
    assert torch.equal(stems["drums"][0], stems["drums"][1])                 # in the middle
    left, right = stems["guitar"].pow(2).sum(1)
    assert left > 2 * right                                                    # guitar to the left
    assert torch.equal(mix, music.song(4.0, seed=0, font=font))                # the same seed, the same song
    assert not torch.equal(mix, music.song(4.0, seed=1, font=font))
    mono48 = music.song(1.0, seed=0, sample_rate=48000, channels=1, font=font)
    assert mono48.shape == (1, 48000)
