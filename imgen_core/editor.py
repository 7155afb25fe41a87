"""The public API: a song becomes a `Take`, a take is edited by instruction, a take becomes audio.

    editor = Editor.from_pretrained()                          # downloads once, then works offline
    take = editor.encode(wav, sample_rate)                     # any rate, channels, length
    take = editor.edit(take, editor.instruction("remove", "drums"), Sampling(seed=3))
    audio, rate = editor.render(take)                          # the edit applied to the original
"""
from __future__ import annotations

from typing import Callable

import torch

from . import defaults, instructions
from . import render as rendering
from .audio import as_batch, from_model_audio, to_model_audio
from .codec import Codec
from .loader import NewAdapter, load_parts
from .model import InstructMusicGen
from .sampling import Sampling
from .take import DEFAULT_FADE_SECONDS, Take, check_output_form
from .text import TextEncoder
from .windows import edit_songs, edit_windowed

Progress = Callable[[int, int], None]


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
    def from_pretrained(cls, base: str = defaults.BASE, adapter: str | None = defaults.ADAPTER,
                        t5: str = defaults.T5, encodec: str = defaults.ENCODEC, *, device="auto", dtype="auto",
                        int8: bool = False, offline: bool | None = None, merge_lora: bool = True,
                        new_adapter: NewAdapter | None = None, convert_into=None,
                        progress: Callable[[str, int, int], None] | None = None) -> "Editor":
        """Load from local paths or Hugging Face ids. `adapter` is our safetensors file, the official
        `finetuned.ckpt` (converted once and cached in the first writable of `convert_into`,
        default the user cache), or a repo holding either; None with `new_adapter` for fresh
        adapter weights to train. `dtype`: auto, fp32, fp16, bf16 or int8 (or, with `int8`, the
        activations' dtype). `merge_lora` folds LoRA into the projections for faster inference
        (keep it apart to train). `progress(stage, done, total)`: stage "converting" (bytes of
        the adapter written, first use of an official checkpoint only), then "loading" (parts
        loaded of 3: LM, T5, EnCodec)."""
        parts = load_parts(base, adapter, t5, encodec, device=device, dtype=dtype, int8=int8, offline=offline,
                           merge_lora=merge_lora, new_adapter=new_adapter, convert_into=convert_into,
                           progress=progress)
        return cls(parts.model, parts.text_encoder, parts.codec, parts.dialect, parts.stems)

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    @property
    def max_frames(self) -> int:
        return self.model.fusion.cfg.max_frames

    def instruction(self, operation: str | None = None, stem: str | None = None, text: str | None = None) -> str:
        """The checkpoint's instruction for (operation, stem), or `text` used as is."""
        if text:
            return instructions.free_text(text)
        if operation is None or stem is None:
            raise instructions.InstructionError("give an operation and a stem, or a free-text instruction")
        return instructions.phrase(operation, stem, self.dialect, self.stems)

    def encode(self, wav, sample_rate: int, progress: Callable[[int, int], None] | None = None) -> Take:
        """Waveform [T], [C, T] or [B, C, T] at any rate, of any length -> a take of its codes.
        `progress(frames done, frames)` as EnCodec goes through it."""
        original = as_batch(wav)
        audio, source = to_model_audio(original, sample_rate, self.sample_rate)
        codes = self.codec.encode(audio, progress=progress)
        return Take(codes, source, original, codes, self.frame_rate)

    def text_condition(self, texts: list[str]) -> torch.Tensor:
        """The instructions' cross-attention source [B, L, dim] (T5, then the LM's projection)."""
        hidden, mask = self.text_encoder(texts)
        return self.model.text_condition(hidden.to(self.model.device), mask.to(self.model.device))

    def edit(self, take: Take, instruction: str | list[str], sampling: Sampling = Sampling(), *,
             start: float | None = None, end: float | None = None, fade: float = DEFAULT_FADE_SECONDS,
             operation: str | None = None, progress: Progress | None = None, on_window=None) -> Take:
        """The take after one more edit by `instruction` (one for all items or one per item). With
        `start` and/or `end` (seconds) only that range (with its fades and some context, see
        `Take.span`) is regenerated; the other frames are kept. `operation` names what a
        free-text instruction does, for preserve rendering; a templated one says it itself."""
        first, last = take.span(start, end, fade)
        codes = take.codes.clone()
        codes[..., first:last] = self.edit_codes(take.codes[..., first:last], instruction, sampling,
                                                 progress=progress, on_window=on_window)
        return take.after(codes, _operation(instruction, operation), start, end, fade)

    def edit_codes(self, codes: torch.Tensor, instruction: str | list[str], sampling: Sampling = Sampling(), *,
                   progress: Progress | None = None, on_window=None) -> torch.Tensor:
        """Edited codes [B, K, frames] (on the CPU) for codes of any length, window by window
        (windows.py). `progress(done, total)` after each step; `on_window(window, codes)` after
        each window."""
        if codes.dim() != 3 or codes.shape[-1] == 0:
            raise ValueError(f"codes must be [batch, codebooks, frames] with frames > 0, got {list(codes.shape)}")
        b = codes.shape[0]
        texts = [instruction] * b if isinstance(instruction, str) else list(instruction)
        if len(texts) != b:
            raise ValueError(f"{len(texts)} instructions for a batch of {b}")
        texts = [instructions.free_text(t) for t in texts]
        window, overlap = sampling.window_frames(self.frame_rate, self.max_frames)
        # a generator per item, each from the seed: an item gets what editing it alone gives
        generator = [torch.Generator(device=self.model.device).manual_seed(int(sampling.seed)) for _ in range(b)]
        return edit_windowed(self.model, codes.to(self.model.device), self.text_condition(texts), sampling,
                             window=window, overlap=overlap, generator=generator, progress=progress,
                             on_window=on_window).cpu()

    def decode(self, codes: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """Codes -> the model's mono waveform [B, 1, T] at `sample_rate`, cut to `samples` when given."""
        wav = self.codec.decode(codes)
        return wav[..., :samples] if samples is not None else wav

    def render(self, take: Take, mode: str = "auto", *, rate=None, channels=None) -> tuple[torch.Tensor, int]:
        """A take -> (audio [B, C, T] of the input's duration, its rate). `mode`: "model" (the
        model's output as it is), "preserve" (the edit applied to the original at its rate and
        channels, see render.py) or "auto" (preserve when every operation is add, remove or
        extract). Edits of time ranges are mixed into the original there only. Otherwise (the
        model's output over the whole song) `rate` ("model", default, "input" or Hz) and
        `channels` ("input", default: the mono result on every input channel, or "mono") apply."""
        mode = take.render_mode(mode)
        if not take.in_input_form(mode):
            return from_model_audio(self.decode(take.codes), self.sample_rate, take.source, rate or "model",
                                    channels or "input")
        check_output_form(True, rate, channels, take.source.sample_rate)
        rate, length = take.source.sample_rate, take.source.samples
        audio = torch.empty_like(take.original)
        for b in range(audio.shape[0]):  # an item at a time, each signal at the input's rate as soon as decoded
            edited = rendering.at_rate(self.decode(take.codes[b:b + 1])[0, 0], self.sample_rate, rate, length)
            recon = None
            if mode == "preserve":
                recon = rendering.at_rate(self.decode(take.original_codes[b:b + 1])[0, 0], self.sample_rate, rate,
                                          length)
            rendering.in_input_form(take.original[b], rate, edited, recon, take.operations, take.ranges or (),
                                    out=audio[b])
        return audio, rate

    def edit_audio(self, wav, sample_rate: int, instruction: str, sampling: Sampling = Sampling(), *,
                   render: str = "auto", operation: str | None = None, start: float | None = None,
                   end: float | None = None, fade: float = DEFAULT_FADE_SECONDS, rate=None, channels=None,
                   progress: Progress | None = None) -> tuple[torch.Tensor, int]:
        """One call: waveform at any rate and length -> (edited waveform [B, C, T], its rate); see
        `edit` and `render`. The render settings are checked before anything is generated."""
        take = self.encode(wav, sample_rate)
        planned = take.after(take.codes, _operation(instruction, operation), start, end, fade)
        check_output_form(planned.in_input_form(render), rate, channels, sample_rate)
        take = self.edit(take, instruction, sampling, start=start, end=end, fade=fade, operation=operation,
                         progress=progress)
        return self.render(take, render, rate=rate, channels=channels)


def edit_many(editor: Editor, takes: list[Take], instruction: str, sampling: Sampling = Sampling(), *,
              batch: int = 1, seeds: list[int] | None = None, progress: Progress | None = None) -> list[Take]:
    """Each take (one item each, any lengths) after the edit by `instruction`, `batch` songs
    decoded together (windows.edit_songs). Song i draws from a generator of its own, seeded with
    `seeds[i]` (default: `sampling.seed` for every song, as editing each alone does), so with
    `batch` 1 every song gets the tokens `Editor.edit` gives it, and with more the same up to
    the rounding of products over more rows."""
    if any(t.codes.shape[0] != 1 for t in takes):
        raise ValueError("edit_many takes one item per take")
    seeds = [sampling.seed] * len(takes) if seeds is None else list(seeds)
    if len(seeds) != len(takes):
        raise ValueError(f"{len(seeds)} seeds for {len(takes)} songs")
    model = editor.model
    window, overlap = sampling.window_frames(editor.frame_rate, editor.max_frames)
    generators = [torch.Generator(device=model.device).manual_seed(int(seed)) for seed in seeds]
    text = editor.text_condition([instructions.free_text(instruction)]).expand(len(takes), -1, -1)
    codes = edit_songs(model, [t.codes[0].to(model.device) for t in takes], text, sampling, window=window,
                       overlap=overlap, generators=generators, batch=batch, progress=progress)
    operation = _operation(instruction, None)
    return [t.after(c[None].cpu(), operation, None, None, DEFAULT_FADE_SECONDS) for t, c in zip(takes, codes)]


def _operation(instruction: str | list[str], given: str | None) -> str | None:
    """The operation an edit applies: the one given, else the one its templated instruction(s)
    ask for (None for free text, or for items asking for different operations)."""
    if given is not None:
        return given
    ops = {instructions.operation_of(t) for t in ([instruction] if isinstance(instruction, str) else instruction)}
    return ops.pop() if len(ops) == 1 else None
