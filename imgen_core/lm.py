"""The MusicGen language model (audiocraft architecture) with a preallocated KV cache.

Parameter names follow audiocraft's `LMModel` so that its `best_state` loads unchanged; the one
exception is the cross-attention, which keeps separate q/k/v projections (the text fusion module
puts LoRA on q and v): the loader splits audiocraft's fused `in_proj_weight` into them.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .config import LMConfig


def sin_embedding(positions: torch.Tensor, dim: int, max_period: float, dtype: torch.dtype) -> torch.Tensor:
    """audiocraft's sinusoidal embedding: [..., dim] with cos in the first half, sin in the second."""
    half = dim // 2
    positions = positions.to(dtype)[..., None]
    adim = torch.arange(half, device=positions.device, dtype=dtype)
    period = torch.full([], max_period, device=positions.device, dtype=dtype)
    phase = positions / (period ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, T, H*D] -> [B, H, T, D]."""
    b, t, _ = x.shape
    return x.view(b, t, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, D] -> [B, T, H*D]."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class ExtraAttention(Protocol):
    """A hook for attention a layer adds to its self-attention (the audio fusion's prefix, see
    fusion.py): given the layer's queries [R, H, S, D] and their sequence positions [S], the
    output [R, H, S, D] to add."""

    def attend(self, query: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...


class KVCache(nn.Module):
    """Preallocated keys and values of one self-attention, written in place at `input_pos`."""

    def __init__(self, batch: int, num_heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, num_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v


class SelfAttention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * cfg.dim, cfg.dim))
        self.out_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def project(self, x: torch.Tensor):
        """Per-head q, k, v of `x` [B, T, C], each [B, H, T, D]."""
        # int8 weights (quant.py) replace the parameter by an `in_proj` layer
        qkv = self.in_proj(x) if "in_proj" in self._modules else F.linear(x, self.in_proj_weight)
        q, k, v = qkv.chunk(3, dim=-1)
        return split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads)

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor, adapter: ExtraAttention | None = None,
                kv_len: int | None = None) -> torch.Tensor:
        """Without a KV cache, causal attention over `x`. With one, the queries at `input_pos`
        attend the first `kv_len` cached positions (a Python int: no device sync) under a mask
        computed on the device from `input_pos`, so a step has static shapes when `kv_len` is
        the cache's length (CUDA graphs)."""
        q, k, v = self.project(x)
        if self.kv_cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1)
        else:
            k_all, v_all = self.kv_cache.update(input_pos, k, v)
            k_all, v_all = k_all[:, :, :kv_len], v_all[:, :, :kv_len]
            mask = torch.arange(k_all.shape[2], device=x.device)[None, :] <= input_pos[:, None]
            out = F.scaled_dot_product_attention(q.to(k_all.dtype), k_all, v_all, attn_mask=mask).to(q.dtype)
        if adapter is not None:
            out = out + adapter.attend(q, input_pos)
        return self.out_proj(merge_heads(out))


class CrossAttention(nn.Module):
    """Cross-attention to the text condition, with no key mask (as MusicGen: padding takes part)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.out_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def keys_values(self, src: torch.Tensor):
        return split_heads(self.k_proj(src), self.num_heads), split_heads(self.v_proj(src), self.num_heads)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = split_heads(self.q_proj(x), self.num_heads)
        out = F.scaled_dot_product_attention(q, *kv)
        return self.out_proj(merge_heads(out))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        hidden = cfg.hidden_scale * cfg.dim
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.self_attn = SelfAttention(cfg)
        self.norm_cross = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.cross_attention = CrossAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.linear1 = nn.Linear(cfg.dim, hidden, bias=False)
        self.linear2 = nn.Linear(hidden, cfg.dim, bias=False)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))

    def forward(self, x, input_pos, cross_kv, adapter=None, kv_len=None):
        x = x + self.self_attn(self.norm1(x), input_pos, adapter, kv_len)
        x = x + self.cross_attention(self.norm_cross(x), cross_kv)
        return x + self.feed_forward(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))


class MusicGenLM(nn.Module):
    """Codes of the delay-pattern sequence [B, K, S] + text condition -> logits [B, K, S, card]."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.ModuleList(nn.Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.n_q))
        self.transformer = Transformer(cfg)
        self.out_norm = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.linears = nn.ModuleList(nn.Linear(cfg.dim, cfg.card, bias=False) for _ in range(cfg.n_q))

    @property
    def layers(self) -> nn.ModuleList:
        return self.transformer.layers

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the K codebook embeddings: [B, K, S] -> [B, S, C]."""
        return sum(self.emb[k](codes[:, k]) for k in range(self.cfg.n_q))

    def setup_cache(self, batch: int, max_len: int):
        """Preallocate the self-attention KV caches for `batch` rows of up to `max_len` steps, in
        the model's dtype; on the CPU in fp32 whatever the model's, because PyTorch's CPU attention
        over a long bf16 or fp16 cache is several times slower than over an fp32 one on CPUs
        without native bf16 arithmetic (MusicGen-small in bf16: 84 -> 67 ms per step in
        benchmarks/decode_speed.py), for twice the cache's memory."""
        p = self.out_norm.weight
        dtype = torch.float32 if p.device.type == "cpu" else p.dtype
        for layer in self.layers:
            layer.self_attn.kv_cache = KVCache(batch, self.cfg.num_heads, max_len, self.cfg.head_dim,
                                               dtype, p.device)

    def clear_cache(self):
        for layer in self.layers:
            layer.self_attn.kv_cache = None

    def cross_keys_values(self, cross_src: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The text condition's keys and values for every layer; they do not change during a window."""
        return [layer.cross_attention.keys_values(cross_src) for layer in self.layers]

    def forward(self, codes: torch.Tensor, cross_kv: list, input_pos: torch.Tensor | None = None,
                adapters: dict[int, ExtraAttention] | None = None, kv_len: int | None = None) -> torch.Tensor:
        b, k, s = codes.shape
        if input_pos is None:
            input_pos = torch.arange(s, device=codes.device)
        x = self.embed_codes(codes)
        x = x + sin_embedding(input_pos, self.cfg.dim, self.cfg.max_period, x.dtype)
        adapters = adapters or {}
        for i, layer in enumerate(self.layers):
            x = layer(x, input_pos, cross_kv[i], adapters.get(i), kv_len)
        x = self.out_norm(x)
        return torch.stack([lin(x) for lin in self.linears], dim=1)


def init_lm_weights(lm: MusicGenLM, generator: torch.Generator | None = None):
    """audiocraft's gaussian init (std 1/sqrt(fan_in), deeper layers scaled down); for tiny test models."""
    def normal_(w, std):
        with torch.no_grad():
            w.copy_(torch.randn(w.shape, generator=generator) * std)
    for emb in lm.emb:
        normal_(emb.weight, 1 / math.sqrt(lm.cfg.dim))
    for depth, layer in enumerate(lm.layers, start=1):
        for name, p in layer.named_parameters():
            if p.dim() == 2:
                normal_(p, 1 / math.sqrt(p.shape[1]) / math.sqrt(2 * depth))
    for lin in lm.linears:
        normal_(lin.weight, 1 / math.sqrt(lm.cfg.dim))
