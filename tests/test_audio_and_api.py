"""The public API on audio: conversion, refusals, lengths."""
import math

import numpy as np
import pytest
import torch

from imgen_core.audio import AudioError, as_float, to_model_audio


def tone(seconds, sr=32000, channels=1, freq=440.0):
    t = torch.arange(int(seconds * sr)) / sr
    return (0.5 * torch.sin(2 * math.pi * freq * t)).repeat(channels, 1)


@pytest.mark.parametrize("wav, message", [
    (torch.zeros(1, 0), "empty"),
    (torch.zeros(1, 32000), "silent"),
    (torch.full((1, 32000), float("nan")), "NaN or infinite"),
    (torch.cat([tone(1), torch.full((1, 1), float("inf"))], dim=1), "NaN or infinite"),
])
def test_unusable_audio_is_refused(tiny_editor, wav, message):
    with pytest.raises(AudioError, match=message):
        tiny_editor.encode(wav, 32000)


@pytest.mark.parametrize("rate", [0, 100, 2_000_000, 44100.5])
def test_bad_sample_rate_is_refused(tiny_editor, rate):
    with pytest.raises(AudioError, match="sample rate must be an integer from 4000 to 768000 Hz"):
        tiny_editor.encode(tone(1), rate)


def test_stereo_44k_becomes_mono_32k():
    wav, source = to_model_audio(tone(1.0, sr=44100, channels=2), 44100)
    assert wav.shape == (1, 1, 32000)
    assert (source.sample_rate, source.channels, source.samples) == (44100, 2, 44100)


def test_integer_samples_are_scaled():
    assert as_float(np.array([-32768, 0, 16384], dtype=np.int16)).tolist() == [-1.0, 0.0, 0.5]


def test_edit_audio_keeps_the_duration_and_is_finite(tiny_editor):
    text = tiny_editor.instruction("extract", "bass")
    out, rate = tiny_editor.edit_audio(tone(1.3, sr=48000, channels=2), 48000, text, seed=0)
    assert rate == 48000 and out.shape == (1, 2, round(1.3 * 48000))  # default (preserve): the input's form
    assert torch.isfinite(out).all()
    out, rate = tiny_editor.edit_audio(tone(1.3, sr=48000, channels=2), 48000, text, render="model", seed=0)
    assert rate == 32000 and out.shape == (1, 2, round(1.3 * 32000))  # model: mono result on each channel
    assert torch.equal(out[:, 0], out[:, 1]) and torch.isfinite(out).all()
    out, rate = tiny_editor.edit_audio(tone(1.3, sr=48000, channels=2), 48000, text, render="model", rate="input",
                                       channels="mono")
    assert rate == 48000 and out.shape == (1, 1, round(1.3 * 48000))


def test_encode_edit_decode_batch(tiny_editor):
    wav = torch.stack([tone(0.5, freq=330.0), tone(0.5, freq=550.0)])  # [2, 1, T]
    codes = tiny_editor.encode(wav, 32000)
    assert codes.shape == (2, 4, 25)
    texts = [tiny_editor.instruction("add", "drums"), tiny_editor.instruction("remove", "piano")]
    steps = []
    edited = tiny_editor.edit(codes, texts, seed=3, progress=lambda done, total: steps.append((done, total)))
    assert edited.shape == codes.shape
    assert steps[-1] == (25 + 3, 25 + 3)  # one step per frame plus the codebook delays
    assert tiny_editor.decode(edited).shape == (2, 1, 25 * 640)


def test_integer_samples_are_scaled_per_type():
    assert as_float(np.array([0, 255], dtype=np.uint8)).tolist() == [-1.0, 0.9921875]
    assert as_float(np.array([-2**31], dtype=np.int32)).tolist() == [-1.0]


def test_cancel_from_progress_stops_generation(tiny_editor):
    codes = tiny_editor.encode(tone(1.0), 32000)

    class Cancelled(Exception):
        pass

    def progress(done, total):
        if done == 3:
            raise Cancelled
    with pytest.raises(Cancelled):
        tiny_editor.edit(codes, tiny_editor.instruction("add", "drums"), progress=progress)
    # the model is left usable
    assert tiny_editor.edit(codes[..., :5], tiny_editor.instruction("add", "drums")).shape == (1, 4, 5)


def test_loading_reports_each_part(tiny_files):
    from imgen_core.editor import Editor
    stages = []
    Editor.from_pretrained(tiny_files["base"], tiny_files["adapter"], tiny_files["t5"], tiny_files["encodec"],
                           device="cpu", offline=True, progress=lambda *a: stages.append(a))
    assert stages == [("loading", 0, 3), ("loading", 1, 3), ("loading", 2, 3), ("loading", 3, 3)]
