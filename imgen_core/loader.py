"""How weight files become a ready model: the one place that decides it, used by the API, the
command line, the trainer and the ComfyUI nodes.

The model is built on the meta device (no memory), every size checked against the files, and
each weight is then materialised once, in the dtype and on the device it will run in, while its
source tensor is dropped: loading needs about the weights' size in their final dtype, not the
fp32 model plus a converted copy.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable, Iterable

import torch

from .adapter_file import AdapterFile
from .audiocraft_lm import read_audiocraft_lm
from .checkpoints import CheckpointError, brief, check_tensors
from .config import FusionConfig, LMConfig
from .fusion import merged_lora_weight
from .hub import resolve_file
from .model import InstructMusicGen
from .official_checkpoint import convert_official, is_official_checkpoint
from .quant import int8_activation_dtype, pack_for_cpu, quantize_weight, swap_to_int8

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# What a user may ask for: a float dtype, or int8 weights with activations in the dtype
# quant.int8_activation_dtype picks (fp16 on CUDA, fp32 for fbgemm on the CPU).
WEIGHT_DTYPES = ("auto", *DTYPES, "int8")
Progress = Callable[[str, int, int], None]


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The activation dtype for a dtype name on `device` (for "int8": that of the activations)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype == "int8":
        return int8_activation_dtype(device)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(WEIGHT_DTYPES)}")
    return DTYPES[dtype]


def cache_dir() -> Path:
    root = os.environ.get("IMGEN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"),
                                                          "instruct_musicgen")
    return Path(root).expanduser()


def converted_adapter(ckpt, folders=None, progress: Callable[[int, int], None] | None = None) -> Path:
    """The official checkpoint converted once to our safetensors adapter, cached by identity
    (path, size, mtime) in the first writable of `folders` (default: the user cache). The
    checkpoint itself is never modified. `progress(bytes, total)` while converting."""
    ckpt = Path(ckpt)
    st = ckpt.stat()
    tag = hashlib.sha1(f"{ckpt.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    candidates = list(folders or [cache_dir() / "adapters"])
    for folder in candidates:
        out = Path(folder) / f"{ckpt.stem}.{tag}.adapter.safetensors"
        if out.exists():
            return out
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            convert_official(ckpt, out, progress=progress)
            return out
        except OSError:  # read-only or not a folder: try the next one
            continue
    raise PermissionError(f"cannot write the converted adapter in any of {', '.join(map(str, candidates))}")


def resolve_adapter(spec, offline: bool | None = None, convert_into: Iterable | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """Our safetensors adapter as is; the official checkpoint (a file, a folder holding it, or a
    hub repo) converted once and cached in the first writable of `convert_into`."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [path / n for n in ("adapter.safetensors", "finetuned.ckpt") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"Instruct-MusicGen adapter: no adapter.safetensors or finetuned.ckpt in {path}")
        path = found[0]
    elif not path.is_file():
        path = resolve_file(spec, "finetuned.ckpt", "Instruct-MusicGen checkpoint", offline)
    if is_official_checkpoint(path):
        path = converted_adapter(path, convert_into, progress)
    return path


def load_model(base, adapter=None, *, dtype: str | torch.dtype = torch.float32, device="cpu",
               merge_lora: bool = False, new_adapter: Callable[[LMConfig], FusionConfig] | None = None,
               int8: bool = False) -> tuple[InstructMusicGen, dict]:
    """Weight files -> (model in eval mode without gradients, the adapter's metadata).

    `base`: an audiocraft `state_dict.bin`. `adapter`: our adapter file (see `resolve_adapter`
    for the official checkpoint), or None for plain MusicGen, or None with `new_adapter` (the LM
    config -> the fusion config) for fresh fusion and LoRA weights to train. `merge_lora` folds
    LoRA into the projections, in fp32, before the weights take their dtype (inference).
    `int8` (or dtype "int8"): the linear layers' weights quantised as they load (quant.py; LoRA
    merged first), activations in `dtype`."""
    device = pick_device(device)
    int8 = int8 or dtype == "int8"
    dtype = pick_dtype(dtype, device)
    lm_cfg, base_state = read_audiocraft_lm(base, dtype)
    source = f"base checkpoint {base}"
    opened = AdapterFile(adapter) if adapter is not None else None
    fusion_cfg = opened.fusion if opened is not None else new_adapter(lm_cfg) if new_adapter else None
    if opened is not None and (opened.lm_layers, opened.lm_dim) != (lm_cfg.num_layers, lm_cfg.dim):
        raise CheckpointError(
            f"adapter {adapter} was made for an LM of {opened.lm_layers} layers x {opened.lm_dim} dims, but "
            f"the base {base} has {lm_cfg.num_layers} x {lm_cfg.dim}; pick the matching base model "
            f"({opened.meta.get('base_model', 'see the adapter metadata')})")
    if int8 and opened is None:
        raise ValueError("int8 weights are for inference: load an adapter")
    merge = (merge_lora or int8) and opened is not None
    with torch.device("meta"):
        model = InstructMusicGen(lm_cfg, fusion_cfg, lora=not merge)
    shapes = {k: tuple(v.shape) for k, v in model.base_state_dict().items()}
    quantized = swap_to_int8(model, dtype, "meta") if int8 else {}
    given = _split_cross_in_proj(base_state, model)
    from_adapter = {_unwrapped(k) for k in opened.names} if opened is not None else set()
    for key in [k for k in given if _unwrapped(k) in from_adapter]:
        del given[key]  # the adapter's q/k/v bases replace the base's (see DESIGN: fused-model quirk)
    check_tensors(given, {k: s for k, s in shapes.items() if _unwrapped(k) not in from_adapter}, source)
    state = _materialise(given, dtype, device, quantized)
    if opened is not None:
        state.update(_materialise(_adapter_state(opened, merge), dtype, device, quantized))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    fresh = [k for k in missing if k.startswith("fusion.") or ".lora_" in k]
    if unexpected or len(fresh) != len(missing) or (fresh and new_adapter is None):
        raise CheckpointError(f"{source}: missing keys: {brief(missing, 200)}; unexpected keys: "
                              f"{brief(unexpected, 200)}")
    if fresh:
        _initialise_new_adapter(model, device, dtype)
    if int8:
        pack_for_cpu(model)
    return model.eval().requires_grad_(False), (opened.meta if opened is not None else {})


def _unwrapped(name: str) -> str:
    """A projection's weight under its plain name, whether LoRA wraps it or not."""
    return name.replace(".base_layer.weight", ".weight")


def _materialise(tensors, dtype: torch.dtype, device: torch.device, quantized: dict[str, str]) -> dict:
    """Each tensor of a dict or (name, tensor) stream in its final form: on `device`, floats in
    `dtype`, the weights named in `quantized` as int8 with their scales. Each source is dropped
    as soon as it is converted, so the peak is the result plus one tensor."""
    out = {}
    items = _drain(tensors) if isinstance(tensors, dict) else tensors
    for key, t in items:
        if key in quantized:
            weight, scale = quantize_weight(t)
            out[quantized[key] + ".weight_int8"] = weight.to(device)
            out[quantized[key] + ".scale"] = scale.to(device=device, dtype=dtype)
        else:
            out[key] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        del t
    return out


def _drain(tensors: dict):
    for key in list(tensors):
        yield key, tensors.pop(key)


def _adapter_state(adapter: AdapterFile, merge: bool):
    """The adapter's tensors, one at a time, with LoRA folded in (in fp32) when `merge`."""
    parts = {}
    scaling = adapter.fusion.lora_alpha / adapter.fusion.lora_rank
    for name, tensor in adapter.tensors():
        m = re.fullmatch(r"(.*)\.(base_layer|lora_A\.default|lora_B\.default)\.weight", name)
        if not (merge and m):
            yield name, tensor
            continue
        group = parts.setdefault(m.group(1), {})
        group[m.group(2)] = tensor
        if len(group) == 3:
            yield m.group(1) + ".weight", merged_lora_weight(group["base_layer"], group["lora_A.default"],
                                                            group["lora_B.default"], scaling)
            del parts[m.group(1)]


def _initialise_new_adapter(model: InstructMusicGen, device: torch.device, dtype: torch.dtype):
    """Fusion and LoRA weights that no file provides (a new adapter to train): gates and
    position embeddings at zero (the trainer draws the latter), the merge projections and LoRA
    as their modules initialise them (LoRA B at zero, so the model starts as plain MusicGen)."""
    fusion = model.fusion.to_empty(device=device)
    with torch.no_grad():
        fusion.pos_emb.zero_()
        fusion.gates.zero_()
        for linear in fusion.merge_linear:
            linear.reset_parameters()
    for module in model.lm.modules():
        if hasattr(module, "reset_lora_parameters"):
            module.lora_A.to_empty(device=device)
            module.lora_B.to_empty(device=device)
            module.reset_lora_parameters("default", True)
            module.lora_A.to(dtype)
            module.lora_B.to(dtype)
    fusion.to(dtype)


def _split_cross_in_proj(state: dict, model: InstructMusicGen) -> dict:
    """audiocraft's fused cross-attention `in_proj_weight` -> the q/k/v names of our model."""
    out = {}
    names = set(model.state_dict())
    for key in list(state):
        value = state.pop(key)
        if key.endswith("cross_attention.in_proj_weight") and value.dim() == 2 and value.shape[0] % 3 == 0:
            prefix = key[: -len("in_proj_weight")]
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                wrapped = prefix + f"{proj}.base_layer.weight"
                out[wrapped if wrapped in names else prefix + f"{proj}.weight"] = part
        else:
            out[key] = value
    return out


def load_editor(base, adapter=None, t5="t5-base", encodec="facebook/encodec_32khz", *, device="auto",
                dtype="auto", offline: bool | None = None, merge_lora: bool = True,
                new_adapter: Callable[[LMConfig], FusionConfig] | None = None, convert_into: Iterable | None = None,
                progress: Progress | None = None, int8: bool = False):
    """(base, adapter, t5, encodec, dtype, device) -> a ready `Editor`. Each is a local path or a
    Hugging Face id (downloaded once). `dtype`: one of WEIGHT_DTYPES or a torch dtype (with
    `int8`, the activations' dtype). `progress(stage, done, total)`: "converting" (bytes of
    the adapter written, first use of an official checkpoint only), then "loading" (parts of 3:
    LM, T5, EnCodec)."""
    from .codec import Codec
    from .editor import Editor
    from .text import TextEncoder
    report = progress or (lambda stage, done, total: None)
    device = pick_device(device)
    base_file = resolve_file(base, "state_dict.bin", "base MusicGen LM", offline)
    adapter_file = None
    if adapter is not None:
        adapter_file = resolve_adapter(adapter, offline, convert_into, lambda d, t: report("converting", d, t))
    report("loading", 0, 3)
    model, meta = load_model(base_file, adapter_file, dtype=dtype, device=device, merge_lora=merge_lora,
                             new_adapter=new_adapter, int8=int8)
    report("loading", 1, 3)
    text_encoder = TextEncoder.from_pretrained(t5, offline).to(device)
    report("loading", 2, 3)
    codec = Codec.from_pretrained(encodec, offline)
    codec.model.to(device)
    report("loading", 3, 3)
    stems = json.loads(meta["stems"]) if "stems" in meta else None
    return Editor(model, text_encoder, codec, dialect=meta.get("dialect", "slakh"), stems=stems)

