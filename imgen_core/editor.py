"""The public API: encode audio to codes, edit codes by instruction, decode codes to audio.

    editor = Editor.from_pretrained()                 # downloads once, then works offline
    codes = editor.encode(wav, sample_rate)           # any rate, channels, length
    edited = editor.edit(codes, editor.instruction("remove", "drums"), seed=0)
    audio = editor.decode(edited)                     # [B, 1, T] at editor.sample_rate
"""
from __future__ import annotations

from typing import Callable

import torch

from . import instructions
from .audio import SourceInfo, from_model_audio, to_model_audio
from .codec import Codec
from .loader import load_editor, pick_device, pick_dtype
from .model import InstructMusicGen
from .text import TextEncoder
from .windows import edit_windowed

DEFAULT_BASE = "facebook/musicgen-large"
DEFAULT_ADAPTER = "ldzhangyx/instruct-MusicGen"
DEFAULT_T5 = "t5-base"
DEFAULT_ENCODEC = "facebook/encodec_32khz"
# The released model was trained on 5 s crops: its position embeddings beyond 5 s are untrained.
DEFAULT_WINDOW_SECONDS = 5.0
DEFAULT_OVERLAP_SECONDS = 2.0


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
             progress: Callable[[int, int], None] | None = None, on_window=None) -> torch.Tensor:
        """Edited codes [B, K, frames], any length, window by window (see windows.py); one
        instruction for all items or one per item."""
        if codes.dim() != 3 or codes.shape[-1] == 0:
            raise ValueError(f"codes must be [batch, codebooks, frames] with frames > 0, got {list(codes.shape)}")
        b = codes.shape[0]
        texts = [instruction] * b if isinstance(instruction, str) else list(instruction)
        if len(texts) != b:
            raise ValueError(f"{len(texts)} instructions for a batch of {b}")
        texts = [instructions.free_text(t) for t in texts]
        window, overlap = self.window_frames(window_seconds, overlap_seconds)
        generator = torch.Generator(device=self.model.device).manual_seed(int(seed))
        edited = edit_windowed(self.model, codes.to(self.model.device), self.text_condition(texts, guidance),
                               window=window, overlap=overlap, progress=progress, on_window=on_window,
                               cfg_coef=guidance, temperature=temperature, top_k=top_k, top_p=top_p,
                               generator=generator)
        return edited.cpu()

    def decode(self, codes: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """Codes -> mono waveform [B, 1, T] at `sample_rate` (32 kHz), cut to `samples` when given."""
        wav = self.codec.decode(codes)
        return wav[..., :samples] if samples is not None else wav

    def decode_to(self, codes: torch.Tensor, source: SourceInfo | None, rate="model",
                  channels="input") -> tuple[torch.Tensor, int]:
        """Codes -> (waveform [B, C, T], its rate), with the input's duration. `rate`: "model"
        (32 kHz), "input" or Hz; `channels`: "input" (the mono result on every input channel) or "mono"."""
        return from_model_audio(self.decode(codes), self.sample_rate, source, rate, channels)

    def edit_audio(self, wav, sample_rate: int, instruction: str, rate="model", channels="input",
                   **kwargs) -> tuple[torch.Tensor, int]:
        """One call: waveform at any rate and length -> (edited waveform [B, C, T], its rate)."""
        codes, source = self.encode_source(wav, sample_rate)
        return self.decode_to(self.edit(codes, instruction, **kwargs), source, rate, channels)

