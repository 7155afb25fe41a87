"""Render modes and time ranges: what is not asked to change is kept."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from imgen_core import render
from imgen_core.audio import resample
from imgen_core.cli import main
from imgen_core.sampling import Sampling
from imgen_core.synthetic import song
from support import RENDER_SKIP, REPO, tiny_args


@pytest.mark.parametrize("operation", ["remove", "extract"])
def test_remove_and_extract_in_preserve_mode_never_add_energy(tiny_editor, operation):
    """Per channel and per time-frequency bin of the MDCT that the mask multiplies (hop 1024, 2048
    samples at 44.1 kHz), the result's magnitude is at most the input's."""
    wav = song(3.0)
    out, rate = tiny_editor.edit_audio(wav, 44100, tiny_editor.instruction(operation, "drums"))
    assert rate == 44100 and out.shape == (1, 2, wav.shape[-1])
    n = render.stft_size(44100) // 2
    before, after = render.mdct(wav, n).abs(), render.mdct(out[0], n).abs()
    assert (after <= before + 1e-6 * before.max()).all(), float((after - before).max())
    assert (after < before - 1e-3 * before.max()).any()  # and it did take something away


def test_add_in_preserve_mode_is_centred_and_keeps_the_original(tiny_editor):
    wav = song(3.0)
    out, _ = tiny_editor.edit_audio(wav, 44100, tiny_editor.instruction("add", "piano"))
    added = out[0] - wav
    assert added.abs().max() > 1e-3
    assert torch.allclose(added[0], added[1], atol=1e-6)  # the same on both channels: the stereo image kept


def test_model_rendering_is_the_models_output_as_before(tiny_editor):
    wav, text = song(3.0), tiny_editor.instruction("remove", "bass")
    out, rate = tiny_editor.edit_audio(wav, 44100, text, Sampling(seed=3), render="model")
    edited = tiny_editor.edit_codes(tiny_editor.encode(wav, 44100).codes, text, Sampling(seed=3))
    assert rate == 32000 and torch.equal(out, tiny_editor.decode(edited).expand(-1, 2, -1))


def test_each_range_fades_over_its_own_length():
    """A range with a long fade leaves the next range's short fade as it was."""
    w = render.fade_curve(1000, 100, [(1.0, 2.0, 0.5), (6.0, 7.0, 0.05)])
    t = torch.arange(1000) / 100
    assert (w[(t > 0.55) & (t < 0.95)] > 0).all()  # the first range fades in over 0.5 s
    assert (w[(t > 5.0) & (t < 5.94)] == 0).all() and w[(t > 5.95) & (t < 6.0)].gt(0).all()  # the second over 0.05 s
    assert (w[(t >= 6.0) & (t <= 7.0)] == 1).all() and (w[t > 7.06] == 0).all()


def test_a_range_regenerates_only_its_frames(tiny_editor):
    take = tiny_editor.encode(song(6.0), 44100)
    codes = take.codes
    edited = tiny_editor.edit(take, tiny_editor.instruction("remove", "drums"), start=3.0, end=4.0, fade=0.05).codes
    first, last = take.span(3.0, 4.0, 0.05)
    assert 0 < first < 3.0 * 50 - 50 and 4.0 * 50 < last < codes.shape[-1]
    assert torch.equal(edited[..., :first], codes[..., :first]) and torch.equal(edited[..., last:], codes[..., last:])
    assert not torch.equal(edited[..., first:last], codes[..., first:last])


@pytest.mark.parametrize("fmt, subtype, channels, rate, mode", [
    ("WAV", "PCM_16", 2, 44100, "preserve"),
    ("WAV", "PCM_16", 1, 48000, "model"),
    ("WAV", "FLOAT", 2, 48000, "preserve"),
    ("WAV", "FLOAT", 1, 44100, "model"),
    ("FLAC", "PCM_16", 1, 44100, "preserve"),
    ("FLAC", "PCM_24", 2, 48000, "model"),
])
def test_outside_the_range_every_sample_is_the_inputs(tmp_path, tiny_files, fmt, subtype, channels, rate, mode):
    ext = ".wav" if fmt == "WAV" else ".flac"
    wav = resample(song(4.0, 1, channels=channels).double(), 44100, rate)
    src, out = tmp_path / f"in{ext}", tmp_path / f"out{ext}"
    sf.write(str(src), wav.numpy().T, rate, format=fmt, subtype=subtype)
    start, end, fade = 1.5, 2.5, 0.05
    assert main(["edit", str(src), "--op", "remove", "--stem", "drums", "-o", str(out), "--render", mode,
                 "--start", str(start), "--end", str(end), "--fade", str(fade), *tiny_args(tiny_files)]) == 0
    kind = {"PCM_16": "int16", "PCM_24": "int32", "FLOAT": "float32"}[subtype]
    before, _ = sf.read(str(src), dtype=kind, always_2d=True)
    after, out_rate = sf.read(str(out), dtype=kind, always_2d=True)
    assert sf.info(str(out)).subtype == subtype and out_rate == rate and after.shape == before.shape
    t = np.arange(len(before)) / rate
    outside = (t < start - fade) | (t > end + fade)
    assert np.array_equal(after[outside], before[outside])
    inside = (t > start) & (t < end)
    assert not np.array_equal(after[inside], before[inside])


def test_range_and_render_refusals_are_one_line(tmp_path, tiny_files, capsys):
    src = tmp_path / "in.wav"
    sf.write(str(src), song(2.0).numpy().T, 44100)
    for extra, says in ([["--start", "1.5", "--end", "1.0"], "0 <= start < end <= 2.00 s"],
                        [["--end", "9"], "0 <= start < end <= 2.00 s"],
                        [["--rate", "32000"], "--rate and --channels apply to --render model over the whole song"],
                        [["--render", "model", "--start", "0.5", "--channels", "mono"], "--rate and --channels"],
                        [["--render", "preserve", "--instruction", "make it jazzy"],
                         "needs to know every operation applied (add, remove or extract); an edit by free-text "
                         "instruction, or no edit, can only be rendered as the model's output (mode 'model') "
                         "(use --render model)"]):
        what = [] if "--instruction" in extra else ["--op", "remove", "--stem", "bass"]
        assert main(["edit", str(src), *what, "-o", str(tmp_path / "o.wav"), *extra, *tiny_args(tiny_files)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert says in err[-1] and "Traceback" not in "\n".join(err), err
    assert not (tmp_path / "o.wav").exists()


def test_render_modes_on_the_oracle_with_music_and_with_tones():
    """benchmarks/render_fidelity.py (an oracle in the model's place) on two short songs of each
    material. On rendered music preserve's mask leaves what overlapping stems share, whatever
    the oracle's errors: its remove result hardly changes from errors at -25 dB to -5 dB, where
    model rendering loses what the errors take; so preserve wins remove only once the model's
    errors are large, and always wins add. On sparse synthetic tones it wins all three (see
    README, "Render modes")."""
    materials = "rendered,synthetic" if render_available() else "synthetic"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "render_fidelity.py"), "--songs", "2",
                          "--seconds", "3", "--material", materials, "--noise-db=-25,-5"],
                         capture_output=True, text=True, timeout=600, check=True)
    results = json.loads(run.stdout.splitlines()[-1])

    def by_op(material, db):
        return {r["operation"]: r for r in results[material][db]["summary"]}
    synthetic = by_op("synthetic", "-25")
    gain = {op: r["preserve_si_sdr"] - r["model_si_sdr"] for op, r in synthetic.items()}
    assert gain["remove"] > 6 and gain["add"] > 6 and gain["extract"] > 1, gain
    if "rendered" not in results:
        pytest.skip(f"{RENDER_SKIP}: only the synthetic material was measured")
    low, high = by_op("rendered", "-25"), by_op("rendered", "-5")
    assert abs(low["remove"]["preserve_si_sdr"] - high["remove"]["preserve_si_sdr"]) < 2
    assert low["remove"]["model_si_sdr"] - high["remove"]["model_si_sdr"] > 8
    assert high["remove"]["preserve_si_sdr"] > high["remove"]["model_si_sdr"] + 3
    assert all(r["add"]["preserve_si_sdr"] > r["add"]["model_si_sdr"] for r in (low, high))
    per_stem = results["rendered"]["-25"]["per_stem"]
    assert {(r["operation"], r["stem"]) for r in per_stem} == {(op, stem) for op in ("remove", "extract", "add")
                                                               for stem in ("drums", "bass", "piano", "guitar")}


def render_available() -> bool:
    from imgen_core.synthesis import MissingPart, prepare
    try:
        prepare()
    except MissingPart:
        return False
    return True


@pytest.mark.parametrize("operation, ranged", [("remove", False), ("add", False), ("extract", True)])
def test_a_song_rendered_in_segments_is_the_song_rendered_whole(tiny_editor, monkeypatch, operation, ranged):
    """Memory follows the segment, not the song; the result is the same to the last bit (every
    frame is computed with its full context, the mask's floor from the whole song)."""
    wav = song(7.0, seed=4)
    span = {"start": 2.5, "end": 5.0} if ranged else {}
    take = tiny_editor.edit(tiny_editor.encode(wav, 44100), tiny_editor.instruction(operation, "bass"),
                            Sampling(seed=2), **span)
    monkeypatch.setattr(render, "SEGMENT_SECONDS", 1.5)
    assert len(render._segments(wav.shape[-1], 44100)) == 5
    segmented, _ = tiny_editor.render(take)
    monkeypatch.setattr(render, "SEGMENT_SECONDS", 1000.0)
    whole, _ = tiny_editor.render(take)
    assert torch.equal(segmented, whole)
    assert not torch.equal(whole, wav[None])


def test_the_mdct_by_fft_is_the_orthonormal_transform():
    """Against the definition, computed directly: X[k] = sqrt(2/n) sum w[t] x[t] cos(pi/n (t + 1/2
    + n/2)(k + 1/2)); and the inverse gives the signal back."""
    n = 16
    x = torch.randn(3, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.arange(2 * n, dtype=torch.float64)
    window = torch.sin(np.pi * (t + 0.5) / (2 * n))
    basis = (2 / n) ** 0.5 * torch.cos(np.pi / n * (t[:, None] + 0.5 + n / 2) * (torch.arange(n) + 0.5))
    frames = torch.nn.functional.pad(x, (n, n + (-200) % n)).unfold(-1, 2 * n, n)
    assert torch.allclose(render.mdct(x, n), (frames * window) @ basis, atol=1e-12)
    assert torch.allclose(render.imdct(render.mdct(x, n), n, 200), x, atol=1e-12)
