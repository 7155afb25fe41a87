"""The public API: encode audio to codes, edit codes by instruction, decode codes to audio.

    editor = Editor.from_pretrained()                 # downloads once, then works offline
    codes = editor.encode(wav, sample_rate)           # any rate, channels, length
    edited = editor.edit(codes, editor.instruction("remove", "drums"), seed=0)
    audio = editor.decode(edited)                     # [B, 1, T] at editor.sample_rate
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import instructions
from . import render as rendering
from .audio import AudioError, SourceInfo, as_batch, from_model_audio, to_model_audio
from .codec import Codec
from .loader import load_editor, pick_device, pick_dtype
from .model import InstructMusicGen
from .quant import Int8Linear
from .text import TextEncoder
from .windows import edit_windowed

DEFAULT_BASE = "facebook/musicgen-large"
DEFAULT_ADAPTER = "ldzhangyx/instruct-MusicGen"
DEFAULT_T5 = "t5-base"
DEFAULT_ENCODEC = "facebook/encodec_32khz"
# The released model was trained on 5 s crops: its position embeddings beyond 5 s are untrained.
DEFAULT_WINDOW_SECONDS = 5.0
DEFAULT_OVERLAP_SECONDS = 2.0
DEFAULT_FADE_SECONDS = 0.05
# A time range is regenerated from this long before it (the model settles into the edit, as a
# window does over its overlap) to a little after it (so decoding has no edge inside the fade).
RANGE_CONTEXT_SECONDS = 2.0
RANGE_TAIL_SECONDS = 0.5


class Editor:
    """One loaded Instruct-MusicGen with its text encoder and audio codec."""

    def __init__(self, model: InstructMusicGen, text_encoder: TextEncoder, codec: Codec,
                 dialect: str = "slakh", stems=None):
        if model.fusion is None:
            raise ValueError("the model has no fusion modules: load an Instruct-MusicGen adapter")
        if codec.card != model.lm_cfg.card or codec.n_q != model.lm_cfg.n_q:
            raise ValueError(f"codec ({codec.n_q} codebooks of {codec.card}) does not match the LM "
                             f"({model.lm_cfg.n_q} of {model.lm_cfg.card})")
        if text_encoder.dim != model.lm_cfg.text_dim:
            raise ValueError(f"text encoder width {text_encoder.dim} does not match the LM's text "
                             f"projection input {model.lm_cfg.text_dim}")
        self.model, self.text_encoder, self.codec = model, text_encoder, codec
        self.dialect = dialect
        self.stems = tuple(stems or instructions.default_stems(dialect))

    @classmethod
    def from_pretrained(cls, base: str = DEFAULT_BASE, adapter: str = DEFAULT_ADAPTER, t5: str = DEFAULT_T5,
                        encodec: str = DEFAULT_ENCODEC, device: str = "auto", dtype: str = "auto",
                        offline: bool | None = None, merge_lora: bool = True,
                        progress: Callable[[str, int, int], None] | None = None) -> "Editor":
        """Load from local paths or Hugging Face ids. `adapter` is our safetensors file, the official
        `finetuned.ckpt` (converted once and cached), or a repo holding either. `merge_lora` folds
        LoRA into the projections for faster inference (keep it apart to train further).
        `progress(stage, done, total)`: stage "converting" (bytes of the adapter written, first use
        of an official checkpoint only), then "loading" (parts loaded of 3: LM, T5, EnCodec)."""
        return load_editor(base, adapter, t5, encodec, device=device, dtype=dtype, offline=offline,
                           merge_lora=merge_lora, progress=progress)

    def to(self, device: str = "auto", dtype: str = "auto") -> "Editor":
        dev = pick_device(device)
        if dtype == "int8" and not any(isinstance(m, Int8Linear) for m in self.model.modules()):
            raise ValueError("int8 weights are chosen when loading: Editor.from_pretrained(..., dtype='int8')")
        self.model.to(device=dev, dtype=pick_dtype(dtype, dev))
        self.text_encoder.to(dev)
        self.codec.model.to(dev)
        return self

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def max_frames(self) -> int:
        return self.model.fusion.cfg.max_frames

    def instruction(self, operation: str | None = None, stem: str | None = None, text: str | None = None) -> str:
        """The checkpoint's instruction for (operation, stem), or `text` used as is."""
        if text:
            return instructions.free_text(text)
        if operation is None or stem is None:
            raise instructions.InstructionError("give an operation and a stem, or a free-text instruction")
        return instructions.render(operation, stem, self.dialect, self.stems)

    def encode_source(self, wav, sample_rate: int) -> tuple[torch.Tensor, SourceInfo]:
        """Waveform [T], [C, T] or [B, C, T] at any rate, of any length -> codes [B, K, frames]
        and what the input was (rate, channels, length) for `decode_to`."""
        audio, source = to_model_audio(wav, sample_rate, self.sample_rate)
        return self.codec.encode(audio), source

    def encode(self, wav, sample_rate: int) -> torch.Tensor:
        return self.encode_source(wav, sample_rate)[0]

    def text_condition(self, texts: list[str], guidance: float | None) -> torch.Tensor:
        hidden, mask = self.text_encoder(texts)
        cond = self.model.text_condition(hidden.to(self.model.device), mask.to(self.model.device))
        if guidance is None:
            return cond
        return torch.cat([cond, torch.zeros_like(cond)], dim=0)  # null text: all zeros, same length

    def window_frames(self, window_seconds: float, overlap_seconds: float) -> tuple[int, int]:
        rate = self.codec.frame_rate
        window = round(window_seconds * rate)
        overlap = round(overlap_seconds * rate)
        if not 2 <= window <= self.max_frames:
            raise ValueError(f"window must be from {2 / rate:.2f} to {self.max_frames / rate:.0f} s, got {window_seconds}")
        if not 0 < overlap < window:
            raise ValueError(f"overlap must be more than 0 and less than the window ({window_seconds} s), "
                             f"got {overlap_seconds}")
        return window, overlap

    def edit(self, codes: torch.Tensor, instruction: str | list[str], *, seed: int = 0,
             guidance: float | None = 3.0, top_k: int = 100, temperature: float = 1.0, top_p: float = 0.0,
             window_seconds: float = DEFAULT_WINDOW_SECONDS, overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
             start: float | None = None, end: float | None = None, fade: float = DEFAULT_FADE_SECONDS,
             progress: Callable[[int, int], None] | None = None, on_window=None) -> torch.Tensor:
        """Edited codes [B, K, frames], any length, window by window (see windows.py); one
        instruction for all items or one per item. With `start` and/or `end` (seconds), only the
        frames of that range (with its fades and some context, see `span`) are regenerated; the
        others are returned as given."""
        if codes.dim() != 3 or codes.shape[-1] == 0:
            raise ValueError(f"codes must be [batch, codebooks, frames] with frames > 0, got {list(codes.shape)}")
        b = codes.shape[0]
        texts = [instruction] * b if isinstance(instruction, str) else list(instruction)
        if len(texts) != b:
            raise ValueError(f"{len(texts)} instructions for a batch of {b}")
        texts = [instructions.free_text(t) for t in texts]
        window, overlap = self.window_frames(window_seconds, overlap_seconds)
        first, last = self.span(codes.shape[-1], start, end, fade)
        generator = torch.Generator(device=self.model.device).manual_seed(int(seed))
        edited = edit_windowed(self.model, codes[..., first:last].to(self.model.device),
                               self.text_condition(texts, guidance), window=window, overlap=overlap,
                               progress=progress, on_window=on_window, cfg_coef=guidance, temperature=temperature,
                               top_k=top_k, top_p=top_p, generator=generator)
        if (first, last) == (0, codes.shape[-1]):
            return edited.cpu()
        out = codes.clone().cpu()
        out[..., first:last] = edited.cpu()
        return out

    def span(self, frames: int, start: float | None, end: float | None, fade: float) -> tuple[int, int]:
        """The frames [first, last) regenerated for the range [start, end] seconds of a song of
        `frames` frames: the range, its fades, context before and a short tail after."""
        if start is None and end is None:
            return 0, frames
        seconds = frames / self.codec.frame_rate
        start, end = check_range(start, end, fade, seconds)
        first = math.floor((start - fade - RANGE_CONTEXT_SECONDS) * self.codec.frame_rate)
        last = math.ceil((end + fade + RANGE_TAIL_SECONDS) * self.codec.frame_rate)
        return max(0, first), min(frames, last)

    def decode(self, codes: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """Codes -> mono waveform [B, 1, T] at `sample_rate` (32 kHz), cut to `samples` when given."""
        wav = self.codec.decode(codes)
        return wav[..., :samples] if samples is not None else wav

    def decode_to(self, codes: torch.Tensor, source: SourceInfo | None, rate="model",
                  channels="input") -> tuple[torch.Tensor, int]:
        """Codes -> (waveform [B, C, T], its rate), with the input's duration. `rate`: "model"
        (32 kHz), "input" or Hz; `channels`: "input" (the mono result on every input channel) or "mono"."""
        return from_model_audio(self.decode(codes), self.sample_rate, source, rate, channels)

    def render(self, edited: torch.Tensor, original, sample_rate: int, *, original_codes: torch.Tensor | None = None,
               operations=(), mode: str = "auto", ranges=(), fade: float = DEFAULT_FADE_SECONDS,
               rate=None, channels=None) -> tuple[torch.Tensor, int]:
        """Edited codes -> (audio [B, C, T], its rate), rendered (see render.py) against the
        `original` waveform the codes came from ([T], [C, T] or [B, C, T] at `sample_rate`).

        `mode`: "model" (the model's output as it is), "preserve" (the edit applied to the
        original at its rate and channels; needs `original_codes` and `operations`, the list of
        add / remove / extract applied) or "auto" (preserve when every operation is known).
        `ranges`: the (start, end) seconds that were edited; outside them and their `fade` the
        result is the original. `rate` and `channels` ("model"/"input"/Hz, "input"/"mono") apply
        to "model" without ranges; otherwise the result has the original's rate and channels."""
        mode = resolve_render(mode, operations)
        original = as_batch(original)
        source = SourceInfo(int(sample_rate), original.shape[1], original.shape[-1])
        if mode == "model" and not ranges:
            return self.decode_to(edited, source, rate or "model", channels or "input")
        check_output_form(mode, ranges, rate, channels, source.sample_rate)
        if mode == "preserve" and original_codes is None:
            raise ValueError("preserve rendering needs the codes of the original (original_codes)")
        weight = rendering.fade_curve(source.samples, source.sample_rate, ranges, fade)
        edited_audio = self.decode(edited)[:, 0]
        recon = self.decode(original_codes)[:, 0] if mode == "preserve" else None
        out = []
        for b in range(original.shape[0]):
            if mode == "preserve":
                done = rendering.preserve(original[b], source.sample_rate, recon[b], edited_audio[b],
                                          self.sample_rate, operations)
            else:
                done = rendering.model_output(edited_audio[b], self.sample_rate, source.sample_rate,
                                              source.channels, source.samples)
            out.append(rendering.crossfade(original[b], done.to(original.dtype), weight))
        return torch.stack(out), source.sample_rate

    def edit_audio(self, wav, sample_rate: int, instruction: str, *, render: str = "auto",
                   operation: str | None = None, start: float | None = None, end: float | None = None,
                   fade: float = DEFAULT_FADE_SECONDS, rate=None, channels=None, **kwargs) -> tuple[torch.Tensor, int]:
        """One call: waveform at any rate and length -> (edited waveform [B, C, T], its rate).
        `operation` is read from a templated instruction when not given; see `edit` for the
        range and the generation options and `render` for the rest."""
        codes, source = self.encode_source(wav, sample_rate)
        edited = self.edit(codes, instruction, start=start, end=end, fade=fade, **kwargs)
        ops = [operation or instructions.operation_of(instruction)]
        ranges = [] if start is None and end is None else [check_range(start, end, fade, source.samples / sample_rate)]
        return self.render(edited, wav, sample_rate, original_codes=codes, operations=ops, mode=render,
                           ranges=ranges, fade=fade, rate=rate, channels=channels)


def resolve_render(mode: str, operations) -> str:
    """"auto" -> "preserve" when every operation applied is add, remove or extract, else "model"."""
    if mode not in rendering.RENDER_MODES:
        raise ValueError(f"unknown render mode {mode!r}; valid: {', '.join(rendering.RENDER_MODES)}")
    ops = list(operations)
    known = bool(ops) and all(op in instructions.OPERATIONS for op in ops)
    if mode == "preserve" and not known:
        raise ValueError("preserve rendering needs to know the operation (add, remove or extract); a free-text "
                         "instruction is rendered with --render model (or pass the operation)")
    if mode != "auto":
        return mode
    return "preserve" if known else "model"


def check_output_form(mode: str, ranges, rate, channels, input_rate: int | None = None):
    """Refuse an output rate or channel choice that preserve rendering or a range cannot honour."""
    if (mode == "preserve" or ranges) and (rate not in (None, "input", input_rate) or channels not in (None, "input")):
        raise AudioError("with --render preserve or a time range the result has the input's rate and channels; "
                         "--rate and --channels apply to --render model over the whole song")


def check_range(start: float | None, end: float | None, fade: float, seconds: float) -> tuple[float, float]:
    """(start, end) within a song of `seconds`, start defaulting to 0 and end to the song's end."""
    start = 0.0 if start is None else float(start)
    end = seconds if end is None else float(end)
    if not (math.isfinite(start) and math.isfinite(end) and math.isfinite(fade)) or fade < 0:
        raise ValueError(f"start, end and fade must be finite seconds (fade at least 0), got {start}, {end}, {fade}")
    if not 0 <= start < end <= seconds + 1e-6:
        raise ValueError(f"the time range must satisfy 0 <= start < end <= {seconds:.2f} s (the song's length), "
                         f"got start {start:g} s, end {end:g} s")
    return start, min(end, seconds)

