"""EnCodec (transformers `EncodecModel`): 32 kHz mono waveform <-> codes [B, K, frames]."""
from __future__ import annotations

import math

import torch

from .hub import load_pretrained


class Codec:
    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        self.sample_rate = int(cfg.sampling_rate)
        self.hop = math.prod(cfg.upsampling_ratios)
        self.frame_rate = self.sample_rate / self.hop
        self.bandwidth = max(cfg.target_bandwidths)
        self.card = int(cfg.codebook_size)
        self.n_q = model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth)

    @classmethod
    def from_pretrained(cls, name: str = "facebook/encodec_32khz", offline: bool | None = None) -> "Codec":
        from transformers import EncodecModel
        return cls(load_pretrained(EncodecModel, name, "EnCodec", offline))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def frames_for(self, samples: int) -> int:
        return math.ceil(samples / self.hop)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform [B, 1, T] at `sample_rate` -> codes [B, K, ceil(T / hop)] (int64)."""
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"EnCodec takes mono audio [batch, 1, samples], got {list(wav.shape)}")
        p = next(self.model.parameters())
        out = self.model.encode(wav.to(device=p.device, dtype=p.dtype), bandwidth=self.bandwidth)
        codes = out.audio_codes  # [chunks=1, B, K, F]
        return codes[0].long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, F] -> waveform [B, 1, F * hop] (fp32) at `sample_rate`."""
        out = self.model.decode(codes[None].to(self.device), [None])
        return out.audio_values.float()
