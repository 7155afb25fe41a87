"""Reading and writing weights without ever running code from a file.

- audiocraft `state_dict.bin` (base MusicGen LM): `best_state` + `xp.cfg`.
- the official Instruct-MusicGen Lightning checkpoint (`finetuned.ckpt`): its pickle names a few
  classes (the Instructor, `functools.partial`, AdamW, a scheduler); each is bound to an inert
  stand-in that only records what it is given, and any other global is refused before anything
  is built.
- our adapter: a safetensors file with only what inference needs, written tensor by tensor.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import torch
import yaml

from .config import ConfigError, FusionConfig, LMConfig

ADAPTER_FORMAT = "instruct-musicgen-adapter"
ADAPTER_VERSION = "1"


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message says what is wrong with it."""


class Inert:
    """Stand-in for a class named in a checkpoint's pickle: records its arguments, runs nothing."""

    qualified_name = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<inert {self.qualified_name}>"


def _inert(name: str) -> type:
    return type("Inert_" + name.replace(".", "_"), (Inert,), {"qualified_name": name})


# The globals that the official training code pickles besides tensors and plain containers.
OFFICIAL_GLOBALS = (
    "src.models.components.model.Instructor",
    "functools.partial",
    "torch.optim.adamw.AdamW",
    "torch.optim.lr_scheduler.CosineAnnealingLR",
    "torch.optim.lr_scheduler.LambdaLR",
)


# Bounds on sizes a file declares, checked before anything is allocated from them: far above
# MusicGen-large (48 layers of width 2048), far below what would exhaust a machine.
MAX_LAYERS = 256
MAX_DIM = 8192
MAX_FRAMES = 3000  # position embeddings: 60 s at 50 frames/s (the released model has 500)


def brief(text, limit: int = 300) -> str:
    """Text from a file or a library, made safe to show: one line, at most `limit` characters,
    and without torch's advice to turn its weights-only safety off (never do that here)."""
    text = str(text)
    reason = re.search(r"WeightsUnpickler error: (.*)", text)
    if reason:
        text = reason.group(1)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def safe_load(path: str | os.PathLike, allowed_globals=(), what: str = "checkpoint") -> dict:
    """`torch.load` restricted to tensors, plain containers and `allowed_globals` (bound to inert
    stand-ins). Storages are memory-mapped, so nothing is read until a tensor is used."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes)")
    stubs = [(_inert(name), name) for name in allowed_globals]
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{what} {path} is truncated or corrupt: it is not a PyTorch zip archive "
                              f"(the format torch.save has written since PyTorch 1.6)")
    _check_zip(path, what)
    try:
        with torch.serialization.safe_globals(stubs):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        name = re.search(r"GLOBAL ([\w.]+)", str(e))
        allowed = ", ".join(allowed_globals) or "none"
        if name:
            raise CheckpointError(
                f"refusing {what} {path}: its pickle references '{name.group(1)}', which is not a "
                f"tensor, a plain container or one of the known names ({allowed}). Nothing from the "
                f"file was executed.") from None
        raise CheckpointError(f"refusing {what} {path}: {brief(e)}. Nothing from the file was executed.") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{what} {path} is truncated or corrupt and cannot be read: {brief(e)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def _check_zip(path: Path, what: str):
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{what} {path} is truncated or corrupt: {e}") from None
    size = path.stat().st_size
    for info in infos:
        if info.header_offset + info.compress_size > size:
            raise CheckpointError(f"{what} {path} is truncated: entry {info.filename} runs past the end")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            # torch.save never compresses; a compressed entry could unpack to far more than the file
            raise CheckpointError(f"{what} {path}: entry {brief(info.filename, 80)} is compressed "
                                  f"({info.compress_size} bytes unpacking to {info.file_size}); torch.save never "
                                  f"compresses, so this is not a file it wrote")


# ---------------------------------------------------------------- audiocraft base LM

TEXT_PROJ_PREFIX = "condition_provider.conditioners.description.output_proj."


def read_audiocraft_lm(path) -> tuple[LMConfig, dict[str, torch.Tensor]]:
    """An audiocraft `state_dict.bin` -> (config, state dict in our model's names)."""
    pkg = safe_load(path, what="MusicGen LM checkpoint")
    if "best_state" not in pkg or "xp.cfg" not in pkg:
        raise CheckpointError(f"{path} is not an audiocraft MusicGen LM export: expected keys "
                              f"'best_state' and 'xp.cfg', found {sorted(pkg)[:8]}")
    cfg = pkg["xp.cfg"]
    if isinstance(cfg, str):
        try:
            cfg = yaml.safe_load(cfg)  # plain YAML only: tags such as !!python/... are refused
        except (yaml.YAMLError, RecursionError) as e:
            raise CheckpointError(f"{path}: 'xp.cfg' is not plain YAML: {brief(e, 200)}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: 'xp.cfg' is a {type(cfg).__name__}, expected a YAML text or a dict")
    try:
        lm_cfg = LMConfig.from_audiocraft(cfg)
    except (KeyError, ConfigError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: unusable 'xp.cfg': {brief(e, 200)}") from None
    state = {}
    for key, value in pkg["best_state"].items():
        if key.startswith(TEXT_PROJ_PREFIX):
            state["text_proj." + key[len(TEXT_PROJ_PREFIX):]] = value
        elif key.startswith("condition_provider."):
            continue
        else:
            state["lm." + key] = value
    if "text_proj.weight" in state:  # the projection's input width is the text encoder's
        lm_cfg = dataclasses.replace(lm_cfg, text_dim=int(state["text_proj.weight"].shape[1]))
    return lm_cfg, state


# ---------------------------------------------------------------- official Instruct-MusicGen

_OFFICIAL_LM = "model.peft_model.lm.transformer.base_model.model."
_OFFICIAL_CP = "model.cp_transformer."
_CROSS = re.compile(r"layers\.(\d+)\.cross_attention\.((?:q|k|v)_proj\..*)")


def official_adapter_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pick and rename what inference needs from the official `state_dict`."""
    out = {}
    for key, value in state.items():
        if key.startswith(_OFFICIAL_CP):
            rest = key[len(_OFFICIAL_CP):]
            if rest in ("pos_emb", "gates") or rest.startswith("merge_linear."):
                out["fusion." + rest] = value
        elif key.startswith(_OFFICIAL_LM):
            m = _CROSS.fullmatch(key[len(_OFFICIAL_LM):])
            if m:
                out[f"lm.transformer.layers.{m.group(1)}.cross_attention.{m.group(2)}"] = value
    return out


def expected_adapter_shapes(lm_layers: int, dim: int, fusion: FusionConfig) -> dict[str, tuple]:
    shapes = {"fusion.pos_emb": (fusion.num_layers + 1, fusion.max_frames + 1, dim),
              "fusion.gates": (fusion.num_layers,)}
    for i in range(fusion.num_layers):
        shapes[f"fusion.merge_linear.{i}.weight"] = (dim, dim)
    r = fusion.lora_rank
    for i in range(lm_layers):
        p = f"lm.transformer.layers.{i}.cross_attention."
        for proj in ("q_proj", "k_proj", "v_proj"):
            if proj in fusion.lora_targets:
                shapes[p + f"{proj}.base_layer.weight"] = (dim, dim)
                shapes[p + f"{proj}.lora_A.default.weight"] = (r, dim)
                shapes[p + f"{proj}.lora_B.default.weight"] = (dim, r)
            else:
                shapes[p + f"{proj}.weight"] = (dim, dim)
    return shapes


def refuse_hollow(tensors: dict, source: str):
    """Refuse tensors whose values are not all in the file: views with a zero stride or a storage
    smaller than their size (a few bytes in the file could otherwise claim gigabytes)."""
    hollow = [k for k, t in tensors.items() if not isinstance(t, torch.Tensor)
              or any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape))
              or t.untyped_storage().nbytes() < t.numel() * t.element_size()]
    if hollow:
        raise CheckpointError(f"{source}: {_some(hollow)} are not tensors stored in the file (repeated or "
                              f"missing values behind a view); a real checkpoint stores every value")


def check_tensors(tensors: dict, expected: dict[str, tuple], source: str, allow_extra: bool = False):
    """Refuse missing, mis-shaped, hollow or (unless allowed) unexpected keys, naming them."""
    refuse_hollow(tensors, source)
    missing = sorted(k for k in expected if k not in tensors)
    wrong = sorted(f"{k} {list(tensors[k].shape)} (expected {list(expected[k])})"
                   for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k]))
    extra = [] if allow_extra else sorted(k for k in tensors if k not in expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_some(missing)}")
    if wrong:
        problems.append(f"mis-shaped keys: {_some(wrong)}")
    if extra:
        problems.append(f"unexpected keys: {_some(extra)}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    non_finite = [k for k in expected if tensors[k].is_floating_point() and not torch.isfinite(tensors[k]).all()]
    if non_finite:
        raise CheckpointError(f"{source}: non-finite values (NaN or inf) in {_some(non_finite)}")


def _some(items, n=12) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def fusion_config_of(tensors: dict[str, torch.Tensor], source: str, lora_alpha: int = 64) -> tuple[FusionConfig, int, int]:
    """Infer (fusion config, LM layers, LM dim) from adapter tensors."""
    for key in ("fusion.pos_emb", "fusion.gates"):
        if key not in tensors:
            raise CheckpointError(f"{source}: missing keys: {key} (not an Instruct-MusicGen checkpoint?)")
    pos = tensors["fusion.pos_emb"]
    if pos.dim() != 3:
        raise CheckpointError(f"{source}: mis-shaped keys: fusion.pos_emb {list(pos.shape)} (expected 3 dims)")
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"lm\.transformer\.layers\.(\d+)\.", k))}
    if not layers:
        raise CheckpointError(f"{source}: missing keys: the cross-attention q/k/v and LoRA weights")
    lora_a = [v for k, v in tensors.items() if k.endswith("lora_A.default.weight")]
    rank = lora_a[0].shape[0] if lora_a else 32
    targets = tuple(p for p in ("q_proj", "k_proj", "v_proj")
                    if f"lm.transformer.layers.0.cross_attention.{p}.lora_A.default.weight" in tensors)
    cfg = FusionConfig(num_layers=int(tensors["fusion.gates"].shape[0]), max_frames=pos.shape[1] - 1,
                       lora_rank=int(rank), lora_alpha=lora_alpha, lora_targets=targets or ("q_proj", "v_proj"))
    check_sizes(cfg, max(layers) + 1, pos.shape[2], source)
    return cfg, max(layers) + 1, pos.shape[2]


def read_official_checkpoint(path) -> tuple[FusionConfig, dict[str, torch.Tensor], dict]:
    """The official Lightning checkpoint -> (fusion config, adapter tensors, info). Memory-mapped."""
    ckpt = safe_load(path, OFFICIAL_GLOBALS, what="Instruct-MusicGen checkpoint")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no 'state_dict': not a Lightning checkpoint "
                              f"(top-level keys: {sorted(ckpt)[:8]})")
    tensors = official_adapter_tensors(state)
    refuse_hollow(tensors, str(path))
    fusion, lm_layers, dim = fusion_config_of(tensors, str(path))
    hp = _instructor_kwargs(ckpt)
    if "num_layers" in hp and hp["num_layers"] != fusion.num_layers:
        raise CheckpointError(f"{path}: hyper-parameters say num_layers={hp['num_layers']} but the "
                              f"weights hold {fusion.num_layers} gates")
    check_tensors(tensors, expected_adapter_shapes(lm_layers, dim, fusion), str(path))
    info = {"lm_layers": lm_layers, "lm_dim": dim, "hyper_parameters": hp,
            "global_step": ckpt.get("global_step")}
    return fusion, tensors, info


def _instructor_kwargs(ckpt: dict) -> dict:
    """`sec`, `num_layers`, ... from the pickled `functools.partial(Instructor, ...)`, if present."""
    partial = (ckpt.get("hyper_parameters") or {}).get("instructor")
    state = getattr(partial, "state", None)
    if isinstance(state, tuple) and len(state) >= 3 and isinstance(state[2], dict):
        return {k: v for k, v in state[2].items() if isinstance(v, (int, float, str, bool))}
    return {}


# ---------------------------------------------------------------- our adapter (safetensors)

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32"}


def write_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str],
                      progress: Callable[[int, int], None] | None = None):
    """Write a safetensors file one tensor at a time (peak memory: one tensor, not the file), to a
    temporary name first so that a failure leaves nothing behind. `progress(bytes, total)`
    after each tensor."""
    path = Path(path)
    header, offset = {"__metadata__": metadata}, 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise CheckpointError(f"cannot store {name} of dtype {t.dtype}")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            done = 0
            for t in tensors.values():
                t = t.detach().contiguous()
                if t.dtype == torch.bfloat16:
                    t = t.view(torch.int16)
                f.write(t.numpy().data.cast("B") if t.numel() else b"")
                done += t.numel() * t.element_size()
                if progress is not None:
                    progress(done, offset)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def adapter_metadata(fusion: FusionConfig, lm_layers: int, lm_dim: int, base_model: str,
                     dialect: str, stems, source: str = "") -> dict[str, str]:
    return {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "base_model": base_model,
            "dialect": dialect, "stems": json.dumps(list(stems)), "fusion": json.dumps(fusion.to_dict()),
            "lm_layers": str(lm_layers), "lm_dim": str(lm_dim), "source": source}


def convert_official(src, dst, base_model: str = "facebook/musicgen-large", dialect: str = "slakh",
                     stems=None, overwrite: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, str]:
    """Official `finetuned.ckpt` -> compact safetensors adapter. Returns the metadata written.
    `progress(bytes written, total)` as the adapter is written."""
    from .instructions import default_stems
    dst = Path(dst)
    if Path(src).resolve() == dst.resolve():
        raise CheckpointError("the output path is the input checkpoint; choose another name")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {dst.parent}")
    stems = list(stems) if stems else default_stems(dialect)
    fusion, tensors, info = read_official_checkpoint(src)
    meta = adapter_metadata(fusion, info["lm_layers"], info["lm_dim"], base_model, dialect, stems,
                            source=Path(src).name)
    write_safetensors(tensors, dst, meta, progress)
    return meta


def _adapter_sizes(meta: dict, path) -> tuple[FusionConfig, int, int]:
    """The fusion config and LM sizes an adapter's metadata declares, bounded."""
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is not an Instruct-MusicGen adapter (metadata format="
                              f"{brief(repr(meta.get('format')), 80)}); convert the official checkpoint with "
                              f"`imgen convert`")
    try:
        fusion = FusionConfig.from_dict(json.loads(meta["fusion"]))
        lm_layers, lm_dim = int(meta["lm_layers"]), int(meta["lm_dim"])
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError, ConfigError) as e:
        raise CheckpointError(f"adapter {path} has unreadable metadata: {brief(e)}") from None
    check_sizes(fusion, lm_layers, lm_dim, f"adapter {path}")
    return fusion, lm_layers, lm_dim


def check_sizes(fusion: FusionConfig, lm_layers: int, lm_dim: int, source: str):
    """Refuse sizes beyond the bounds above, before anything is allocated from them."""
    if not (1 <= lm_layers <= MAX_LAYERS and 1 <= lm_dim <= MAX_DIM):
        raise CheckpointError(f"{source} declares an LM of {brief(lm_layers, 40)} layers of width "
                              f"{brief(lm_dim, 40)}; accepted: 1 to {MAX_LAYERS} layers, width 1 to {MAX_DIM}")
    if not (1 <= fusion.num_layers <= MAX_LAYERS and 1 <= fusion.max_frames <= MAX_FRAMES
            and 1 <= fusion.lora_rank <= lm_dim):
        raise CheckpointError(f"{source} declares fusion sizes out of range ({brief(fusion, 120)}); "
                              f"accepted: 1 to {MAX_LAYERS} adapter layers, 1 to {MAX_FRAMES} frames, "
                              f"LoRA rank 1 to {lm_dim}")


def read_adapter(path) -> tuple[FusionConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Our adapter file -> (fusion config, tensors, metadata), validated."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            fusion, lm_layers, lm_dim = _adapter_sizes(meta, path)  # before reading any tensor
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"adapter {path} is truncated or corrupt: {brief(e)}") from None
    check_tensors(tensors, expected_adapter_shapes(lm_layers, lm_dim, fusion), f"adapter {path}")
    return fusion, tensors, meta


# ---------------------------------------------------------------- writing an audiocraft base LM

def audiocraft_config(cfg: LMConfig) -> dict:
    """The parts of an audiocraft `xp.cfg` that `LMConfig.from_audiocraft` reads."""
    t5 = {512: "t5-small", 768: "t5-base", 1024: "t5-large"}.get(cfg.text_dim, "t5-base")
    return {
        "transformer_lm": {"dim": cfg.dim, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers,
                           "hidden_scale": cfg.hidden_scale, "n_q": cfg.n_q, "card": cfg.card,
                           "activation": "gelu", "norm_first": True, "bias_ff": False, "bias_attn": False,
                           "bias_proj": False, "positional_embedding": "sin", "layer_scale": None,
                           "norm": "layer_norm", "causal": True, "cross_attention": False},
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": list(cfg.delays)}},
        "fuser": {"cross": ["description"], "prepend": [], "sum": [], "cross_attention_pos_emb": False},
        "conditioners": {"description": {"model": "t5", "t5": {"name": t5}}},
        "classifier_free_guidance": {"inference_coef": cfg.cfg_coef},
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
