"""The base MusicGen LM as audiocraft exports it: a torch.save dict with `best_state` (the
weights, usually float16) and `xp.cfg` (the training config, YAML)."""
from __future__ import annotations

import dataclasses

import torch
import yaml

from . import plain_text
from .checkpoints import CheckpointError, brief, check_lm_sizes, refuse_hollow
from .config import T5_WIDTHS, ConfigError, LMConfig
from .safe_pickle import safe_load

TEXT_PROJ_PREFIX = "condition_provider.conditioners.description.output_proj."


def read_audiocraft_lm(path, dtype: torch.dtype | None = None) -> tuple[LMConfig, dict[str, torch.Tensor]]:
    """An audiocraft `state_dict.bin` -> (config, state dict in our model's names).

    `dtype`: the one the weights will take. When the file holds every weight in it already, the
    tensors stay memory-mapped: read when used, never copied, and the parts the adapter replaces
    never read. Otherwise each tensor is read into its own memory, so that the loader frees it
    as soon as it has converted it."""
    pkg = safe_load(path, what="MusicGen LM checkpoint", mmap=True)
    best = pkg.get("best_state")
    if isinstance(best, dict) and any(isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype
                                      for t in best.values()):
        pkg = safe_load(path, what="MusicGen LM checkpoint", mmap=False)
    if "best_state" not in pkg or "xp.cfg" not in pkg:
        raise CheckpointError(f"{path} is not an audiocraft MusicGen LM export: expected keys "
                              f"'best_state' and 'xp.cfg', found {brief(sorted(map(str, pkg))[:8], 200)}")
    lm_cfg = _config(pkg.pop("xp.cfg"), path)
    best = pkg.pop("best_state")
    if not isinstance(best, dict) or not all(isinstance(k, str) for k in best):
        raise CheckpointError(f"{path}: 'best_state' is a {type(best).__name__} without text keys; expected a "
                              f"dict of named tensors")
    refuse_hollow(best, str(path))
    state = {}
    for key in list(best):
        value = best.pop(key)
        if key.startswith(TEXT_PROJ_PREFIX):
            state["text_proj." + key[len(TEXT_PROJ_PREFIX):]] = value
        elif not key.startswith("condition_provider."):
            state["lm." + key] = value
    proj = state.get("text_proj.weight")
    if proj is not None and proj.dim() == 2:  # the projection's input width is the text encoder's
        lm_cfg = dataclasses.replace(lm_cfg, text_dim=int(proj.shape[1]))
    check_lm_sizes(lm_cfg, str(path))
    return lm_cfg, state


def read_audiocraft_config(path) -> LMConfig:
    """Only the config of an audiocraft `state_dict.bin` (its weights memory-mapped, never read)."""
    pkg = safe_load(path, what="MusicGen LM checkpoint", mmap=True)
    best = pkg.get("best_state")
    if "xp.cfg" not in pkg or not isinstance(best, dict):
        raise CheckpointError(f"{path} is not an audiocraft MusicGen LM export: expected keys "
                              f"'best_state' and 'xp.cfg', found {brief(sorted(map(str, pkg))[:8], 200)}")
    lm_cfg = _config(pkg["xp.cfg"], path)
    proj = best.get(TEXT_PROJ_PREFIX + "weight")
    if isinstance(proj, torch.Tensor) and proj.dim() == 2:  # the projection's input width is the text encoder's
        lm_cfg = dataclasses.replace(lm_cfg, text_dim=int(proj.shape[1]))
    check_lm_sizes(lm_cfg, str(path))
    return lm_cfg


def _config(cfg, path) -> LMConfig:
    if isinstance(cfg, str):
        try:
            cfg = plain_text.parse_yaml(cfg, "'xp.cfg'")  # no tags (!!python/...), no aliases, bounded depth
        except ValueError as e:
            raise CheckpointError(f"{path}: {brief(e, 300)}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: 'xp.cfg' is a {type(cfg).__name__}, expected a YAML text or a dict")
    try:
        lm_cfg = LMConfig.from_audiocraft(cfg)
    except (KeyError, ConfigError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise CheckpointError(f"{path}: unusable 'xp.cfg': {brief(e, 200)}") from None
    check_lm_sizes(lm_cfg, str(path))
    return lm_cfg


def audiocraft_config(cfg: LMConfig) -> dict:
    """The parts of an audiocraft `xp.cfg` that `LMConfig.from_audiocraft` reads."""
    t5 = next((name for name, width in T5_WIDTHS.items() if width == cfg.text_dim), "t5-base")
    return {
        "transformer_lm": {"dim": cfg.dim, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers,
                           "hidden_scale": cfg.hidden_scale, "n_q": cfg.n_q, "card": cfg.card,
                           "activation": "gelu", "norm_first": True, "bias_ff": False, "bias_attn": False,
                           "bias_proj": False, "positional_embedding": "sin", "layer_scale": None,
                           "norm": "layer_norm", "causal": True, "cross_attention": False},
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": list(cfg.delays)}},
        "fuser": {"cross": ["description"], "prepend": [], "sum": [], "cross_attention_pos_emb": False},
        "conditioners": {"description": {"model": "t5", "t5": {"name": t5}}},
        "sample_rate": 32000, "channels": 1,
    }


def write_audiocraft_lm(path, cfg: LMConfig, state: dict[str, torch.Tensor], dtype=torch.float16):
    """Write a base LM (our names: `lm.*`, `text_proj.*`) as an audiocraft `state_dict.bin`."""
    best = {}
    for key, value in state.items():
        if key.startswith("text_proj."):
            best[TEXT_PROJ_PREFIX + key[len("text_proj."):]] = value
        elif key.startswith("lm.") and ".cross_attention." in key and "_proj." in key and "out_proj" not in key:
            continue  # fused back below
        elif key.startswith("lm."):
            best[key[3:]] = value
    for i in range(cfg.num_layers):
        p = f"lm.transformer.layers.{i}.cross_attention."
        parts = [state.get(p + f"{n}.weight", state.get(p + f"{n}.base_layer.weight")) for n in ("q_proj", "k_proj", "v_proj")]
        best[f"transformer.layers.{i}.cross_attention.in_proj_weight"] = torch.cat(parts, dim=0)
    best = {k: v.detach().to(dtype).contiguous() for k, v in best.items()}
    torch.save({"best_state": best, "xp.cfg": yaml.safe_dump(audiocraft_config(cfg)), "version": "1.3.0",
                "exported": True}, path)
