"""Choosing the next token from logits: greedy, temperature, top-k, top-p (audiocraft's rules)."""
from __future__ import annotations

import torch


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Token ids [...] from logits [..., card]. Temperature 0 (or top_k 1) is greedy; top_p > 0
    takes precedence over top_k, as in audiocraft."""
    if temperature <= 0 or (top_k == 1 and top_p <= 0):
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p > 0:
        probs = _keep_top_p(probs, top_p)
    elif top_k > 0:
        probs = _keep_top_k(probs, min(top_k, probs.shape[-1]))
    # one draw from each row, as torch.multinomial draws it (the same numbers for the same
    # generator) but without its validity check, which waits for the device
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / race).argmax(dim=-1)


def _keep_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(probs, k, dim=-1).values[..., -1:]
    probs = probs * (probs >= kth)
    return probs / probs.sum(dim=-1, keepdim=True)


def _keep_top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


def check_sampling(temperature: float, top_k: int, top_p: float, cfg_coef: float | None):
    """Refuse sampling settings that make no sense, saying what is accepted."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {top_k}")
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1] (0 disables it), got {top_p}")
    if cfg_coef is not None and not cfg_coef >= 0:
        raise ValueError(f"guidance (cfg_coef) must be >= 0, got {cfg_coef}")
