"""The base MusicGen's hyper-parameters (heads, sizes, delays) without its weights.

The official checkpoint holds every weight of the fused model, the whole LM included, but not the
hyper-parameters that shapes do not show (the number of attention heads): the official code takes
them from the MusicGen it builds (`facebook/musicgen-large`). Here they come from that model's
`config.json` (a few kilobytes) or, where the user has it, from its `state_dict.bin` (`xp.cfg`).
"""
from __future__ import annotations

from pathlib import Path

from . import plain_text
from .audiocraft_lm import read_audiocraft_config
from .checkpoints import CheckpointError, brief, check_lm_sizes
from .config import ConfigError, LMConfig
from .hub import is_repo_id, resolve_file

CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 1024 * 1024  # musicgen-large's config.json is 7.9 kB


def base_lm_config(spec, offline: bool | None = None) -> LMConfig:
    """The LM config of a base named by `spec`: a `config.json`, an audiocraft `state_dict.bin`, a
    folder holding either, or a Hugging Face repo id (its `config.json` is downloaded, not the
    weights)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        for name in (CONFIG_FILE, "state_dict.bin"):
            if (path / name).is_file():
                return base_lm_config(path / name)
        raise FileNotFoundError(f"base MusicGen: no {CONFIG_FILE} or state_dict.bin in folder {path}")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return _from_json(path)
        return read_audiocraft_config(path)
    if not is_repo_id(spec):
        raise FileNotFoundError(f"base MusicGen: {spec} is neither a file, a folder, nor a Hugging Face repo id")
    return _from_json(resolve_file(spec, CONFIG_FILE, "base MusicGen config", offline))


def _from_json(path: Path) -> LMConfig:
    try:
        cfg = plain_text.parse_json(plain_text.read_file(path, "MusicGen config", MAX_CONFIG_BYTES), str(path))
        if not isinstance(cfg, dict):
            raise ConfigError(f"a {type(cfg).__name__}, expected a mapping")
        lm_cfg = LMConfig.from_transformers(cfg)
    except (ConfigError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a usable MusicGen config.json: {brief(e, 200)}") from None
    check_lm_sizes(lm_cfg, str(path))
    return lm_cfg
