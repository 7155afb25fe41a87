"""The fused Instruct-MusicGen model: MusicGen LM + text projection + audio fusion + LoRA."""
from __future__ import annotations

import torch
from torch import nn

from . import pattern
from .config import FusionConfig, LMConfig
from .fusion import AudioFusion, add_lora
from .lm import MusicGenLM


def with_special_column(codes: torch.Tensor, special: int) -> torch.Tensor:
    """Append one column of the special token to condition codes [B, K, T] -> [B, K, T + 1]."""
    return torch.cat([codes, torch.full_like(codes[..., :1], special)], dim=-1)


class InstructMusicGen(nn.Module):
    """Without `fusion_cfg` this is plain MusicGen; with it, the Instruct-MusicGen editor."""

    def __init__(self, lm_cfg: LMConfig, fusion_cfg: FusionConfig | None = None, lora: bool = True):
        super().__init__()
        self.lm_cfg = lm_cfg
        self.fusion_cfg = fusion_cfg
        self.lm = MusicGenLM(lm_cfg)
        self.text_proj = nn.Linear(lm_cfg.text_dim, lm_cfg.dim)
        self.fusion = None
        if fusion_cfg is not None:
            self.fusion = AudioFusion(lm_cfg, fusion_cfg)
            if lora:  # without: the projections hold LoRA merged in (loaded that way for inference)
                add_lora(self.lm, fusion_cfg)

    @property
    def device(self) -> torch.device:
        return self.text_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.out_norm.weight.dtype

    def text_condition(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """T5 hidden states [B, L, text_dim] and mask [B, L] -> cross-attention source [B, L, dim];
        masked positions become zero vectors (which still take part in attention)."""
        proj = self.text_proj(hidden.to(self.text_proj.weight))
        return proj * mask.to(proj.dtype)[..., None]

    def check_codes(self, codes: torch.Tensor, name: str = "codes"):
        cfg = self.lm_cfg
        if codes.dim() != 3 or codes.shape[1] != cfg.n_q:
            raise ValueError(f"{name} must have shape [batch, {cfg.n_q}, frames], got {list(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= cfg.card):
            raise ValueError(f"{name} must hold code ids in 0..{cfg.card - 1}")

    def prefixes(self, cond_codes: torch.Tensor):
        """The audio fusion prefixes for condition codes [B, K, T] (the special column is added here)."""
        if self.fusion is None:
            return None
        return self.fusion.prefixes(self.lm, with_special_column(cond_codes, self.lm_cfg.special_token))

    def sequence_logits(self, target_codes: torch.Tensor, cond_codes: torch.Tensor | None,
                        text_cond: torch.Tensor):
        """Teacher forcing: the pattern sequence [B, K, T + 1] of `target_codes` and its logits."""
        cfg = self.lm_cfg
        t = target_codes.shape[-1]
        seq = pattern.build_sequence(target_codes, cfg.delays, cfg.special_token, steps=t + 1)
        adapters = None
        if self.fusion is not None and cond_codes is not None:
            if cond_codes.shape[-1] != t:
                raise ValueError(f"condition has {cond_codes.shape[-1]} frames, target has {t}")
            adapters = self.fusion.adapters(self.prefixes(cond_codes), last_row=t)
        cross_kv = self.lm.cross_keys_values(text_cond)
        return seq, self.lm(seq, cross_kv, adapters=adapters)

    def forward(self, target_codes: torch.Tensor, cond_codes: torch.Tensor | None, text_cond: torch.Tensor):
        """Per-frame logits [B, K, T, card] (NaN where invalid) and their validity mask [B, K, T]."""
        _, seq_logits = self.sequence_logits(target_codes, cond_codes, text_cond)
        return pattern.revert_logits(seq_logits, self.lm_cfg.delays, target_codes.shape[-1])

    def merge_lora(self) -> "InstructMusicGen":
        """Fold the LoRA weights into the cross-attention projections for inference (one matrix
        product per projection instead of three). Training needs them apart: `unmerge_lora`."""
        for module in self.lm.modules():
            if hasattr(module, "merge") and hasattr(module, "lora_A") and not getattr(module, "merged", False):
                module.merge()
        return self

    def unmerge_lora(self) -> "InstructMusicGen":
        for module in self.lm.modules():
            if hasattr(module, "unmerge") and hasattr(module, "lora_A") and getattr(module, "merged", False):
                module.unmerge()
        return self

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything an adapter file holds: fusion parameters, LoRA, cross-attention q/k/v bases."""
        lora = [m for m in self.lm.modules() if hasattr(m, "lora_A")]
        if not lora or any(getattr(m, "merged", False) for m in lora):
            raise ValueError("LoRA is merged into the projections; call unmerge_lora() before saving an adapter")
        keep = ("fusion.", ".cross_attention.q_proj.", ".cross_attention.k_proj.", ".cross_attention.v_proj.")
        return {k: v for k, v in self.state_dict().items() if k.startswith(keep[0]) or any(s in k for s in keep[1:])}

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The base MusicGen weights: everything but the fusion parameters and LoRA (the
        cross-attention q/k/v bases are in both: the adapter's replace the base's)."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith("fusion.") and ".lora_" not in k}
