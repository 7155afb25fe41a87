"""Notes heard in audio, for the evaluation's note metrics: Spotify's basic-pitch note model (the
ONNX file inside the `basic-pitch` wheel, Apache-2.0) run by onnxruntime, without TensorFlow or
basic-pitch's own Python code.

The model takes 22,050 Hz mono in windows of 43,844 samples and gives, per window, 172 frames of
onset and note activations over the 88 piano keys (A0 = MIDI 21). Windows overlap by 30 frames;
half of the overlap is dropped at each side and the rest joined, as its authors run it. Notes are
read from the activations here: an onset peak of at least ONSET starts a note, which lasts while
the note activation stays at or above FRAME (gaps of up to GAP frames bridged) and is kept when
it lasts at least MIN_FRAMES.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

RATE = 22050
WINDOW = 43844
HOP_SAMPLES = 256                 # one frame
FRAMES = 172                      # per window
OVERLAP_FRAMES = 30
HOP = WINDOW - OVERLAP_FRAMES * HOP_SAMPLES
KEPT = FRAMES - OVERLAP_FRAMES    # frames of each window joined
LOWEST = 21                       # MIDI pitch of the first of the 88 bins
ONSET, FRAME, GAP, MIN_FRAMES = 0.5, 0.3, 11, 11
MODEL_IN_WHEEL = ("saved_models", "icassp_2022", "nmp.onnx")
INPUT, NOTE, ONSET_OUT = "serving_default_input_2:0", "StatefulPartitionedCall:1", "StatefulPartitionedCall:2"
MAX_MODEL_BYTES = 4 << 20         # the file is 230 KB


class Unavailable(Exception):
    """The note model cannot run here; the message says what to install."""


def model_file() -> Path:
    """The ONNX note model inside the installed basic-pitch package (found without importing
    it: its own imports want TensorFlow or librosa)."""
    spec = importlib.util.find_spec("basic_pitch")
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable("basic-pitch is not installed; pip install --no-deps basic-pitch onnxruntime mir_eval")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*MODEL_IN_WHEEL)
    if not path.is_file() or path.stat().st_size > MAX_MODEL_BYTES:
        raise Unavailable(f"basic-pitch's note model is not at {path}; reinstall: pip install --no-deps basic-pitch")
    return path


class NoteModel:
    """`notes(wav, rate)`: the notes heard in mono audio, as [(onset s, offset s, MIDI pitch)]."""

    def __init__(self):
        try:
            import onnxruntime
        except ImportError:
            raise Unavailable("onnxruntime is not installed; pip install onnxruntime") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # the same numbers on any machine load
        self.session = onnxruntime.InferenceSession(str(model_file()), options, providers=["CPUExecutionProvider"])

    def activations(self, wav: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
        """(onset, note) activations [frames, 88] at RATE / HOP_SAMPLES frames per second."""
        from .audio import resample
        import torch
        x = resample(torch.as_tensor(np.asarray(wav, dtype=np.float32)), rate, RATE).numpy()
        half = OVERLAP_FRAMES * HOP_SAMPLES // 2
        x = np.concatenate([np.zeros(half, np.float32), x])
        starts = range(0, len(x), HOP)
        windows = np.stack([np.pad(x[s:s + WINDOW], (0, max(0, s + WINDOW - len(x)))) for s in starts])
        note, onset = self.session.run([NOTE, ONSET_OUT], {INPUT: windows[:, :, None]})
        keep = slice(OVERLAP_FRAMES // 2, FRAMES - OVERLAP_FRAMES // 2)
        frames = int((len(x) - half) / HOP_SAMPLES)
        join = lambda a: a[:, keep].reshape(-1, a.shape[-1])[:frames]  # noqa: E731
        return join(onset), join(note)

    def notes(self, wav: np.ndarray, rate: int) -> list[tuple[float, float, int]]:
        onset, note = self.activations(wav, rate)
        return decode(onset, note)


def frame_time(k):
    """The time (s) of joined frame k: window k // KEPT, frame k % KEPT + OVERLAP_FRAMES // 2 of
    it, which starts HOP samples after the one before (a window's frames step 256 samples, and
    KEPT of them span 188 samples more than HOP)."""
    k = np.asarray(k)
    return (k * HOP_SAMPLES - (KEPT * HOP_SAMPLES - HOP) * (k // KEPT)) / RATE


def decode(onset: np.ndarray, note: np.ndarray) -> list[tuple[float, float, int]]:
    """Notes from onset and note activations [frames, 88], in time order."""
    peaks = (onset >= ONSET) & (onset >= np.roll(onset, 1, 0)) & (onset > np.roll(onset, -1, 0))
    peaks[0] &= onset[0] > onset[1] if len(onset) > 1 else True
    out = []
    for key in range(onset.shape[1]):
        starts = np.flatnonzero(peaks[:, key])
        for i, start in enumerate(starts):
            until = starts[i + 1] if i + 1 < len(starts) else len(note)
            end, quiet = start + 1, 0
            while end < until and quiet <= GAP:
                quiet = quiet + 1 if note[end, key] < FRAME else 0
                end += 1
            end -= quiet
            if end - start >= MIN_FRAMES:
                out.append((float(frame_time(start)), float(frame_time(end)), key + LOWEST))
    return sorted(out)
