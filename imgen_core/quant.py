"""Int8 weight-only quantisation of the LM's linear layers (and the condition stream's, which are
the same layers plus the fusion's merge projections): each weight row stored as int8 with one
scale per output channel, activations kept in bf16 / fp16 / fp32. Decoding reads every weight
once per step, so half the bytes of bf16 is up to half the time, and half the memory.

On the CPU the matrix product runs in PyTorch's int8-weight kernel (`_weight_int8pack_mm`, the
one torchao's int8 weight-only mode uses); elsewhere, or where that kernel refuses the input, the
weight is dequantised on the fly (the memory saving stays, the speed-up may not).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], fp32 scales [out]): symmetric, per output channel."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A bias-free linear layer with int8 weights: y = (x @ int8^T) * scale."""

    def __init__(self, out_features: int, in_features: int, dtype: torch.dtype = torch.bfloat16, device=None):
        super().__init__()
        self.register_buffer("weight_int8", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(out_features, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        scale = self.scale.to(x.dtype)
        if x.device.type == "cpu":
            try:
                out = torch.ops.aten._weight_int8pack_mm(flat.contiguous(), self.weight_int8, scale)
                return out.reshape(*x.shape[:-1], -1)
            except (RuntimeError, NotImplementedError):
                pass
        out = F.linear(flat, self.weight_int8.to(x.dtype)) * scale
        return out.reshape(*x.shape[:-1], -1)


def int8_targets(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Names of the weights that int8 replaces -> their shape: every bias-free nn.Linear of the
    LM (the transformer and the output heads) and of the fusion's merge projections, and the
    self-attention's fused in-projection."""
    targets = {}
    for prefix in ("lm.", "fusion.merge_linear."):
        for name, module in model.named_modules():
            full = name + "."
            if not full.startswith(prefix) or ".lora_" in full:
                continue
            if isinstance(module, nn.Linear) and module.bias is None:
                targets[full + "weight"] = tuple(module.weight.shape)
            elif hasattr(module, "in_proj_weight"):
                targets[full + "in_proj_weight"] = tuple(module.in_proj_weight.shape)
    return targets


def swap_to_int8(model: nn.Module, dtype: torch.dtype, device=None) -> dict[str, str]:
    """Replace the target layers by empty Int8Linear modules, in place (on the meta device before
    loading). Returns weight name -> the Int8Linear's name, for the state dict."""
    renamed = {}
    for weight, (out_f, in_f) in int8_targets(model).items():
        owner_name, attr = weight.rsplit(".", 1)
        if attr == "weight":  # an nn.Linear: replace the module itself
            parent_name, child = owner_name.rsplit(".", 1)
            parent = model.get_submodule(parent_name)
            setattr(parent, child, Int8Linear(out_f, in_f, dtype, device))
            renamed[weight] = owner_name
        else:  # the fused in-projection parameter: an Int8Linear beside it takes its place
            owner = model.get_submodule(owner_name)
            del owner.in_proj_weight
            owner.in_proj = Int8Linear(out_f, in_f, dtype, device)
            renamed[weight] = owner_name + ".in_proj"
    return renamed


def quantize_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A loaded float model's target weights quantised in place, the rest cast to `dtype` (the
    loader quantises while loading instead; this is for models built in memory)."""
    floats = {name: model.get_parameter(name).detach() for name in int8_targets(model)}
    device = next(iter(floats.values())).device
    for name, module_name in swap_to_int8(model, dtype, device).items():
        weight, scale = quantize_weight(floats.pop(name))
        layer = model.get_submodule(module_name)
        layer.weight_int8.copy_(weight)
        layer.scale.copy_(scale)
    return model.to(dtype)
