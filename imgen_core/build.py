"""Assembling a model from weight files: base MusicGen LM, then (optionally) the adapter."""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import (CheckpointError, check_tensors, read_adapter, read_audiocraft_lm,
                          read_official_checkpoint)
from .config import FusionConfig, LMConfig
from .model import InstructMusicGen


def is_official_checkpoint(path) -> bool:
    return Path(path).suffix.lower() in (".ckpt", ".pt", ".pth", ".bin")


def read_any_adapter(path) -> tuple[FusionConfig, dict[str, torch.Tensor], dict]:
    """Our safetensors adapter, or the official Lightning checkpoint read in place."""
    if is_official_checkpoint(path):
        fusion, tensors, info = read_official_checkpoint(path)
        meta = {"lm_layers": str(info["lm_layers"]), "lm_dim": str(info["lm_dim"]), "dialect": "slakh"}
        return fusion, tensors, meta
    return read_adapter(path)


def build_model(lm_cfg: LMConfig, base_state: dict, fusion_cfg: FusionConfig | None = None,
                adapter: dict | None = None, source: str = "base checkpoint") -> InstructMusicGen:
    """A model in fp32 from a base state dict (our names) and, optionally, adapter tensors."""
    model = InstructMusicGen(lm_cfg, fusion_cfg)
    expected = model.base_state_dict()
    shapes = {k: tuple(v.shape) for k, v in expected.items()}
    given = _split_cross_in_proj(base_state, model)
    if adapter is not None:
        # the adapter's q/k/v bases replace the in_proj slices (see DESIGN: fused-model quirk)
        given = {k: v for k, v in given.items() if k not in adapter}
    check_tensors(given, {k: s for k, s in shapes.items() if k not in (adapter or {})}, source)
    state = {k: v.float() for k, v in given.items()}
    if adapter is not None:
        state.update({k: v.float() for k, v in adapter.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or (adapter is not None and missing):
        raise CheckpointError(f"{source}: missing keys: {missing[:12]}; unexpected keys: {unexpected[:12]}")
    return model.eval().requires_grad_(False)


def _split_cross_in_proj(state: dict, model: InstructMusicGen) -> dict:
    """audiocraft's fused cross-attention `in_proj_weight` -> the q/k/v names of our model."""
    out = {}
    names = set(model.state_dict())
    for key, value in state.items():
        if key.endswith("cross_attention.in_proj_weight"):
            prefix = key[: -len("in_proj_weight")]
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                wrapped = prefix + f"{proj}.base_layer.weight"
                out[wrapped if wrapped in names else prefix + f"{proj}.weight"] = part
        else:
            out[key] = value
    return out


def load_base(path) -> InstructMusicGen:
    """Plain MusicGen from an audiocraft `state_dict.bin`."""
    lm_cfg, state = read_audiocraft_lm(path)
    return build_model(lm_cfg, state, source=str(path))


def load_instruct(base_path, adapter_path) -> tuple[InstructMusicGen, dict]:
    """Instruct-MusicGen from the base `state_dict.bin` and an adapter (safetensors or official
    `.ckpt`). Returns the model and the adapter's metadata."""
    lm_cfg, state = read_audiocraft_lm(base_path)
    fusion, tensors, meta = read_any_adapter(adapter_path)
    if int(meta["lm_layers"]) != lm_cfg.num_layers or int(meta["lm_dim"]) != lm_cfg.dim:
        raise CheckpointError(
            f"adapter {adapter_path} was made for an LM of {meta['lm_layers']} layers x {meta['lm_dim']} "
            f"dims, but the base {base_path} has {lm_cfg.num_layers} x {lm_cfg.dim}; pick the matching "
            f"base model ({meta.get('base_model', 'see the adapter metadata')})")
    model = build_model(lm_cfg, state, fusion, tensors, source=str(base_path))
    return model, meta
