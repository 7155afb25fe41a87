"""Audio file nodes: load from ComfyUI's input folder, save to its output folder."""
from __future__ import annotations

import hashlib
import math
import os

from ..imgen_core.audio import AudioError, read_audio, write_audio
from . import comfy_glue
from .loader import CATEGORY

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus", ".m4a")
# The frontend's audio player, declared as core audio nodes get it: its upload button needs the
# player on the same node, and an output node shows what it saved in it. The frontend never sends
# it to the server, and ComfyUI versions without it show an unconnected optional input.
PLAYER = {"audioUI": ("AUDIO_UI", {"tooltip": "Player."})}


def _input_path(name: str) -> str:
    """The file's path, refusing anything outside the input folder."""
    root = os.path.realpath(comfy_glue.input_directory())
    path = os.path.realpath(comfy_glue.annotated_path(name))
    if os.path.commonpath([root, path]) != root:
        raise ValueError(f"{name!r} is outside the input folder; only files in {root} can be loaded")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file {name!r} not found in the input folder {root}")
    return path


class InstructMusicGenLoadAudio:
    DESCRIPTION = "Loads an audio file from ComfyUI's input folder (or an upload), optionally a part of it."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("AUDIO",)
    OUTPUT_TOOLTIPS = ("The audio at its own sample rate and channel count.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        root = comfy_glue.input_directory()
        files = sorted(f for f in os.listdir(root) if f.lower().endswith(AUDIO_EXTENSIONS)
                       and os.path.isfile(os.path.join(root, f))) if os.path.isdir(root) else []
        return {"required": {
            "audio": (files, {"audio_upload": True, "tooltip": "An audio file in the input folder."}),
            "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100000.0, "step": 0.01,
                                "tooltip": "Where to start, in seconds."}),
            "duration": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100000.0, "step": 0.01,
                                   "tooltip": "How many seconds to load; 0 loads to the end."}),
        }, "optional": PLAYER}

    # Only `audio` is named here: ComfyUI checks the inputs a VALIDATE_INPUTS does not take
    # against their min and max (start and duration), and skips those it takes.
    @classmethod
    def VALIDATE_INPUTS(cls, audio):
        try:
            _input_path(audio)
        except (ValueError, FileNotFoundError) as e:
            return str(e)
        return True

    @classmethod
    def IS_CHANGED(cls, audio, start, duration, **_player):
        h = hashlib.sha256()
        with open(_input_path(audio), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return f"{h.hexdigest()}:{start}:{duration}"

    @comfy_glue.plain_errors
    def load(self, audio, start, duration, **_player):
        for name, value in (("start", start), ("duration", duration)):
            if not (math.isfinite(value) and value >= 0):  # NaN passes ComfyUI's min/max checks
                raise ValueError(f"{name} must be a finite number of seconds, at least 0; got {value}")
        path = _input_path(audio)
        try:
            wav, sr = read_audio(path)
        except AudioError as e:  # name the file as the user picked it, not by its server path
            raise AudioError(str(e).replace(path, audio)) from None
        first = int(round(start * sr))
        if first >= wav.shape[-1]:
            raise ValueError(f"start {start} s is past the end of {audio!r} ({wav.shape[-1] / sr:.2f} s long)")
        last = wav.shape[-1] if duration <= 0 else min(wav.shape[-1], first + int(round(duration * sr)))
        return ({"waveform": wav[None, :, first:last].contiguous(), "sample_rate": sr},)


class InstructMusicGenSaveAudio:
    DESCRIPTION = ("Saves audio as 16-bit WAV files in the output folder, numbered, never overwriting. "
                   "Core Save Audio does the same in FLAC where it exists.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "audio": ("AUDIO", {"tooltip": "The audio to save."}),
            "filename_prefix": ("STRING", {"default": "audio/instruct_musicgen",
                                           "tooltip": "File name prefix, may include a sub-folder."}),
        }, "optional": PLAYER}

    @comfy_glue.plain_errors
    def save(self, audio, filename_prefix, **_player):
        folder, name, counter, subfolder, _ = comfy_glue.save_path(filename_prefix)
        results = []
        waveform = audio["waveform"]
        for item in waveform:
            while os.path.exists(os.path.join(folder, f"{name}_{counter:05}_.wav")):
                counter += 1
            filename = f"{name}_{counter:05}_.wav"
            write_audio(os.path.join(folder, filename), item.float(), int(audio["sample_rate"]))
            results.append({"filename": filename, "subfolder": subfolder, "type": "output"})
            counter += 1
        return {"ui": {"audio": results}}
