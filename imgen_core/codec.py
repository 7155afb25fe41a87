"""EnCodec (transformers `EncodecModel`): 32 kHz mono waveform <-> codes [B, K, frames]."""
from __future__ import annotations

import math
from typing import Callable

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
        # the codebooks used at that bandwidth, at most the quantizer's layers (older transformers
        # may ask for more than it built)
        self.n_q = min(model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth), len(model.quantizer.layers))

    @classmethod
    def from_pretrained(cls, name: str, offline: bool | None = None) -> "Codec":
        from transformers import EncodecModel
        return cls(load_pretrained(EncodecModel, name, "EnCodec", offline))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def frames_for(self, samples: int) -> int:
        return math.ceil(samples / self.hop)

    @torch.no_grad()
    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        p = next(self.model.parameters())
        out = self.model.encode(wav.to(device=p.device, dtype=p.dtype), bandwidth=self.bandwidth)
        return out.audio_codes[0].long()  # [chunks=1, B, K, F] -> [B, K, F]

    @torch.no_grad()
    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes[None].to(self.device), [None]).audio_values.float()

    def encode(self, wav: torch.Tensor, chunk_frames: int = 500, margin_frames: int = 50,
               progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Waveform [B, 1, T] at `sample_rate` -> codes [B, K, ceil(T / hop)] (int64), on CPU.

        Long audio is encoded in chunks with `margin_frames` of context on each side, of which
        only the centre is kept, so memory does not grow with the length. `progress(frames done,
        frames)` after each chunk."""
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"EnCodec takes mono audio [batch, 1, samples], got {list(wav.shape)}")
        total = self.frames_for(wav.shape[-1])
        out = []
        for first in range(0, total, chunk_frames):
            last = min(first + chunk_frames, total)
            lo, hi = max(0, first - margin_frames), min(total, last + margin_frames)
            piece = wav[..., lo * self.hop:hi * self.hop]
            if piece.shape[-1] < (hi - lo) * self.hop:  # whole frames only: the tail padded with silence
                piece = torch.nn.functional.pad(piece, (0, (hi - lo) * self.hop - piece.shape[-1]))
            codes = self._encode(piece)
            out.append(codes[..., first - lo:first - lo + last - first].cpu())
            if progress is not None:
                progress(last, total)
        return torch.cat(out, dim=-1)

    def decode(self, codes: torch.Tensor, chunk_frames: int = 500, overlap_frames: int = 25) -> torch.Tensor:
        """Codes [B, K, F] -> waveform [B, 1, F * hop] (fp32, CPU) at `sample_rate`.

        Long code sequences are decoded in chunks that overlap by `overlap_frames`, joined with a
        linear cross-fade over the overlap."""
        b, _, total = codes.shape
        out = torch.zeros(b, 1, total * self.hop)
        fade = overlap_frames * self.hop
        for first in range(0, total, chunk_frames):
            last = min(first + chunk_frames, total)
            lo = max(0, first - overlap_frames)
            wav = self._decode(codes[..., lo:last]).cpu()[..., :(last - lo) * self.hop]
            if lo == first:
                out[..., first * self.hop:last * self.hop] = wav
                continue
            ramp = torch.linspace(0.0, 1.0, fade + 2)[1:-1]
            head, body = wav[..., :fade], wav[..., fade:]
            region = out[..., lo * self.hop:first * self.hop]
            out[..., lo * self.hop:first * self.hop] = region * (1 - ramp) + head * ramp
            out[..., first * self.hop:last * self.hop] = body
        return out
