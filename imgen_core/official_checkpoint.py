"""The official Instruct-MusicGen checkpoint (`finetuned.ckpt`): a PyTorch Lightning checkpoint
of the whole training module. Its pickle names a few classes besides tensors (the Instructor,
`functools.partial`, AdamW, a scheduler); each is bound to an inert stand-in that only records
what it is given. What inference needs is taken from it: the adapter's tensors and, where the
LM's hyper-parameters are known (`base_config.py`), the whole LM it holds, so that one compact
file is the model (the official inference, too, runs with the checkpoint's LM weights)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch

from .adapter_file import adapter_metadata, expected_adapter_shapes, expected_lm_shapes, write_safetensors
from .checkpoints import CheckpointError, brief, check_sizes, check_tensors, refuse_hollow
from .config import FusionConfig, LMConfig
from .errors import about
from .files import check_writable_folder
from .safe_pickle import safe_load

# The globals that the official training code pickles besides tensors and plain containers.
OFFICIAL_GLOBALS = (
    "src.models.components.model.Instructor",
    "functools.partial",
    "torch.optim.adamw.AdamW",
    "torch.optim.lr_scheduler.CosineAnnealingLR",
    "torch.optim.lr_scheduler.LambdaLR",
)

_OFFICIAL_LM = "model.peft_model.lm.transformer.base_model.model."
_OFFICIAL_CP = "model.cp_transformer."
_OFFICIAL_OUTER = "model.peft_model.lm."
_OFFICIAL_TEXT_PROJ = "model.peft_model.lm.condition_provider.conditioners.description.output_proj."
_CROSS = re.compile(r"layers\.(\d+)\.cross_attention\.((?:q|k|v)_proj\..*)")


def is_official_checkpoint(path) -> bool:
    """Whether an adapter path names the official checkpoint (a torch.save file) rather than ours
    (safetensors): decided by the file name, as every reader here does."""
    return Path(path).suffix.lower() in (".ckpt", ".pt", ".pth", ".bin")


def official_adapter_tensors(state: dict) -> dict[str, torch.Tensor]:
    """Pick and rename what inference needs from the official `state_dict`."""
    out = {}
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        if key.startswith(_OFFICIAL_CP):
            rest = key[len(_OFFICIAL_CP):]
            if rest in ("pos_emb", "gates") or rest.startswith("merge_linear."):
                out["fusion." + rest] = value
        elif key.startswith(_OFFICIAL_LM):
            m = _CROSS.fullmatch(key[len(_OFFICIAL_LM):])
            if m:
                out[f"lm.transformer.layers.{m.group(1)}.cross_attention.{m.group(2)}"] = value
    return out


def official_lm_tensors(state: dict, wanted: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """The LM weights the official checkpoint holds, under our names, limited to `wanted` (the
    fp32 self-attention q/k/v copies the official model never uses, and the cross-attention
    `in_proj_weight` that the adapter's q/k/v replace, are left behind)."""
    out = {}
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        if key.startswith(_OFFICIAL_TEXT_PROJ):
            name = "text_proj." + key[len(_OFFICIAL_TEXT_PROJ):]
        elif key.startswith(_OFFICIAL_LM):
            name = "lm.transformer." + key[len(_OFFICIAL_LM):]
        elif key.startswith(_OFFICIAL_OUTER) and not key.startswith(_OFFICIAL_OUTER + "transformer."):
            name = "lm." + key[len(_OFFICIAL_OUTER):]
        else:
            continue
        if name in wanted:
            out[name] = value
    return out


def holds_lm(state: dict) -> bool:
    """Whether an official state dict carries the LM (the released checkpoint does; a file made
    of the adapter alone does not)."""
    return _OFFICIAL_OUTER + "emb.0.weight" in state


def narrowest(t: torch.Tensor) -> torch.Tensor:
    """`t` in fp16 when fp16 holds every value exactly (the released LM's weights, widened to fp32
    in training), else as it is: the file is as small as it can be and the model the same."""
    if t.dtype != torch.float32:
        return t
    half = t.to(torch.float16)
    return half if torch.equal(half.to(torch.float32), t) else t


def fusion_config_of(tensors: dict[str, torch.Tensor], source: str, lora_alpha: int = 64) -> tuple[FusionConfig, int, int]:
    """Infer (fusion config, LM layers, LM dim) from adapter tensors, bounded."""
    for key in ("fusion.pos_emb", "fusion.gates"):
        if key not in tensors:
            raise CheckpointError(f"{source}: missing keys: {key} (not an Instruct-MusicGen checkpoint?)")
    pos, gates = tensors["fusion.pos_emb"], tensors["fusion.gates"]
    if pos.dim() != 3 or gates.dim() != 1:
        raise CheckpointError(f"{source}: mis-shaped keys: fusion.pos_emb {list(pos.shape)} (expected 3 dims), "
                              f"fusion.gates {list(gates.shape)} (expected 1)")
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"lm\.transformer\.layers\.(\d+)\.", k))}
    if not layers:
        raise CheckpointError(f"{source}: missing keys: the cross-attention q/k/v and LoRA weights")
    lora_a = [v for k, v in tensors.items() if k.endswith("lora_A.default.weight")]
    rank = lora_a[0].shape[0] if lora_a else 32
    targets = tuple(p for p in ("q_proj", "k_proj", "v_proj")
                    if f"lm.transformer.layers.0.cross_attention.{p}.lora_A.default.weight" in tensors)
    cfg = FusionConfig(num_layers=int(gates.shape[0]), max_frames=pos.shape[1] - 1,
                       lora_rank=int(rank), lora_alpha=lora_alpha, lora_targets=targets or ("q_proj", "v_proj"))
    check_sizes(cfg, max(layers) + 1, pos.shape[2], source)
    return cfg, max(layers) + 1, pos.shape[2]


def official_fusion_config(path) -> FusionConfig:
    """The fusion sizes of an official checkpoint, from its pickle and its tensors' shapes (no
    weight is read)."""
    ckpt = safe_load(path, OFFICIAL_GLOBALS, what="Instruct-MusicGen checkpoint")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no 'state_dict': not a Lightning checkpoint")
    return fusion_config_of(official_adapter_tensors(state), str(path))[0]


def read_official_checkpoint(path) -> tuple[FusionConfig, dict[str, torch.Tensor], dict]:
    """The official Lightning checkpoint -> (fusion config, adapter tensors, info). Memory-mapped:
    the rest of the checkpoint (the whole LM, the optimizer state) is never read."""
    ckpt = safe_load(path, OFFICIAL_GLOBALS, what="Instruct-MusicGen checkpoint")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no 'state_dict': not a Lightning checkpoint "
                              f"(top-level keys: {brief(sorted(map(str, ckpt))[:8], 200)})")
    tensors = official_adapter_tensors(state)
    refuse_hollow(tensors, str(path))
    fusion, lm_layers, dim = fusion_config_of(tensors, str(path))
    hp = _instructor_kwargs(ckpt)
    if "num_layers" in hp and hp["num_layers"] != fusion.num_layers:
        raise CheckpointError(f"{path}: hyper-parameters say num_layers={brief(hp['num_layers'], 40)} but the "
                              f"weights hold {fusion.num_layers} gates")
    check_tensors(tensors, expected_adapter_shapes(lm_layers, dim, fusion), str(path))
    info = {"lm_layers": lm_layers, "lm_dim": dim, "hyper_parameters": hp,
            "global_step": ckpt.get("global_step"), "state": state}
    return fusion, tensors, info


def _instructor_kwargs(ckpt: dict) -> dict:
    """`sec`, `num_layers`, ... from the pickled `functools.partial(Instructor, ...)`, if present."""
    hyper = ckpt.get("hyper_parameters")
    partial = hyper.get("instructor") if isinstance(hyper, dict) else None
    state = getattr(partial, "state", None)
    if isinstance(state, tuple) and len(state) >= 3 and isinstance(state[2], dict):
        return {k: v for k, v in state[2].items() if isinstance(v, (int, float, str, bool))}
    return {}


def convert_official(src, dst, base_model: str = "facebook/musicgen-large", dialect: str = "slakh",
                     stems=None, overwrite: bool = False,
                     progress: Callable[[int, int], None] | None = None,
                     base_config: Callable[[], LMConfig] | None = None) -> dict[str, str]:
    """Official `finetuned.ckpt` -> one compact safetensors file. Returns the metadata written.
    With `base_config` (giving the base's hyper-parameters; called only when the checkpoint
    holds the LM, as the released one does) the file holds the whole model: the LM's weights
    from the checkpoint (in fp16 where that is exact, as released) beside the adapter's (as
    trained, fp32), and runs with no base file; otherwise only the adapter, which runs on a
    base. `progress(bytes written, total)` as the file is written."""
    from .instructions import default_stems
    dst = Path(dst)
    if Path(src).resolve() == dst.resolve():
        raise CheckpointError("the output path is the input checkpoint; choose another name")
    if dst.is_dir():
        raise FileExistsError(f"{dst} is a folder; name the adapter file to write (for example {dst / 'adapter.safetensors'})")
    if dst.exists() and not overwrite:
        raise about(FileExistsError(f"{dst} already exists; it is replaced only when asked (overwrite)"), "overwrite")
    check_writable_folder(dst.parent)  # created, when missing, as the file is written
    stems = list(stems) if stems else default_stems(dialect)
    fusion, tensors, info = read_official_checkpoint(src)
    lm_config = base_config() if base_config is not None and holds_lm(info["state"]) else None
    if lm_config is not None:
        if (lm_config.num_layers, lm_config.dim) != (info["lm_layers"], info["lm_dim"]):
            raise CheckpointError(f"{src} holds an LM of {info['lm_layers']} layers x {info['lm_dim']} dims, but the "
                                  f"base config says {lm_config.num_layers} x {lm_config.dim}; name the base it was "
                                  f"trained on")
        wanted = {k: s for k, s in expected_lm_shapes(lm_config, fusion).items() if k not in tensors}
        lm = official_lm_tensors(info.pop("state"), wanted)
        refuse_hollow(lm, str(src))
        check_tensors(lm, wanted, str(src))
        tensors.update((k, narrowest(v)) for k, v in lm.items())
    meta = adapter_metadata(fusion, info["lm_layers"], info["lm_dim"], base_model, dialect, stems,
                            source=Path(src).name, lm_config=lm_config)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, dst, meta, progress)
    return meta
