"""The decode loop: one window of instructed editing, token by token along the delay pattern."""
from __future__ import annotations

from typing import Callable

import torch

from . import pattern
from .model import InstructMusicGen
from .sampling import check_sampling, sample

UNKNOWN = -1


@torch.no_grad()
def generate(model: InstructMusicGen, cond_codes: torch.Tensor, text_cond: torch.Tensor, *,
             cfg_coef: float | None = 3.0, temperature: float = 1.0, top_k: int = 100, top_p: float = 0.0,
             generator: torch.Generator | None = None, prompt: torch.Tensor | None = None,
             progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Edited codes [B, K, T] for condition codes [B, K, T].

    `text_cond` is the cross-attention source: [2B, L, dim] with the B conditional rows first and
    the B null rows after (classifier-free guidance), or [B, L, dim] with `cfg_coef=None`.
    `prompt` [B, K, Tp] fixes the first Tp frames (teacher-forced). `progress(done, total)` is
    called after every step; an exception raised there stops generation.
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
    start = prompt_frames + 1  # the first step that holds frame `prompt_frames` of codebook 0

    adapters = {}
    prefixes = model.prefixes(cond_codes)
    if prefixes is not None:
        adapters = model.fusion.adapters(prefixes, torch.zeros(1, dtype=torch.long, device=device),
                                         repeat=rows_per_batch)
    cross_kv = model.lm.cross_keys_values(text_cond)
    model.lm.setup_cache(rows_per_batch * b, steps)
    try:
        prev = 0
        for offset in range(start, steps):
            pos = torch.arange(prev, offset, device=device)
            rows = pos.clamp(max=frames - 1)
            for adapter in adapters.values():
                adapter.rows = rows
            inp = seq[..., prev:offset]
            if rows_per_batch == 2:
                inp = torch.cat([inp, inp], dim=0)
            logits = model.lm(inp, cross_kv, pos, adapters)[:, :, -1].float()  # [rows, K, card]
            if rows_per_batch == 2:
                cond, uncond = logits.split(b, dim=0)
                logits = uncond + (cond - uncond) * cfg_coef
            nxt = sample(logits, temperature, top_k, top_p, generator)  # [B, K]
            nxt = torch.where(valid[:, offset][None], nxt, torch.full_like(nxt, cfg.special_token))
            cur = seq[..., offset]
            seq[..., offset] = torch.where(cur == UNKNOWN, nxt, cur)
            prev = offset
            if progress is not None:
                progress(offset - start + 1, steps - start)
    finally:
        model.lm.clear_cache()
    out = pattern.revert_sequence(seq, cfg.delays, frames)
    assert (out >= 0).all() and (out < cfg.card).all(), "generation left unfilled or special tokens"
    return out
