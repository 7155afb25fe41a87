"""Audio in: checks, conversion to the model's 32 kHz mono, sample types."""
import math

import numpy as np
import pytest
import torch

from imgen_core.audio import AudioError, as_float, to_model_audio
from support import tone


@pytest.mark.parametrize("wav, message", [
    (torch.zeros(1, 0), "empty"),
    (torch.zeros(1, 32000), "silent"),
    (torch.full((1, 32000), float("nan")), "NaN or infinite"),
    (torch.cat([tone(1), torch.full((1, 1), float("inf"))], dim=1), "NaN or infinite"),
    (torch.tensor([[0.5]]), "silent"),  # one sample minus its mean (the DC offset) is nothing at all
])
def test_unusable_audio_is_refused(wav, message):
    with pytest.raises(AudioError, match=message):
        to_model_audio(wav, 32000)


@pytest.mark.parametrize("rate", [0, 100, 2_000_000, 44100.5])
def test_bad_sample_rate_is_refused(rate):
    with pytest.raises(AudioError, match="sample rate must be an integer from 4000 to 768000 Hz"):
        to_model_audio(tone(1), rate)


def test_stereo_44k_becomes_mono_32k():
    wav, source = to_model_audio(tone(1.0, sr=44100, channels=2), 44100)
    assert wav.shape == (1, 1, 32000)
    assert (source.sample_rate, source.channels, source.samples) == (44100, 2, 44100)


def test_integer_samples_are_scaled():
    assert as_float(np.array([-32768, 0, 16384], dtype=np.int16)).tolist() == [-1.0, 0.0, 0.5]


def test_integer_samples_are_scaled_per_type():
    assert as_float(np.array([0, 255], dtype=np.uint8)).tolist() == [-1.0, 0.9921875]
    assert as_float(np.array([-2**31], dtype=np.int32)).tolist() == [-1.0]


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint8, np.float64, np.float32])
def test_integer_and_float_samples(dtype):
    x = np.sin(np.linspace(0, 200 * np.pi, 16000))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = (x * (info.max // 2) + (0 if info.min < 0 else info.max // 2)).astype(dtype)
    else:
        x = (0.5 * x).astype(dtype)
    audio, _ = to_model_audio(x, 32000)
    assert 0.4 < audio.abs().max() <= 1.0


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


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_a_result_beyond_full_scale_is_brought_within_it_never_clipped(tmp_path, subtype):
    """An added stem can sum past full scale (a float result peaked at 2.16). Written against the
    input (preserve rendering): only the edit's changes are scaled, by the least that fits, and
    every sample the edit left alone is the input's; without it (the model's output): one gain
    for all. Never clipped; the caller gets the sentence to say."""
    import soundfile as sf
    from imgen_core.audio import FULL_SCALE, read_recording, write_audio
    source = tmp_path / "in.wav"
    t = torch.arange(48000) / 48000
    song = 0.6 * torch.sin(2 * math.pi * 220 * t)[None].repeat(2, 1)
    sf.write(str(source), song.numpy().T, 48000, subtype=subtype)
    rec = read_recording(source)
    added = torch.zeros_like(rec.wav)
    added[:, 12000:36000] = 1.56 * torch.sin(2 * math.pi * 220 * t[12000:36000])  # in phase: peaks at 2.16
    note = write_audio(tmp_path / "out.wav", rec.wav + added, 48000, like=rec)
    assert note.startswith("the edit went 6.7 dB past full scale: its changes were made") and "everything else kept" in note
    written = torch.from_numpy(sf.read(str(tmp_path / "out.wav"), always_2d=True, dtype="float64")[0].T)
    stored = torch.from_numpy(sf.read(str(source), always_2d=True, dtype="float64")[0].T)
    assert sf.info(str(tmp_path / "out.wav")).subtype == subtype
    assert torch.equal(written[:, :12000], stored[:, :12000]) and torch.equal(written[:, 36000:], stored[:, 36000:])
    loud = added.abs() > 0.1
    ratio = (written - stored).float()[loud] / added[loud]
    assert float(ratio.std()) < 2e-3 and 0.25 < float(ratio.mean()) < 0.3  # one factor on the change: not clipped
    assert written.abs().max() <= 1.0
    # the model's own output, with no input to keep: one gain for all of it
    note = write_audio(tmp_path / "model.wav", rec.wav + added, 48000)
    assert note.startswith("it peaked 6.7 dB over full scale: all of it was made 6.7 dB quieter")
    model = torch.from_numpy(sf.read(str(tmp_path / "model.wav"), always_2d=True)[0].T).float()
    assert FULL_SCALE - 1e-3 <= model.abs().max() <= 1.0
    # within full scale nothing changes
    assert write_audio(tmp_path / "same.wav", rec.wav, 48000, like=rec) is None
    assert (tmp_path / "same.wav").read_bytes()[-1000:] == source.read_bytes()[-1000:]


def test_libsndfiles_does_not_exist_for_a_file_that_exists_becomes_what_it_means():
    from imgen_core.audio import _unreadable
    said = RuntimeError("Error opening '/music/corrupt.wav': File does not exist or is not a regular file "
                        "(possibly a pipe?).")
    assert _unreadable(said) == "its header is damaged, or it is not an audio file"
    assert _unreadable(RuntimeError("Error opening '/music/g.wav': Format not recognised.")) == "Format not recognised"
