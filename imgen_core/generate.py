"""The decode loop: one window of instructed editing, token by token along the delay pattern."""
from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import torch

from . import pattern
from .model import InstructMusicGen
from .sampling import check_sampling, sample

UNKNOWN = -1


class CudaGraphStep:
    """One single-position decoding step captured as a CUDA graph and replayed: the whole LM in
    one launch. Inputs go through static buffers; the KV cache is attended in full under a
    mask computed on the device, so every replay has the same shapes and addresses."""

    def __init__(self, lm, cross_kv, adapters, rows: int, first_pos: int, frames: int):
        cfg, device = lm.cfg, lm.out_norm.weight.device
        self.lm, self.cross_kv, self.frames = lm, cross_kv, frames
        self.tokens = torch.full((rows, cfg.n_q, 1), cfg.special_token, dtype=torch.long, device=device)
        self.pos = torch.full((1,), first_pos, dtype=torch.long, device=device)
        self.rows = self.pos.clamp(max=frames - 1)
        self.adapters = {i: dataclasses.replace(a, rows=self.rows) for i, a in adapters.items()}
        # warm-up writes into the cache at `first_pos`, which the first real step overwrites
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward()

    def _forward(self):
        return self.lm(self.tokens, self.cross_kv, self.pos, self.adapters)[:, :, -1]

    def __call__(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.pos.fill_(pos)
        self.rows.fill_(min(pos, self.frames - 1))
        self.graph.replay()
        return self.logits


def _graph_or_none(use: str | bool, lm, cross_kv, adapters, rows, first_pos, frames):
    device = lm.out_norm.weight.device
    if use is False or use == "off" or device.type != "cuda":
        if use is True or use == "on":
            raise ValueError("cuda_graph=on needs the model on a CUDA device")
        return None
    try:
        return CudaGraphStep(lm, cross_kv, adapters, rows, first_pos, frames)
    except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager steps
        if use is True or use == "on":
            raise
        warnings.warn(f"CUDA graph capture failed, decoding eagerly: {e}")
        return None


@torch.no_grad()
def generate(model: InstructMusicGen, cond_codes: torch.Tensor, text_cond: torch.Tensor, *,
             cfg_coef: float | None = 3.0, temperature: float = 1.0, top_k: int = 100, top_p: float = 0.0,
             generator: torch.Generator | None = None, prompt: torch.Tensor | None = None,
             progress: Callable[[int, int], None] | None = None, cuda_graph: str | bool = "auto") -> torch.Tensor:
    """Edited codes [B, K, T] for condition codes [B, K, T].

    `text_cond` is the cross-attention source: [2B, L, dim] with the B conditional rows first and
    the B null rows after (classifier-free guidance), or [B, L, dim] with `cfg_coef=None`.
    `prompt` [B, K, Tp] fixes the first Tp frames (teacher-forced). `progress(done, total)` is
    called after every step; an exception raised there stops generation. `cuda_graph`: "auto"
    (on CUDA devices), "on" or "off".
    """
    check_sampling(temperature, top_k, top_p, cfg_coef)
    cfg = model.lm_cfg
    model.check_codes(cond_codes, "condition codes")
    b, k, frames = cond_codes.shape
    if frames < 1:
        raise ValueError("the condition has no frames")
    rows_per_batch = 2 if cfg_coef is not None else 1
    if text_cond.shape[0] != rows_per_batch * b:
        raise ValueError(f"text condition has {text_cond.shape[0]} rows; expected {rows_per_batch * b} "
                         f"({'conditional + null rows for guidance' if cfg_coef is not None else 'one per item'})")
    device = model.device
    cond_codes, text_cond = cond_codes.to(device), text_cond.to(device=device, dtype=model.dtype)

    steps = pattern.pattern_length(frames, cfg.delays)
    gen_codes = torch.full((b, k, frames), UNKNOWN, dtype=torch.long, device=device)
    prompt_frames = 0
    if prompt is not None:
        model.check_codes(prompt, "prompt codes")
        prompt_frames = prompt.shape[-1]
        if prompt_frames >= frames:
            raise ValueError(f"prompt ({prompt_frames} frames) must be shorter than the window ({frames})")
        gen_codes[..., :prompt_frames] = prompt.to(device)
    seq = pattern.build_sequence(gen_codes, cfg.delays, cfg.special_token)
    valid = pattern.valid_mask(frames, cfg.delays, device)
    special = torch.full((b, k), cfg.special_token, dtype=torch.long, device=device)
    start = prompt_frames + 1  # the first step that holds frame `prompt_frames` of codebook 0

    adapters = {}
    prefixes = model.prefixes(cond_codes)
    if prefixes is not None:
        adapters = model.fusion.adapters(prefixes, torch.zeros(1, dtype=torch.long, device=device))
    cross_kv = model.lm.cross_keys_values(text_cond)
    model.lm.setup_cache(rows_per_batch * b, steps)
    graph = None
    try:
        prev = 0
        for offset in range(start, steps):
            inp = seq[..., prev:offset]
            if rows_per_batch == 2:
                inp = torch.cat([inp, inp], dim=0)
            if graph is not None:
                logits = graph(inp, prev)
            else:
                pos = torch.arange(prev, offset, device=device)
                for adapter in adapters.values():
                    adapter.rows = pos.clamp(max=frames - 1)
                logits = model.lm(inp, cross_kv, pos, adapters, kv_len=offset)[:, :, -1]
                if offset == start and offset + 1 < steps:  # later steps are single positions
                    graph = _graph_or_none(cuda_graph, model.lm, cross_kv, adapters, inp.shape[0], offset, frames)
            logits = logits.float()  # [rows, K, card]
            if rows_per_batch == 2:
                cond, uncond = logits.split(b, dim=0)
                logits = uncond + (cond - uncond) * cfg_coef
            nxt = sample(logits, temperature, top_k, top_p, generator)  # [B, K]
            nxt = torch.where(valid[:, offset][None], nxt, special)
            cur = seq[..., offset]
            seq[..., offset] = torch.where(cur == UNKNOWN, nxt, cur)
            prev = offset
            if progress is not None:
                progress(offset - start + 1, steps - start)
    finally:
        del graph
        model.lm.clear_cache()
    return pattern.revert_sequence(seq, cfg.delays, frames)
