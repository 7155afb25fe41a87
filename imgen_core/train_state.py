"""What a training run writes and resumes from: the adapter file, and `step_N` folders holding the
adapter with the optimizer, schedule and loss-scaler state."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .adapter_file import adapter_metadata, read_adapter, write_safetensors
from .files import replacing
from .model import InstructMusicGen
from .safe_pickle import safe_load


def save_adapter(model: InstructMusicGen, path: Path, *, base: str, dialect: str, stems, step: int):
    """The trainable weights (and the cross-attention bases the adapter replaces) as our adapter."""
    meta = adapter_metadata(model.fusion_cfg, model.lm_cfg.num_layers, model.lm_cfg.dim, base, dialect, stems,
                            source=f"imgen train, step {step}")
    tensors = {k: v.detach().float().cpu() for k, v in model.adapter_state_dict().items()}
    write_safetensors(tensors, path, meta)


def save_step(folder: Path, model: InstructMusicGen, step: int, optimizer, scheduler, scaler, config: dict, **meta):
    """`folder` (step_N): the adapter and everything needed to continue from it. `meta`: as for
    `save_adapter`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_adapter(model, folder / "adapter.safetensors", step=step, **meta)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "config": json.dumps(config)}
    with replacing(folder / "trainer_state.pt") as f:
        torch.save(state, f)


def resume(folder, model: InstructMusicGen, optimizer, scheduler, scaler, device: torch.device) -> int:
    """Load a step_N folder into the model, optimizer, schedule and scaler; return its step."""
    folder = Path(folder)
    _, tensors, _ = read_adapter(folder / "adapter.safetensors")
    _, unexpected = model.load_state_dict({k: v.to(device) for k, v in tensors.items()}, strict=False)
    if unexpected:
        raise ValueError(f"{folder}: adapter keys this model lacks: {unexpected[:8]}")
    state = safe_load(folder / "trainer_state.pt", what="trainer state", mmap=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return int(state["step"])
