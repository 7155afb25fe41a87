"""The public API: encode a song to a Take, edit takes, render a take; any rate, channels, length."""
import numpy as np
import pytest
import torch

from imgen_core import render
from imgen_core.audio import AudioError
from imgen_core.sampling import Sampling
from imgen_core.synthetic import song
from support import tone


def test_edit_audio_keeps_the_duration_and_is_finite(tiny_editor):
    text = tiny_editor.instruction("extract", "bass")
    out, rate = tiny_editor.edit_audio(tone(1.3, sr=48000, channels=2), 48000, text)
    assert rate == 48000 and out.shape == (1, 2, round(1.3 * 48000))  # default (preserve): the input's form
    assert torch.isfinite(out).all()
    out, rate = tiny_editor.edit_audio(tone(1.3, sr=48000, channels=2), 48000, text, render="model")
    assert rate == 32000 and out.shape == (1, 2, round(1.3 * 32000))  # model: mono result on each channel
    assert torch.equal(out[:, 0], out[:, 1]) and torch.isfinite(out).all()
    out, rate = tiny_editor.edit_audio(tone(1.3, sr=48000, channels=2), 48000, text, render="model", rate="input",
                                       channels="mono")
    assert rate == 48000 and out.shape == (1, 1, round(1.3 * 48000))


def test_a_render_setting_that_cannot_apply_is_refused_before_anything_is_generated(tiny_editor):
    steps = []
    with pytest.raises(AudioError, match="a rate or channel choice applies only to the model's output") as e:
        tiny_editor.edit_audio(tone(1.0), 32000, tiny_editor.instruction("remove", "bass"), rate=48000,
                               progress=lambda done, total: steps.append(done))
    assert e.value.setting == "rate" and steps == []
    with pytest.raises(ValueError, match="preserve rendering needs to know every operation") as e:
        tiny_editor.edit_audio(tone(1.0), 32000, "make it jazzy", render="preserve",
                               progress=lambda done, total: steps.append(done))
    assert e.value.setting == "mode" and steps == []


def test_encode_edit_decode_batch(tiny_editor):
    wav = torch.stack([tone(0.5, freq=330.0), tone(0.5, freq=550.0)])  # [2, 1, T]
    take = tiny_editor.encode(wav, 32000)
    assert take.codes.shape == (2, 4, 25)
    texts = [tiny_editor.instruction("add", "drums"), tiny_editor.instruction("remove", "piano")]
    steps = []
    edited = tiny_editor.edit(take, texts, Sampling(seed=3), progress=lambda done, total: steps.append((done, total)))
    assert edited.codes.shape == take.codes.shape
    assert edited.operations == (None,)  # two operations in one edit: only the model's output can render it
    assert steps[-1] == (25 + 3, 25 + 3)  # one step per frame plus the codebook delays
    assert tiny_editor.decode(edited.codes).shape == (2, 1, 25 * 640)
    audio, rate = tiny_editor.render(edited)
    assert rate == 32000 and audio.shape == (2, 1, 16000)


def test_cancel_from_progress_stops_generation(tiny_editor):
    take = tiny_editor.encode(tone(1.0), 32000)

    class Cancelled(Exception):
        pass

    def progress(done, total):
        if done == 3:
            raise Cancelled
    with pytest.raises(Cancelled):
        tiny_editor.edit(take, tiny_editor.instruction("add", "drums"), progress=progress)
    # the model is left usable
    assert tiny_editor.edit_codes(take.codes[..., :5], tiny_editor.instruction("add", "drums")).shape == (1, 4, 5)


def test_loading_reports_each_part(tiny_files):
    from imgen_core.editor import Editor
    stages = []
    Editor.from_pretrained(tiny_files["base"], tiny_files["adapter"], tiny_files["t5"], tiny_files["encodec"],
                           device="cpu", offline=True, progress=lambda *a: stages.append(a))
    assert stages == [("loading", 0, 3), ("loading", 1, 3), ("loading", 2, 3), ("loading", 3, 3)]


def test_a_take_carries_what_rendering_needs_through_chained_edits(tiny_editor):
    """Two edits of two time ranges, then preserve rendering: the take keeps the original, its
    codes, both operations and both ranges, and rendering uses each of them."""
    wav = song(4.0, seed=2)
    take = tiny_editor.encode(wav, 44100)
    first = tiny_editor.edit(take, tiny_editor.instruction("remove", "drums"), Sampling(seed=1), start=1.0, end=2.0)
    second = tiny_editor.edit(first, tiny_editor.instruction("add", "bass"), Sampling(seed=2), start=2.5, end=3.0,
                              fade=0.1)
    assert second.operations == ("remove", "add")
    assert second.ranges == ((1.0, 2.0, 0.05), (2.5, 3.0, 0.1))
    assert torch.equal(second.original, wav[None]) and torch.equal(second.original_codes, take.codes)
    assert (second.source.sample_rate, second.source.channels, second.source.samples) == (44100, 2, wav.shape[-1])
    audio, rate = tiny_editor.render(second)
    edited, recon = (render.at_rate(tiny_editor.decode(c)[0, 0], 32000, 44100, wav.shape[-1])
                     for c in (second.codes, take.codes))
    expected = render.in_input_form(wav, 44100, edited, recon, operations=("remove", "add"),
                                    ranges=((1.0, 2.0, 0.05), (2.5, 3.0, 0.1)))
    assert rate == 44100 and torch.equal(audio[0], expected)
    t = torch.arange(wav.shape[-1]) / 44100
    outside = (t < 0.95) | ((t > 2.05) & (t < 2.4)) | (t > 3.1)
    assert torch.equal(audio[..., outside], wav[None][..., outside])
    assert not torch.equal(audio[..., (t > 1.0) & (t < 2.0)], wav[None][..., (t > 1.0) & (t < 2.0)])
    # a whole-song edit after them: the ranges no longer bound anything
    whole = tiny_editor.edit(second, tiny_editor.instruction("remove", "piano"), Sampling(seed=3))
    assert whole.ranges is None and whole.operations == ("remove", "add", "remove")


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000, 192000])
def test_any_sample_rate(tiny_editor, rate):
    wav = tone(0.7, sr=rate, freq=330.0)
    out, out_rate = tiny_editor.edit_audio(wav, rate, tiny_editor.instruction("add", "drums"))
    assert out_rate == rate and out.shape == (1, 1, int(0.7 * rate))


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_any_channel_count(tiny_editor, channels):
    wav = song(0.5, sample_rate=32000)[:1].repeat(channels, 1)
    out, _ = tiny_editor.edit_audio(wav, 32000, tiny_editor.instruction("add", "bass"))
    assert out.shape == (1, channels, 16000)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float64])
def test_integer_and_float_samples_are_edited(tiny_editor, dtype):
    x = np.sin(np.linspace(0, 200 * np.pi, 16000))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = (x * (info.max // 2) + (0 if info.min < 0 else info.max // 2)).astype(dtype)
    out, _ = tiny_editor.edit_audio(x.astype(dtype), 32000, tiny_editor.instruction("remove", "bass"))
    assert out.shape == (1, 1, 16000)


def test_silent_stretches_inside_a_song(tiny_editor):
    beep = tone(1.0)
    wav = torch.cat([beep, torch.zeros(1, 3 * 32000), beep], dim=-1)
    out, _ = tiny_editor.edit_audio(wav, 32000, tiny_editor.instruction("add", "drums"),
                                    Sampling(window_seconds=2.0, overlap_seconds=0.5))
    assert out.shape == (1, 1, 5 * 32000) and torch.isfinite(out).all()


@pytest.mark.parametrize("samples", [2, 100, 640, 6400, 31999])
def test_clips_shorter_than_a_second(tiny_editor, samples):
    wav = 0.5 * torch.sin(torch.arange(samples) * 0.3 + 1.0)[None]
    out, _ = tiny_editor.edit_audio(wav, 32000, tiny_editor.instruction("extract", "piano"))
    assert out.shape == (1, 1, samples)


def test_the_items_of_a_batch_each_get_what_editing_them_alone_gives(tiny_editor):
    """A batch of clips (ComfyUI's Batch of clips) under one instruction: each item draws from its
    own generator, so each gets the tokens it gets alone, whatever its batch mates."""
    clips = [tone(0.8, freq=f) for f in (220.0, 330.0, 495.0)]
    text, sampling = tiny_editor.instruction("remove", "drums"), Sampling(seed=4)
    together = tiny_editor.edit(tiny_editor.encode(torch.stack(clips), 32000), text, sampling).codes
    for i, clip in enumerate(clips):
        alone = tiny_editor.edit(tiny_editor.encode(clip, 32000), text, sampling).codes
        assert torch.equal(together[i:i + 1], alone), i
    assert not torch.equal(together[0], together[1])


def test_the_readmes_python_example_runs_and_saves_its_result(tmp_path, tiny_files, monkeypatch):
    """The README's Python block as written, on the tiny model (its weights named where the
    block loads the released ones) and a song in place of song.wav."""
    import re
    import soundfile as sf
    from support import REPO, stem_audio, STEM_RATE
    block = re.search(r"## Python\n\n```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    assert "Editor.from_pretrained()" in block and "sf.write(" in block
    tiny = ", ".join(f"{k}={str(tiny_files[k])!r}" for k in ("base", "adapter", "t5", "encodec"))
    monkeypatch.chdir(tmp_path)
    sf.write("song.wav", (stem_audio("drums", 2.0, 0) + stem_audio("piano", 2.0, 1)) / 2, STEM_RATE)
    exec(compile(block.replace("Editor.from_pretrained()", f"Editor.from_pretrained({tiny})"), "README", "exec"), {})
    info = sf.info("bass_and_drums.wav")
    assert (info.samplerate, info.channels) == (STEM_RATE, 1) and abs(info.frames - 2 * STEM_RATE) < 2
