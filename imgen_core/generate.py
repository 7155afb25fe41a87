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
from .lm import KVCache
from .model import InstructMusicGen
from .sampling import Sampler, Sampling

UNKNOWN = -1


class NonFiniteScores(ValueError):
    """The model's scores became NaN or infinite: the tokens drawn from them would mean nothing."""

# decides column `offset` of the sequence from the columns before it; returns the scores it sampled
Step = Callable[[int], torch.Tensor]


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


def step_logits(lm, d: Decoding, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
    """The guided scores [B, K, card] (float32) of the column after the sequence columns `pos`,
    whose keys and values join the cache. The queries attend the first `kv_len` cached positions
    under a mask computed from `pos`: the eager loop passes the length so far, a CUDA graph the
    whole cache (static shapes)."""
    inp = d.seq.index_select(2, pos)
    if d.guidance is not None:
        inp = torch.cat([inp, inp], dim=0)
    logits = lm(inp, d.cross_kv, pos, d.adapters, kv_len)[:, :, -1].float()  # [rows, K, card]
    if d.guidance is not None:
        cond, uncond = logits.chunk(2, dim=0)
        logits = uncond + (cond - uncond) * d.guidance
    return logits


def take_step(lm, d: Decoding, sampler: Sampler, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
    """`step_logits`, then sample the column after the last of `pos` and write it where the
    sequence does not already hold a code. Returns the scores it sampled from."""
    logits = step_logits(lm, d, pos, kv_len)
    d.finite.logical_and_(torch.isfinite(logits).all())
    col = pos[-1:] + 1
    nxt = torch.where(d.valid.index_select(1, col)[None, :, 0], sampler(logits), d.special)
    cur = d.seq.index_select(2, col)[..., 0]
    d.seq.index_copy_(2, col, torch.where(cur == UNKNOWN, nxt, cur)[..., None])
    return logits


def prefill(lm, d: Decoding, sampler: Sampler):
    """The prompt's columns in one pass; decides column `d.start`."""
    take_step(lm, d, sampler, torch.arange(d.start, device=d.seq.device), kv_len=d.start)


def eager_step(lm, d: Decoding, sampler: Sampler) -> Step:
    def step(offset: int) -> torch.Tensor:
        return take_step(lm, d, sampler, torch.tensor([offset - 1], device=d.seq.device), kv_len=offset)
    return step


class CudaGraphStep:
    """`take_step` over the whole cache captured once as a CUDA graph and replayed: the LM,
    guidance and sampling in one launch, with no host synchronisation between steps. Returns the
    graph's scores tensor, which each replay overwrites."""

    def __init__(self, lm, d: Decoding, sampler: Sampler, generator):
        device = d.seq.device
        # Warmed up and captured at position 0, never where it will replay first, so that a graph
        # that kept the capture's position instead of reading `pos` fails the first replay's check.
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        run = functools.partial(take_step, lm, d, sampler, self.pos, d.steps)
        # the warm-up runs rewrite position 0 of the cache, decide (nothing new in) column 1 and
        # draw random numbers: all undone after
        given = list(generator) if isinstance(generator, (list, tuple)) else [generator] if generator else []
        rngs = given or [torch.cuda.default_generators[device.index or torch.cuda.current_device()]]
        caches = [m for m in lm.modules() if isinstance(m, KVCache)]
        saved = [(c.k[:, :, :1].clone(), c.v[:, :, :1].clone()) for c in caches]
        seq, finite, states = d.seq.clone(), d.finite.clone(), [rng.get_state() for rng in rngs]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        for c, (k, v) in zip(caches, saved):
            c.k[:, :, :1].copy_(k)
            c.v[:, :, :1].copy_(v)
        d.seq.copy_(seq)
        d.finite.copy_(finite)
        for rng, state in zip(rngs, states):
            rng.set_state(state)
        self.graph = torch.cuda.CUDAGraph()
        for rng in given:  # the default generator is registered already
            self.graph.register_generator_state(rng)
        with torch.cuda.graph(self.graph):
            self.logits = run()

    def __call__(self, offset: int) -> torch.Tensor:
        self.pos.fill_(offset - 1)
        self.graph.replay()
        return self.logits


# How far a replayed step's scores may be from an eager step's on the same inputs (relative L2).
# Both run the same layers in the same dtype; only the attended length (the whole cache under the
# mask, or the part written so far), and so the kernels and their order of summation, differ.
# Measured on the CPU on the fixtures' models over every step: at most 8e-7 in fp32, 0 in bf16 (the
# CPU's cache is fp32 either way); a step that reads the capture's position instead of the
# current one is off by 30% to 106%. fp16 on a GPU, summing over 48 layers with guidance
# amplifying the difference threefold, needs more room than the CPU shows; 10% leaves it and
# still sits three times below the smallest error of a stale step (0.30). gpu_check.py reports the
# error measured on the GPU.
GRAPH_TOLERANCE = 0.1
last_graph_check: dict = {}  # the latest check's {"error": ..., "ok": ...}, for reports


class CheckedStep:
    """A fast step (a replayed CUDA graph) whose first call is checked against an eager step on
    the same inputs: within GRAPH_TOLERANCE it keeps going; otherwise it warns once, decides the
    column again eagerly and decodes eagerly from then on. The check costs one eager step and one
    host synchronisation per window."""

    def __init__(self, fast: Step, lm, d: Decoding, sampler: Sampler):
        self.fast, self.lm, self.d, self.sampler = fast, lm, d, sampler
        self.checked = False

    def __call__(self, offset: int) -> torch.Tensor:
        if self.checked:
            return self.fast(offset)
        self.checked = True
        d = self.d
        column, finite = d.seq[..., offset].clone(), d.finite.clone()
        fast = self.fast(offset).clone()
        eager = step_logits(self.lm, d, torch.tensor([offset - 1], device=d.seq.device), kv_len=offset)
        error = float((fast - eager).norm() / eager.norm().clamp(min=1e-30))
        ok = error <= GRAPH_TOLERANCE  # NaN is not ok
        last_graph_check.update(error=error, ok=ok)
        if ok:
            return fast
        _warn_once(f"the CUDA graph's step disagrees with the eager step (relative error {error:.3g} > "
                   f"{GRAPH_TOLERANCE}); decoding eagerly")
        d.seq[..., offset] = column
        d.finite.copy_(finite)
        self.fast = eager_step(self.lm, d, self.sampler)
        return self.fast(offset)


_warned: set = set()


def _warn_once(message: str):
    key = message.split(" (")[0]
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def choose_step(use: str | bool, lm, d: Decoding, sampler: Sampler, generator) -> Step:
    """The step the loop runs: a CUDA graph, checked on its first replay, where asked for and
    possible ("auto": on CUDA devices, falling back to eager steps with a warning), else eager."""
    device = d.seq.device
    if use is False or use == "off" or device.type != "cuda":
        if use is True or use == "on":
            raise ValueError("cuda_graph=on needs the model on a CUDA device")
        return eager_step(lm, d, sampler)
    try:
        return CheckedStep(CudaGraphStep(lm, d, sampler, generator), lm, d, sampler)
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
             sampling: Sampling = Sampling(), *, generator=None,
             prompt: torch.Tensor | None = None, progress: Callable[[int, int], None] | None = None,
             cuda_graph: str | bool = "auto") -> torch.Tensor:
    """Edited codes [B, K, T] for condition codes [B, K, T].

    `text_cond` [B, L, dim] is the instruction's cross-attention source (`Editor.text_condition`);
    `sampling` says how tokens are chosen (guidance, top-k, top-p, temperature; its window and
    seed are the caller's business), drawing from `generator` (one, or a list of one per item).
    `prompt` [B, K, Tp] fixes the first Tp frames (teacher-forced). `progress(done, total)` is called after every step; an exception
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
            step = choose_step(cuda_graph, lm, d, sampler, generator)
            loop(step, d, progress)
    finally:
        del step  # a captured graph holds memory from the cache's pool
        lm.clear_cache()
    if not bool(d.finite):
        raise NonFiniteScores("the model's scores became NaN or infinite while generating: its weights overflow "
                              f"in {str(model.dtype).removeprefix('torch.')} or are broken (try fp32)")
    return pattern.revert_sequence(d.seq, model.lm_cfg.delays, cond_codes.shape[-1])
