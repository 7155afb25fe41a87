"""Encode, Instruct Edit and Decode nodes: audio -> codes -> edited codes -> audio."""
from __future__ import annotations

import torch

from ..imgen_core.audio import SourceInfo
from ..imgen_core.editor import DEFAULT_OVERLAP_SECONDS, DEFAULT_WINDOW_SECONDS
from ..imgen_core.instructions import DIALECTS, OPERATIONS, SLAKH_ALL_STEMS
from . import comfy_glue
from .loader import CATEGORY, MODEL_TYPE

CODES_TYPE = "IMGEN_CODES"
ALL_STEMS = list(dict.fromkeys(list(SLAKH_ALL_STEMS) + [s for d in DIALECTS.values() for s in d["stems"]]))


def codes_value(codes: torch.Tensor, sample_rate: int, frame_rate: float, source: SourceInfo) -> dict:
    """What travels between the nodes: the codes and what decoding needs (the model's rates, the
    length and form of the original input)."""
    return {"codes": codes.detach().cpu(), "sample_rate": sample_rate, "frame_rate": frame_rate,
            "samples": round(source.samples * sample_rate / source.sample_rate), "source": source}


class InstructMusicGenEncode:
    DESCRIPTION = ("Encodes audio to EnCodec tokens. Any sample rate, channel count, batch and length; "
                   "converted to 32 kHz mono (channels averaged, DC offset removed).")
    CATEGORY = CATEGORY
    RETURN_TYPES = (CODES_TYPE,)
    RETURN_NAMES = ("codes",)
    OUTPUT_TOOLTIPS = ("EnCodec tokens with the length and rates that decoding needs.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "From the Instruct-MusicGen loader."}),
            "audio": ("AUDIO", {"tooltip": "The music to edit."}),
        }}

    def encode(self, model, audio):
        editor = model.ready()
        codes, source = editor.encode_source(audio["waveform"], int(audio["sample_rate"]))
        return (codes_value(codes, editor.sample_rate, editor.codec.frame_rate, source),)


class InstructMusicGenEdit:
    DESCRIPTION = ("Edits music by instruction: add, remove or extract a stem. Takes and gives tokens, so edits "
                   "chain (extract then add, remove then add) without decoding in between.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (CODES_TYPE,)
    RETURN_NAMES = ("codes",)
    OUTPUT_TOOLTIPS = ("The edited tokens; decode them or feed another Instruct Edit.",)
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "From the Instruct-MusicGen loader."}),
            "codes": (CODES_TYPE, {"tooltip": "Tokens from Encode or from another Instruct Edit."}),
            "operation": (list(OPERATIONS), {"default": "remove", "tooltip": "add: put the stem in; remove: take it "
                                             "out; extract: keep only the stem."}),
            "stem": (ALL_STEMS, {"default": "drums", "tooltip": "The stem to act on. The released checkpoint knows "
                                 "drums, bass, piano and guitar; others are refused with the valid list."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Random seed; the same seed gives the same result."}),
            "guidance": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 20.0, "step": 0.1,
                                   "tooltip": "Classifier-free guidance on the instruction (3.0 as trained)."}),
            "top_k": ("INT", {"default": 100, "min": 0, "max": 2048, "tooltip": "Sample among the k most likely "
                              "tokens; 0 disables, 1 is greedy."}),
            "temperature": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05,
                                      "tooltip": "Sampling temperature; 0 is greedy."}),
            "window_seconds": ("FLOAT", {"default": DEFAULT_WINDOW_SECONDS, "min": 1.0, "max": 10.0, "step": 0.5,
                                         "tooltip": "Songs are edited window by window; 5 s is what the released "
                                                    "model was trained on."}),
            "overlap_seconds": ("FLOAT", {"default": DEFAULT_OVERLAP_SECONDS, "min": 0.1, "max": 9.0, "step": 0.1,
                                          "tooltip": "How much of the previous window each window re-reads, so "
                                                     "the music continues without seams."}),
        }, "optional": {
            "instruction": ("STRING", {"default": "", "multiline": True, "tooltip": "Advanced: a free-text "
                                       "instruction used instead of operation and stem when not empty."}),
        }}

    def edit(self, model, codes, operation, stem, seed, guidance, top_k, temperature, window_seconds,
             overlap_seconds, instruction=""):
        editor = model.ready()
        text = editor.instruction(operation, stem, instruction.strip() or None)
        edited = editor.edit(codes["codes"], text, seed=seed, guidance=guidance, top_k=top_k,
                             temperature=temperature, window_seconds=window_seconds,
                             overlap_seconds=overlap_seconds, progress=comfy_glue.progress_callback())
        return ({**codes, "codes": edited.cpu()},)


class InstructMusicGenDecode:
    DESCRIPTION = ("Decodes tokens to audio of the input's duration, for Preview Audio or Save Audio: 32 kHz or "
                   "the input's rate; the mono result on every input channel, or mono.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("AUDIO",)
    OUTPUT_TOOLTIPS = ("Audio of the input's duration, at 32 kHz or the input's rate and on the input's channels "
                       "or one, as chosen below.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "From the Instruct-MusicGen loader."}),
            "codes": (CODES_TYPE, {"tooltip": "Tokens from Encode or Instruct Edit."}),
            "sample_rate": (["32000 (model)", "input"], {"default": "32000 (model)",
                            "tooltip": "The model's 32 kHz, or resampled back to the input's rate."}),
            "channels": (["input", "mono"], {"default": "input", "tooltip": "input: the mono result on each of "
                         "the input's channels; mono: one channel."}),
        }}

    def decode(self, model, codes, sample_rate="32000 (model)", channels="input"):
        editor = model.ready()
        rate = "input" if sample_rate == "input" else "model"
        wav, out_rate = editor.decode_to(codes["codes"], codes.get("source"), rate, channels)
        return ({"waveform": wav.float().cpu().contiguous(), "sample_rate": out_rate},)
