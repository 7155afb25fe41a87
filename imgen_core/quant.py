"""Int8 quantisation of the LM's linear layers (and the condition stream's, which are the same
layers plus the fusion's merge projections): each weight row stored as int8 with one scale per
output channel. Decoding reads every weight once per step, so a quarter of fp32's bytes (half of
fp16's) is that much less time, and memory.

On the CPU (`pack_for_cpu`, done by the loader) the weights are handed to fbgemm, PyTorch's x86
int8 library, whose dynamic int8 product quantises each call's activations to 7 bits on the fly
and keeps everything else in fp32: on a 2-core AVX2 machine a MusicGen-small decode step takes
0.58x bf16's time against 0.80x with PyTorch's int8-weight kernel (benchmarks/decode_speed.py),
with logits closer to fp32's than bf16 activations give (benchmarks/int8_quality.py).
Elsewhere (CUDA) the activations are fp16 and the weight is dequantised on the fly (the memory
saving stays, the speed-up may not); an unpacked layer on the CPU uses PyTorch's int8-weight
kernel (`_weight_int8pack_mm`).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], fp32 scales [out]): symmetric, per output channel."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def fbgemm_available() -> bool:
    """Whether this PyTorch has fbgemm and the quantized-tensor API that reaches it (deprecated
    in recent releases: without it, the CPU uses PyTorch's int8-weight kernel)."""
    return ("fbgemm" in torch.backends.quantized.supported_engines
            and hasattr(torch, "_make_per_channel_quantized_tensor")
            and hasattr(torch.ops.quantized, "linear_dynamic"))


class Int8Linear(nn.Module):
    """A bias-free linear layer with int8 weights: y = (x @ int8^T) * scale. Packed for fbgemm
    (`pack`), the packed form is the only copy of the weights; moving the layer unpacks it."""

    def __init__(self, out_features: int, in_features: int, dtype: torch.dtype = torch.bfloat16, device=None):
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.register_buffer("weight_int8", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(out_features, dtype=dtype, device=device))
        self.packed = None

    def pack(self):
        zero = torch.zeros(self.scale.shape, dtype=torch.long)
        with warnings.catch_warnings():  # the deprecation of quantized tensors, see fbgemm_available
            warnings.simplefilter("ignore", UserWarning)
            weight = torch._make_per_channel_quantized_tensor(self.weight_int8, self.scale.double(), zero, 0)
        self.packed = torch.ops.quantized.linear_prepack(weight, None)
        self.weight_int8 = torch.empty(0, dtype=torch.int8)

    def unpack(self):
        weight, _ = torch.ops.quantized.linear_unpack(self.packed)
        self.weight_int8, self.packed = weight.int_repr(), None

    def _apply(self, fn, recurse=True):
        if self.packed is not None and fn(torch.empty(0, dtype=torch.int8)).device.type != "cpu":
            self.unpack()  # leaving the CPU: the plain int8 tensor travels
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.packed is not None:  # a copy of the weights as fbgemm holds them; the layer stays packed
            destination[prefix + "weight_int8"] = torch.ops.quantized.linear_unpack(self.packed)[0].int_repr()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if self.packed is not None:
            out = torch.ops.quantized.linear_dynamic(flat.float().contiguous(), self.packed, True)
            return out.to(x.dtype).reshape(*x.shape[:-1], -1)
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


def pack_for_cpu(model: nn.Module) -> nn.Module:
    """Hand every int8 layer on the CPU to fbgemm (where PyTorch has it); in place."""
    if fbgemm_available():
        for layer in model.modules():
            if isinstance(layer, Int8Linear) and layer.packed is None and layer.weight_int8.device.type == "cpu":
                layer.pack()
    return model


def int8_activation_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA; on the CPU fp32 for fbgemm's product (which takes fp32), else bf16."""
    if device.type == "cuda":
        return torch.float16
    return torch.float32 if fbgemm_available() else torch.bfloat16


def quantize_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A loaded float model's target weights quantised in place, the rest cast to `dtype`, and
    on the CPU packed (the loader quantises while loading instead; this is for models built in
    memory)."""
    floats = {name: model.get_parameter(name).detach() for name in int8_targets(model)}
    device = next(iter(floats.values())).device
    for name, module_name in swap_to_int8(model, dtype, device).items():
        weight, scale = quantize_weight(floats.pop(name))
        layer = model.get_submodule(module_name)
        layer.weight_int8.copy_(weight)
        layer.scale.copy_(scale)
    return pack_for_cpu(model.to(dtype))
