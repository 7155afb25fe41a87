"""Encode, Instruct Edit and Decode nodes: audio -> codes -> edited codes -> audio."""
from __future__ import annotations

import math

from ..imgen_core.audio import fit_full_scale
from ..imgen_core.errors import setting_of
from ..imgen_core.instructions import DIALECTS, OPERATIONS, SLAKH_ALL_STEMS, default_stems
from ..imgen_core.render import RENDER_MODES
from ..imgen_core.sampling import Sampling
from ..imgen_core.take import DEFAULT_FADE_SECONDS
from . import comfy_glue
from .loader import CATEGORY, MODEL_TYPE

# What travels between Encode, Instruct Edit and Decode: an imgen_core Take (the codes, and what
# rendering needs of the input they came from and of the edits made).
CODES_TYPE = "IMGEN_CODES"
RELEASED_STEMS = default_stems("slakh")  # what the released checkpoint was trained on
OTHER_STEM = " (other checkpoints)"
# the released checkpoint's stems first, then those other checkpoints may know, marked as such
STEM_CHOICES = list(RELEASED_STEMS) + [s + OTHER_STEM for s in dict.fromkeys(
    list(SLAKH_ALL_STEMS) + [s for d in DIALECTS.values() for s in d["stems"]]) if s not in RELEASED_STEMS]
SAMPLING = Sampling()


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

    @comfy_glue.plain_errors
    def encode(self, model, audio):
        wav, rate = audio["waveform"], int(audio["sample_rate"])
        # (the sizes only say how much room to ask for; encode checks the audio itself)
        batch, seconds = (wav.shape[0] if wav.dim() == 3 else 1), (wav.shape[-1] / rate if wav.dim() and rate > 0 else 0)
        editor = model.ready(batch, seconds=seconds)
        return (editor.encode(wav, rate, progress=comfy_glue.progress_callback()),)


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
            "stem": (STEM_CHOICES, {"default": "drums", "tooltip": "The stem to act on. The released checkpoint "
                                    "knows drums, bass, piano and guitar (listed first); the others are for "
                                    "checkpoints trained on them. A stem the loaded checkpoint does not know stops "
                                    "the run at this node, before any generation, naming the stems it knows."}),
            "seed": ("INT", {"default": SAMPLING.seed, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "control_after_generate": True,
                             "tooltip": "Random seed; the same seed gives the same result."}),
            "guidance": ("FLOAT", {"default": SAMPLING.guidance, "min": 0.0, "max": 20.0, "step": 0.1,
                                   "tooltip": f"Classifier-free guidance on the instruction ({SAMPLING.guidance} "
                                              f"as trained)."}),
            "top_k": ("INT", {"default": SAMPLING.top_k, "min": 0, "max": 2048,
                              "tooltip": "Sample among the k most likely tokens; 0 disables, 1 is greedy."}),
            "temperature": ("FLOAT", {"default": SAMPLING.temperature, "min": 0.0, "max": 5.0, "step": 0.05,
                                      "tooltip": "Sampling temperature; 0 is greedy."}),
            "window_seconds": ("FLOAT", {"default": SAMPLING.window_seconds, "min": 1.0, "max": 10.0, "step": 0.5,
                                         "tooltip": f"Songs are edited window by window; "
                                                    f"{SAMPLING.window_seconds:g} s is what the released model was "
                                                    f"trained on."}),
            "overlap_seconds": ("FLOAT", {"default": SAMPLING.overlap_seconds, "min": 0.1, "max": 9.0, "step": 0.1,
                                          "tooltip": "How much of the previous window each window re-reads, so "
                                                     "the music continues without seams."}),
        }, "optional": {
            "instruction": ("STRING", {"default": "", "multiline": True, "tooltip": "Advanced: a free-text "
                                       "instruction used instead of operation and stem when not empty."}),
            "start_seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 86400.0, "step": 0.1,
                                        "tooltip": "Edit only from here (seconds). With start and end both 0 "
                                                   "the whole song is edited."}),
            "end_seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 86400.0, "step": 0.1,
                                      "tooltip": "Edit only up to here (seconds); 0 means the end of the song. "
                                                 "Outside the range the song is kept sample for sample."}),
            "fade_seconds": ("FLOAT", {"default": DEFAULT_FADE_SECONDS, "min": 0.0, "max": 5.0, "step": 0.01,
                                       "tooltip": "Cross-fade at each end of the range."}),
        }}

    @comfy_glue.plain_errors
    def edit(self, model, codes, operation, stem, seed, guidance, top_k, temperature, window_seconds,
             overlap_seconds, instruction="", start_seconds=0.0, end_seconds=0.0, fade_seconds=DEFAULT_FADE_SECONDS):
        for name, value in (("start_seconds", start_seconds), ("end_seconds", end_seconds),
                            ("fade_seconds", fade_seconds)):
            if not math.isfinite(value):  # NaN passes ComfyUI's min/max checks
                raise ValueError(f"{name} must be a finite number of seconds, got {value}")
        sampling = Sampling(guidance=guidance, top_k=top_k, temperature=temperature, window_seconds=window_seconds,
                            overlap_seconds=overlap_seconds, seed=seed)
        editor = model.ready(codes.codes.shape[0], sampling)
        text = editor.instruction(operation, stem.removesuffix(OTHER_STEM), instruction.strip() or None)
        ranged = start_seconds > 0 or end_seconds > 0  # both 0: the whole song
        span = {"start": start_seconds, "end": end_seconds or None, "fade": fade_seconds} if ranged else {}
        return (editor.edit(codes, text, sampling, progress=comfy_glue.progress_callback(), **span),)


class InstructMusicGenDecode:
    DESCRIPTION = ("Decodes tokens to audio of the input's duration, for Preview Audio or Save Audio. preserve "
                   "(the default for add, remove and extract) applies the edit to the original at its own rate and "
                   "channels, keeping what was not asked to change; model gives the model's 32 kHz mono output.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("AUDIO",)
    OUTPUT_TOOLTIPS = ("Audio of the input's duration: with preserve rendering or a time range at the input's "
                       "rate and on the input's channels; with model rendering as chosen below.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "From the Instruct-MusicGen loader."}),
            "codes": (CODES_TYPE, {"tooltip": "Tokens from Encode or Instruct Edit."}),
            "sample_rate": (["32000 (model)", "input"], {"default": "input",
                            "tooltip": "For model rendering of the whole song: the model's 32 kHz, or resampled "
                                       "back to the input's rate. preserve and time ranges give the input's rate."}),
            "channels": (["input", "mono"], {"default": "input", "tooltip": "For model rendering of the whole song: "
                         "the mono result on each of the input's channels, or one channel. preserve and time "
                         "ranges give the input's channels."}),
        }, "optional": {
            "render": (list(RENDER_MODES), {"default": "auto", "tooltip": "preserve: the edit applied to the "
                       "original, at its rate and on its channels (sample_rate and channels then do not apply); "
                       "model: the model's output; auto: preserve for add, remove and extract, model for a "
                       "free-text instruction."}),
        }}

    @comfy_glue.plain_errors
    def decode(self, model, codes, sample_rate="input", channels="input", render="auto"):
        if not codes.operations and render == "auto":
            # a graph missing its edit: only EnCodec's copy of the input would come back
            raise ValueError("these tokens were not edited, so only EnCodec's copy of the input would come back: "
                             "connect an Instruct Edit between Encode and Decode (or set render to model to hear "
                             "that copy on purpose)")
        editor = model.ready(codes.codes.shape[0], seconds=codes.codes.shape[-1] / codes.frame_rate)
        try:
            # sample_rate and channels shape the model's output over the whole song; elsewhere the
            # result has the input's form (see the tooltips)
            form = {} if codes.in_input_form(render) else {"rate": "input" if sample_rate == "input" else "model",
                                                            "channels": channels}
            wav, rate = editor.render(codes, render, **form)
        except ValueError as e:
            if setting_of(e) == "mode":
                raise type(e)(f"{e}; set render to model") from None
            raise
        wav = wav.float().cpu()
        same = codes.original.shape == wav.shape and rate == codes.source.sample_rate
        wav, note = fit_full_scale(wav, codes.original.float() if same else None)  # savers clip past full scale
        if note is not None:
            print(f"[Instruct-MusicGen] {note}", flush=True)
        return ({"waveform": wav.contiguous(), "sample_rate": rate},)
