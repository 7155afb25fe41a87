"""The two Instruct-MusicGen fusion modules.

Audio fusion: the input music's codes run as a second "condition stream" through the LM's own
frozen layers (the last `num_layers` of them); each of those layers yields per-head prefix
q/k/v that the main LM attends to, scaled by a learned gate.

Text fusion: LoRA (peft) on the cross-attention q and v projections of every LM layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import FusionConfig, LMConfig
from .lm import MusicGenLM, merge_heads


@dataclass(frozen=True)
class LayerAdapter:
    """What the audio fusion module injects into one LM layer's self-attention.

    `q`, `k`, `v` are the condition stream's per-head projections [B, H, P, D], kept once per
    item: the rows of classifier-free guidance (2B queries) share them. A query at sequence
    position s adds row min(s, `last_row`) of `q` to its own query.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    gate: torch.Tensor
    last_row: int

    def attend(self, query: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b, h, p, d = self.k.shape
        r, _, s, _ = query.shape
        n = r // b  # query rows per item (2 under guidance)
        prefix_q = self.q.index_select(2, positions.clamp(max=self.last_row))  # [B, H, S, D]
        # fold the n rows of an item into its query axis: one attention over the shared prefix
        folded = query.view(n, b, h, s, d).permute(1, 2, 0, 3, 4).reshape(b, h, n * s, d)
        folded = folded + prefix_q.repeat(1, 1, n, 1)
        out = F.scaled_dot_product_attention(folded, self.k, self.v)
        out = out.view(b, h, n, s, d).permute(2, 0, 1, 3, 4).reshape(r, h, s, d)
        return self.gate * out


class AudioFusion(nn.Module):
    def __init__(self, lm_cfg: LMConfig, cfg: FusionConfig):
        super().__init__()
        self.cfg = cfg
        self.start_layer = cfg.start_layer(lm_cfg)
        self.pos_emb = nn.Parameter(torch.zeros(cfg.num_layers + 1, cfg.max_frames + 1, lm_cfg.dim))
        self.merge_linear = nn.ModuleList(nn.Linear(lm_cfg.dim, lm_cfg.dim, bias=False)
                                          for _ in range(cfg.num_layers))
        self.gates = nn.Parameter(torch.zeros(cfg.num_layers))

    @property
    def max_prefix(self) -> int:
        return self.cfg.max_frames + 1

    def prefixes(self, lm: MusicGenLM, cond_codes: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per-adapter (q, k, v), each [B, H, P, D], for condition codes [B, K, P] that already end
        with the special column (P = frames + 1)."""
        p = cond_codes.shape[-1]
        if p > self.max_prefix:
            raise ValueError(f"the audio condition has {p - 1} frames; at most {self.cfg.max_frames} "
                             f"fit one window")
        c = lm.embed_codes(cond_codes)
        o = self.pos_emb[0, :p].expand(c.shape[0], -1, -1)
        out = []
        for i in range(self.cfg.num_layers):
            layer = lm.layers[self.start_layer + i]
            h = layer.norm1(o) + (self.merge_linear[i](c) + self.pos_emb[i + 1, :p])
            q, k, v = layer.self_attn.project(h)
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=p > 1)
            o = o + layer.self_attn.out_proj(merge_heads(attn))
            o = o + layer.feed_forward(layer.norm2(o))
            out.append((q, k, v))
        return out

    def adapters(self, prefixes, last_row: int) -> dict[int, LayerAdapter]:
        """LM layer index -> the adapter that layer applies. Queries past `last_row` use that row
        of the prefix: teacher forcing reaches the special column, generation stops at the last
        frame. The prefixes stay at the items' batch size; guidance rows share them."""
        return {self.start_layer + i: LayerAdapter(q, k, v, self.gates[i], last_row)
                for i, (q, k, v) in enumerate(prefixes)}


def lora_config(cfg: FusionConfig):
    from peft import LoraConfig
    targets = "|".join(cfg.lora_targets)
    return LoraConfig(target_modules=rf".*\.cross_attention\.({targets})", r=cfg.lora_rank,
                      lora_alpha=cfg.lora_alpha, lora_dropout=0.0)


def merged_lora_weight(base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                       scaling: float) -> torch.Tensor:
    """A projection with its LoRA folded in, W + scaling * B @ A (peft's merge), computed in fp32
    whatever the weights' dtype, so that inference in fp16 rounds once."""
    return base.float() + scaling * (lora_b.float() @ lora_a.float())


def add_lora(lm: MusicGenLM, cfg: FusionConfig) -> MusicGenLM:
    """Wrap the cross-attention projections named in `cfg` with LoRA layers (B starts at zero)."""
    from peft import inject_adapter_in_model
    return inject_adapter_in_model(lora_config(cfg), lm)
