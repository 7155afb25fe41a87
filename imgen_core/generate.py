"""The decode loop: one window of instructed editing, token by token along the delay pattern.

`generate` = `prepare` (the pattern sequence, the text keys and values, the audio prefixes) +
`prefill` (every prompt position in one pass) + `loop` (one position per step). Every step,
eager or replayed from a CUDA graph, is `take_step`: the LM over the cache, guidance, sampling and
the write of the chosen tokens, all on the device with the position passed in as a tensor.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from . import pattern
from .model import InstructMusicGen
from .sampling import Sampler, Sampling

UNKNOWN = -1


class NonFiniteScores(ValueError):
    """The model's scores became NaN or infinite: the tokens drawn from them would mean nothing."""

Step = Callable[[int], None]  # decides column `offset` of the sequence from the columns before it


@dataclass
class Decoding:
    """One window being decoded. `seq` [B, K, steps] is the delay-pattern sequence, UNKNOWN where
    not decided yet; every step reads its previous column and writes the next one."""

    seq: torch.Tensor
    valid: torch.Tensor  # [K, steps]: where the pattern holds a real code (else the special token)
    special: int
    cross_kv: list
    adapters: dict
    guidance: float | None  # classifier-free guidance coefficient; None: no null rows
    start: int  # the first column to sample (earlier ones are the prompt's)
    finite: torch.Tensor  # [] bool on the device: every step's scores were finite (checked after the window)

    @property
    def steps(self) -> int:
        return self.seq.shape[-1]

    @property
    def rows(self) -> int:
        """Rows the LM runs on: the items, and their null-condition twins under guidance."""
        return self.seq.shape[0] * (2 if self.guidance is not None else 1)


def prepare(model: InstructMusicGen, cond_codes: torch.Tensor, text_cond: torch.Tensor,
            guidance: float | None, prompt: torch.Tensor | None) -> Decoding:
    """Check the inputs and compute what does not change during the window. Under guidance the
    null condition is added here: all zeros, as long as the instruction's (T5 of "" masked out)."""
    cfg = model.lm_cfg
    model.check_codes(cond_codes, "condition codes")
    b, k, frames = cond_codes.shape
    if frames < 1:
        raise ValueError("the condition has no frames")
    if text_cond.dim() != 3 or text_cond.shape[0] != b:
        raise ValueError(f"the text condition must be [{b}, length, width] (one row per item), "
                         f"got {list(text_cond.shape)}")
    device = model.device
    cond_codes, text_cond = cond_codes.to(device), text_cond.to(device=device, dtype=model.dtype)
    if guidance is not None:
        text_cond = torch.cat([text_cond, torch.zeros_like(text_cond)], dim=0)

    gen_codes = torch.full((b, k, frames), UNKNOWN, dtype=torch.long, device=device)
    prompt_frames = 0
    if prompt is not None:
        model.check_codes(prompt, "prompt codes")
        prompt_frames = prompt.shape[-1]
        if prompt_frames >= frames:
            raise ValueError(f"prompt ({prompt_frames} frames) must be shorter than the window ({frames})")
        gen_codes[..., :prompt_frames] = prompt.to(device)
    prefixes = model.prefixes(cond_codes)
    adapters = {} if prefixes is None else model.fusion.adapters(prefixes, last_row=frames - 1)
    return Decoding(seq=pattern.build_sequence(gen_codes, cfg.delays, cfg.special_token),
                    valid=pattern.valid_mask(frames, cfg.delays, device), special=cfg.special_token,
                    cross_kv=model.lm.cross_keys_values(text_cond), adapters=adapters, guidance=guidance,
                    start=prompt_frames + 1,  # step `start` holds frame `prompt_frames` of codebook 0
                    finite=torch.ones((), dtype=torch.bool, device=device))


def take_step(lm, d: Decoding, sampler: Sampler, pos: torch.Tensor, kv_len: int):
    """Run the LM on the sequence columns `pos` (their keys and values join the cache), sample the
    column after the last of them and write it where the sequence does not already hold a code.
    The queries attend the first `kv_len` cached positions under a mask computed from `pos`: the
    eager loop passes the length so far, a CUDA graph the whole cache (static shapes)."""
    inp = d.seq.index_select(2, pos)
    if d.guidance is not None:
        inp = torch.cat([inp, inp], dim=0)
    logits = lm(inp, d.cross_kv, pos, d.adapters, kv_len)[:, :, -1].float()  # [rows, K, card]
    if d.guidance is not None:
        cond, uncond = logits.chunk(2, dim=0)
        logits = uncond + (cond - uncond) * d.guidance
    d.finite.logical_and_(torch.isfinite(logits).all())
    col = pos[-1:] + 1
    nxt = torch.where(d.valid.index_select(1, col)[None, :, 0], sampler(logits), d.special)
    cur = d.seq.index_select(2, col)[..., 0]
    d.seq.index_copy_(2, col, torch.where(cur == UNKNOWN, nxt, cur)[..., None])


def prefill(lm, d: Decoding, sampler: Sampler):
    """The prompt's columns in one pass; decides column `d.start`."""
    take_step(lm, d, sampler, torch.arange(d.start, device=d.seq.device), kv_len=d.start)


def eager_step(lm, d: Decoding, sampler: Sampler) -> Step:
    def step(offset: int):
        take_step(lm, d, sampler, torch.tensor([offset - 1], device=d.seq.device), kv_len=offset)
    return step


class CudaGraphStep:
    """`take_step` over the whole cache captured once as a CUDA graph and replayed: the LM,
    guidance and sampling in one launch, with no host synchronisation between steps."""

    def __init__(self, lm, d: Decoding, sampler: Sampler, generator: torch.Generator | None, offset: int):
        device = d.seq.device
        self.pos = torch.tensor([offset - 1], device=device)
        run = functools.partial(take_step, lm, d, sampler, self.pos, d.steps)
        # the warm-up runs really decide a column and draw random numbers: undo both after
        rng = generator or torch.cuda.default_generators[device.index or torch.cuda.current_device()]
        seq, state = d.seq.clone(), rng.get_state()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        d.seq.copy_(seq)
        rng.set_state(state)
        self.graph = torch.cuda.CUDAGraph()
        if generator is not None:  # the default generator is registered already
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            run()

    def __call__(self, offset: int):
        self.pos.fill_(offset - 1)
        self.graph.replay()


def choose_step(use: str | bool, lm, d: Decoding, sampler: Sampler, generator, offset: int) -> Step:
    """The step the loop runs from column `offset` on: a CUDA graph where asked for and possible
    ("auto": on CUDA devices, falling back to eager steps with a warning), else eager."""
    device = d.seq.device
    if use is False or use == "off" or device.type != "cuda":
        if use is True or use == "on":
            raise ValueError("cuda_graph=on needs the model on a CUDA device")
        return eager_step(lm, d, sampler)
    try:
        return CudaGraphStep(lm, d, sampler, generator, offset)
    except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager steps
        if use is True or use == "on":
            raise
        warnings.warn(f"CUDA graph capture failed, decoding eagerly: {e}")
        return eager_step(lm, d, sampler)


def loop(step: Step, d: Decoding, progress: Callable[[int, int], None] | None):
    """Decide the columns after `d.start`, one step each."""
    total = d.steps - d.start
    for offset in range(d.start + 1, d.steps):
        step(offset)
        if progress is not None:
            progress(offset - d.start + 1, total)


@torch.no_grad()
def generate(model: InstructMusicGen, cond_codes: torch.Tensor, text_cond: torch.Tensor,
             sampling: Sampling = Sampling(), *, generator: torch.Generator | None = None,
             prompt: torch.Tensor | None = None, progress: Callable[[int, int], None] | None = None,
             cuda_graph: str | bool = "auto") -> torch.Tensor:
    """Edited codes [B, K, T] for condition codes [B, K, T].

    `text_cond` [B, L, dim] is the instruction's cross-attention source (`Editor.text_condition`);
    `sampling` says how tokens are chosen (guidance, top-k, top-p, temperature; its window and
    seed are the caller's business), drawing from `generator`. `prompt` [B, K, Tp] fixes the first
    Tp frames (teacher-forced). `progress(done, total)` is called after every step; an exception
    raised there stops generation. `cuda_graph`: "auto" (on CUDA devices), "on" or "off".
    """
    d = prepare(model, cond_codes, text_cond, sampling.guidance, prompt)
    sampler = sampling.sampler(generator)
    lm = model.lm
    lm.setup_cache(d.rows, d.steps)
    step = None
    try:
        prefill(lm, d, sampler)
        if progress is not None:
            progress(1, d.steps - d.start)
        if d.start + 1 < d.steps:
            step = choose_step(cuda_graph, lm, d, sampler, generator, d.start + 1)
            loop(step, d, progress)
    finally:
        del step  # a captured graph holds memory from the cache's pool
        lm.clear_cache()
    if not bool(d.finite):
        raise NonFiniteScores("the model's scores became NaN or infinite while generating: its weights overflow "
                              f"in {str(model.dtype).removeprefix('torch.')} or are broken (try fp32)")
    return pattern.revert_sequence(d.seq, model.lm_cfg.delays, cond_codes.shape[-1])
