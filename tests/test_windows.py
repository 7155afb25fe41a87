"""Songs of any length: windowed editing in token space, and every odd input."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from imgen_core.audio import AudioError, to_model_audio
from imgen_core.cli import main
from imgen_core.generate import generate
from imgen_core.windows import plan_windows


@pytest.mark.parametrize("frames", [1, 2, 249, 250, 251, 400, 499, 3000, 30001])
@pytest.mark.parametrize("window, overlap", [(250, 100), (500, 150), (10, 9)])
def test_plan_covers_everything_with_enough_overlap(frames, window, overlap):
    plan = plan_windows(frames, window, overlap)
    assert plan[0].start == 0 and plan[0].prompt == 0 and plan[-1].end == frames
    for prev, cur in zip(plan, plan[1:]):
        assert cur.start + cur.prompt == prev.end  # generation resumes exactly where it stopped
        assert overlap <= cur.prompt < cur.frames <= window
    assert all(w.frames <= window for w in plan)


def test_bad_window_settings_are_refused(tiny_editor):
    codes = torch.zeros(1, 4, 30, dtype=torch.long)
    with pytest.raises(ValueError, match="window must be from"):
        tiny_editor.edit(codes, "x", window_seconds=11.0)
    with pytest.raises(ValueError, match="overlap must be more than 0 and less than the window"):
        tiny_editor.edit(codes, "x", window_seconds=2.0, overlap_seconds=2.0)


def stereo_song(seconds, sr=44100):
    t = torch.arange(int(seconds * sr)) / sr
    chord = sum(torch.sin(2 * math.pi * f * t) for f in (196.0, 246.9, 293.7)) / 3
    pulse = torch.sin(2 * math.pi * 2 * t).clamp(min=0) ** 8
    return torch.stack([0.4 * chord + 0.3 * pulse, 0.4 * chord - 0.3 * pulse])


def test_sixty_seconds_of_stereo_44k_give_exactly_sixty_seconds(tiny_editor):
    song = stereo_song(60.0)
    codes, source = tiny_editor.encode_source(song, 44100)
    assert codes.shape == (1, 4, 3000)
    seen, steps = [], []
    edited = tiny_editor.edit(codes, tiny_editor.instruction("remove", "drums"), seed=1,
                              progress=lambda d, t: steps.append((d, t)), on_window=lambda w, c: seen.append((w, c)))
    assert edited.shape == codes.shape
    assert len(seen) > 10 and steps[-1][0] == steps[-1][1]
    assert all(a[0] < b[0] for a, b in zip(steps, steps[1:]))  # one progress over all windows
    # every window after the first starts from the tokens already generated over its prompt
    for w, window_codes in seen[1:]:
        assert torch.equal(window_codes[..., :w.prompt], edited[..., w.start:w.start + w.prompt])
    for w, window_codes in seen:
        assert torch.equal(window_codes, edited[..., w.start:w.end])
    out, rate = tiny_editor.decode_to(edited, source, rate="model")
    assert (rate, out.shape) == (32000, (1, 2, 60 * 32000))
    out, rate = tiny_editor.decode_to(edited, source, rate="input", channels="mono")
    assert (rate, out.shape) == (44100, (1, 1, 60 * 44100))
    assert torch.isfinite(out).all()


def test_windows_continue_the_previous_windows_tokens(tiny_editor):
    """The windowed result equals running the decode loop by hand, window after window, each with
    the previous windows' tokens as its prompt and the matching span of the input as condition."""
    codes = tiny_editor.encode(stereo_song(7.0), 44100)
    text = tiny_editor.instruction("add", "piano")
    edited = tiny_editor.edit(codes, text, seed=7, window_seconds=3.0, overlap_seconds=1.0)
    g = torch.Generator().manual_seed(7)
    cond = tiny_editor.text_condition([text], 3.0)
    expected = torch.empty_like(codes)
    for w in plan_windows(codes.shape[-1], 150, 50):
        prompt = expected[..., w.start:w.start + w.prompt] if w.prompt else None
        out = generate(tiny_editor.model, codes[..., w.start:w.end], cond, prompt=prompt, generator=g, top_k=100)
        expected[..., w.start + w.prompt:w.end] = out[..., w.prompt:]
    assert torch.equal(edited, expected)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000, 192000])
def test_any_sample_rate(tiny_editor, rate):
    t = torch.arange(int(0.7 * rate)) / rate
    wav = 0.5 * torch.sin(2 * math.pi * 330 * t)[None]
    out, out_rate = tiny_editor.edit_audio(wav, rate, tiny_editor.instruction("add", "drums"), rate="input")
    assert out_rate == rate and out.shape == (1, 1, int(0.7 * rate))


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_any_channel_count(tiny_editor, channels):
    wav = stereo_song(0.5, 32000)[:1].repeat(channels, 1)
    out, _ = tiny_editor.edit_audio(wav, 32000, tiny_editor.instruction("add", "bass"))
    assert out.shape == (1, channels, 16000)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint8, np.float64, np.float32])
def test_integer_and_float_samples(tiny_editor, dtype):
    x = np.sin(np.linspace(0, 200 * np.pi, 16000))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = (x * (info.max // 2) + (0 if info.min < 0 else info.max // 2)).astype(dtype)
    else:
        x = (0.5 * x).astype(dtype)
    audio, _ = to_model_audio(x, 32000)
    assert 0.4 < audio.abs().max() <= 1.0
    out, _ = tiny_editor.edit_audio(x, 32000, tiny_editor.instruction("remove", "bass"))
    assert out.shape == (1, 1, 16000)


def test_clipping_and_dc_offset_are_handled():
    t = torch.arange(32000) / 32000
    hot = 1.8 * torch.sin(2 * math.pi * 100 * t)[None]  # float beyond full scale
    audio, _ = to_model_audio(hot, 32000)
    assert abs(audio.abs().max().item() - 1.0) < 1e-3
    clipped = (2 * torch.sin(2 * math.pi * 100 * t)).clamp(-1, 1)[None]  # hard-clipped
    assert to_model_audio(clipped, 32000)[0].abs().max() <= 1.0
    offset = 0.6 + 0.2 * torch.sin(2 * math.pi * 100 * t)[None]
    audio, _ = to_model_audio(offset, 32000)
    assert abs(audio.mean().item()) < 1e-4 and audio.abs().max() < 0.25
    with pytest.raises(AudioError, match="silent"):
        to_model_audio(torch.full((1, 32000), 0.5), 32000)  # DC alone carries nothing


def test_silent_stretches_inside_a_song(tiny_editor):
    tone = 0.5 * torch.sin(2 * math.pi * 220 * torch.arange(32000) / 32000)
    wav = torch.cat([tone, torch.zeros(3 * 32000), tone])[None]
    out, _ = tiny_editor.edit_audio(wav, 32000, tiny_editor.instruction("add", "drums"), window_seconds=2.0,
                                    overlap_seconds=0.5)
    assert out.shape == (1, 1, 5 * 32000) and torch.isfinite(out).all()


@pytest.mark.parametrize("samples", [2, 100, 640, 6400, 31999])
def test_clips_shorter_than_a_second(tiny_editor, samples):
    wav = 0.5 * torch.sin(torch.arange(samples) * 0.3 + 1.0)[None]
    out, _ = tiny_editor.edit_audio(wav, 32000, tiny_editor.instruction("extract", "piano"))
    assert out.shape == (1, 1, samples)


def test_a_single_sample_is_refused_as_silent(tiny_editor):
    # one sample minus its mean (the DC offset) is nothing at all
    with pytest.raises(AudioError, match="silent"):
        tiny_editor.edit_audio(torch.tensor([[0.5]]), 32000, tiny_editor.instruction("extract", "piano"))


def test_cli_edits_a_long_file_and_leaves_it_untouched(tmp_path, tiny_files):
    path = tmp_path / "song.flac"
    sf.write(str(path), stereo_song(12.0, 48000).numpy().T, 48000, subtype="PCM_24")
    before = path.read_bytes()
    out = tmp_path / "edited.wav"
    args = ["edit", str(path), "--op", "remove", "--stem", "drums", "-o", str(out), "--rate", "input",
            "--base", str(tiny_files["base"]), "--adapter", str(tiny_files["adapter"]), "--t5", str(tiny_files["t5"]),
            "--encodec", str(tiny_files["encodec"]), "--offline"]
    assert main(args) == 0
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, 12 * 48000)
    assert path.read_bytes() == before
