"""The T5 text encoder (frozen). Its 768 -> d projection belongs to the LM checkpoint and lives in
`InstructMusicGen.text_proj`."""
from __future__ import annotations

import torch
from torch import nn

from .hub import load_pretrained


class TextEncoder(nn.Module):
    def __init__(self, tokenizer, encoder):
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, name: str, offline: bool | None = None) -> "TextEncoder":
        from transformers import AutoTokenizer, T5EncoderModel
        tokenizer = load_pretrained(AutoTokenizer, name, "T5 tokenizer", offline)
        encoder = load_pretrained(T5EncoderModel, name, "T5 encoder", offline)
        return cls(tokenizer, encoder)

    @property
    def dim(self) -> int:
        return self.encoder.config.d_model

    @torch.no_grad()
    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [B, L, dim] (fp32) and mask [B, L]; an empty text is fully masked."""
        device = next(self.encoder.parameters()).device
        inputs = self.tokenizer(list(texts), return_tensors="pt", padding=True).to(device)
        mask = inputs["attention_mask"].clone()
        for i, text in enumerate(texts):
            if text == "":
                mask[i] = 0
        hidden = self.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        return hidden.float(), mask
