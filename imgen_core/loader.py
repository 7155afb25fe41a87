"""How weight files become a ready model and its text encoder and codec: the one place that
decides it. `Editor.from_pretrained` composes what `load_parts` returns; the command line, the
trainer and the ComfyUI nodes all go through it.

The model is built on the meta device (no memory), every size checked against the files, and
each weight is then materialised once, in the dtype and on the device it will run in, while its
source tensor is dropped: loading needs about the weights' size in their final dtype, not the
fp32 model plus a converted copy.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from .adapter_file import AdapterFile, adapter_vocabulary
from .audiocraft_lm import read_audiocraft_lm
from .checkpoints import CheckpointError, brief, check_tensors
from .codec import Codec
from .config import FusionConfig, LMConfig
from .defaults import cache_dir, pick_device, pick_dtype
from .fusion import merged_lora_weight
from . import defaults, parts
from .base_config import base_lm_config
from .hub import is_repo_id, offline_default, resolve_file
from .instructions import default_stems
from .model import InstructMusicGen
from .official_checkpoint import convert_official, is_official_checkpoint, official_fusion_config
from .quant import pack_for_cpu, quantize_weight, swap_to_int8
from .text import TextEncoder

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class NewAdapter:
    """Fresh fusion and LoRA weights to train, instead of an adapter file: adapters on the last
    `fusion_layers` LM layers (None: all), drawn from `seed`, for instructions in `dialect` on
    `stems` (None: the dialect's)."""

    fusion_layers: int | None = None
    dialect: str = "slakh"
    stems: tuple[str, ...] | None = None
    seed: int = 0

    def fusion_config(self, lm_cfg: LMConfig) -> FusionConfig:
        return FusionConfig(num_layers=self.fusion_layers or lm_cfg.num_layers)


@dataclass(frozen=True)
class Parts:
    """What an Editor is made of: the fused model, the text encoder, the codec, and the
    instruction vocabulary the adapter was trained with."""

    model: InstructMusicGen
    text_encoder: TextEncoder
    codec: Codec
    dialect: str
    stems: tuple[str, ...]


def converted_adapter(ckpt, folders=None, progress: Callable[[int, int], None] | None = None,
                      base: str | None = None, offline: bool | None = None) -> Path:
    """The official checkpoint converted once to our safetensors model file, cached by identity
    (path, size, mtime) in the first writable of `folders` (default: the user cache). The file
    holds the whole model, the LM's hyper-parameters taken from `base` when it is converted
    (default: the MusicGen the official code builds; only its config is read). The checkpoint
    itself is never modified. `progress(bytes, total)` while converting."""
    ckpt = Path(ckpt)
    st = ckpt.stat()
    base = str(base or defaults.BASE)
    tag = hashlib.sha1(f"{ckpt.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    candidates = list(folders or [cache_dir() / "adapters"])
    name = f"{ckpt.stem}.{tag}.model.safetensors"
    for folder in candidates:
        if (Path(folder) / name).exists():
            return Path(folder) / name
    for folder in candidates:
        out = Path(folder) / name
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            convert_official(ckpt, out, progress=progress,
                             base_config=lambda: base_lm_config(base_config_spec(base, offline), offline))
            return out
        except OSError as e:  # read-only or not a folder: try the next one
            if e.filename is None or not Path(e.filename).is_relative_to(folder):
                raise  # not about this folder (a base config that cannot be had)
            continue
    raise PermissionError(f"cannot write the converted model in any of {', '.join(map(str, candidates))}")


def base_config_spec(base, offline: bool | None = None) -> str:
    """Where the base's config is read: the released base's config.json in the weights folder
    (downloaded there when missing) when `base` names it, else `base` itself."""
    if not parts.is_official(base, parts.BASE_CONFIG):
        return str(base)
    weights = parts.weights_dir()
    found = parts.locate(parts.BASE_CONFIG, weights)
    if found is None:
        if offline_default() if offline is None else offline:
            raise FileNotFoundError(parts.missing_message([parts.BASE_CONFIG], lambda p: p.target(weights), True))
        found = parts.fetch_part(parts.BASE_CONFIG, weights)
    return str(found)


def adapter_file_of(spec, offline: bool | None = None) -> Path:
    """The file an adapter spec names: the file itself, the adapter in a folder, or a hub repo's
    finetuned.ckpt (downloaded once; with `offline`, only from the cache)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [path / n for n in ("adapter.safetensors", "finetuned.ckpt") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"Instruct-MusicGen adapter: no adapter.safetensors or finetuned.ckpt in {path}")
        return found[0]
    if path.is_file():
        return path
    if parts.is_official(spec, parts.CHECKPOINT):
        found = parts.locate(parts.CHECKPOINT, parts.weights_dir())
        if found is not None:
            return found
    return resolve_file(spec, "finetuned.ckpt", "Instruct-MusicGen checkpoint", offline)


def resolve_adapter(spec, offline: bool | None = None, convert_into: Iterable | None = None,
                    progress: Callable[[int, int], None] | None = None, base: str | None = None) -> Path:
    """Our safetensors file as is; the official checkpoint (a file, a folder holding it, or a
    hub repo) converted once, with `base`'s config, and cached in the first writable of
    `convert_into`."""
    path = adapter_file_of(spec, offline)
    if is_official_checkpoint(path):
        path = converted_adapter(path, convert_into, progress, base, offline)
    return path


@dataclass(frozen=True)
class AdapterSummary:
    """What an adapter says of itself, read without loading any weight: the instructions it was
    trained with and the longest window it has positions for."""

    dialect: str
    stems: tuple[str, ...]
    max_frames: int


def adapter_summary(spec) -> AdapterSummary | None:
    """The summary of the adapter a spec names when it is on this machine (its header, or the
    official checkpoint's pickle, is read; no weight); None when it would first have to be
    downloaded. Used to check an edit's settings before anything is loaded."""
    try:
        path = adapter_file_of(spec, offline=True)
    except FileNotFoundError:
        if Path(spec).expanduser().exists() or not is_repo_id(spec):
            raise
        return None  # a hub repo not downloaded yet
    if is_official_checkpoint(path):
        fusion = official_fusion_config(path)
        return AdapterSummary("slakh", tuple(default_stems("slakh")), fusion.max_frames)
    adapter = AdapterFile(path)
    return AdapterSummary(adapter.dialect, adapter.stems, adapter.fusion.max_frames)


def load_model(base, adapter=None, *, dtype: str | torch.dtype = torch.float32, device="cpu",
               merge_lora: bool = False, new_adapter: NewAdapter | None = None,
               int8: bool = False) -> tuple[InstructMusicGen, dict]:
    """Weight files -> (model in eval mode without gradients, the adapter's metadata).

    `base`: an audiocraft `state_dict.bin`; not read (may be None) when the adapter file holds the
    whole model, as the official checkpoint converted by `resolve_adapter` does. `adapter`: our
    model or adapter file, or None for plain MusicGen, or None with `new_adapter` for
    fresh fusion and LoRA weights to train. `merge_lora` folds
    LoRA into the projections, in fp32, before the weights take their dtype (inference).
    `int8` (or dtype "int8"): the linear layers' weights quantised as they load (quant.py; LoRA
    merged first), activations in `dtype`."""
    device = pick_device(device)
    int8 = int8 or dtype == "int8"
    dtype = pick_dtype(dtype, device)
    opened = AdapterFile(adapter) if adapter is not None else None
    if opened is not None and opened.lm_config is not None:
        lm_cfg, base_state, source = opened.lm_config, {}, f"model file {adapter}"  # it is the whole model
    elif base is None:
        raise CheckpointError(f"{'adapter ' + str(adapter) if adapter is not None else 'plain MusicGen'} needs "
                              f"the base MusicGen LM's weights (audiocraft state_dict.bin"
                              f"{', ' + opened.meta['base_model'] if opened is not None and opened.meta.get('base_model') else ''})")
    else:
        lm_cfg, base_state = read_audiocraft_lm(base, dtype)
        source = f"base checkpoint {base}"
    fusion_cfg = opened.fusion if opened is not None else new_adapter.fusion_config(lm_cfg) if new_adapter else None
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
        del given[key]  # the adapter's q/k/v bases replace the base's: the official model runs with them
    check_tensors(given, {k: s for k, s in shapes.items() if _unwrapped(k) not in from_adapter}, source)
    state = _materialise(given, dtype, device, quantized, source)
    if opened is not None:
        state.update(_materialise(_adapter_state(opened, merge), dtype, device, quantized, f"adapter {adapter}"))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    fresh = [k for k in missing if k.startswith("fusion.") or ".lora_" in k]
    if unexpected or len(fresh) != len(missing) or (fresh and new_adapter is None):
        raise CheckpointError(f"{source}: missing keys: {brief(missing, 200)}; unexpected keys: "
                              f"{brief(unexpected, 200)}")
    if fresh:
        _initialise_new_adapter(model, device, dtype, new_adapter.seed)
    if int8:
        pack_for_cpu(model)
    return model.eval().requires_grad_(False), (opened.meta if opened is not None else {})


def _unwrapped(name: str) -> str:
    """A projection's weight under its plain name, whether LoRA wraps it or not."""
    return name.replace(".base_layer.weight", ".weight")


def _materialise(tensors, dtype: torch.dtype, device: torch.device, quantized: dict[str, str],
                 source: str) -> dict:
    """Each tensor of a dict or (name, tensor) stream in its final form: on `device`, floats in
    `dtype`, the weights named in `quantized` as int8 with their scales. Each source is dropped
    as soon as it is converted, so the peak is the result plus one tensor. A weight that becomes
    infinite in its dtype (1e30 in fp16) is refused, naming it."""
    out = {}
    items = _drain(tensors) if isinstance(tensors, dict) else tensors
    for key, t in items:
        if key in quantized:
            weight, scale = quantize_weight(t)
            out[quantized[key] + ".weight_int8"] = weight.to(device)
            out[quantized[key] + ".scale"] = done = scale.to(device=device, dtype=dtype)
        else:
            out[key] = done = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        if done.is_floating_point() and not torch.isfinite(done).all():
            raise CheckpointError(f"{source}: {key} holds values beyond what {str(dtype).removeprefix('torch.')} can "
                                  f"hold (they become infinite); load it in a wider dtype (fp32)")
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


def _initialise_new_adapter(model: InstructMusicGen, device: torch.device, dtype: torch.dtype, seed: int):
    """Fusion and LoRA weights that no file provides (a new adapter to train), as the official
    code starts them: position embeddings drawn from N(0, 1), gates at zero (so the model starts
    as plain MusicGen), the merge projections and LoRA as their modules initialise them (LoRA B
    at zero), all drawn from `seed` without touching the global random state."""
    fusion = model.fusion.to_empty(device=device)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for linear in fusion.merge_linear:
            linear.reset_parameters()
        for module in model.lm.modules():
            if hasattr(module, "reset_lora_parameters"):
                module.lora_A.to_empty(device=device)
                module.lora_B.to_empty(device=device)
                module.reset_lora_parameters("default", True)
                module.lora_A.to(dtype)
                module.lora_B.to(dtype)
        fusion.gates.zero_()
        fusion.pos_emb.normal_(generator=torch.Generator(device=device).manual_seed(seed))
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


def load_parts(base, adapter, t5: str, encodec: str, *,
               device="auto", dtype="auto", int8: bool = False, offline: bool | None = None,
               merge_lora: bool = True, new_adapter: NewAdapter | None = None,
               convert_into: Iterable | None = None, progress: Progress | None = None) -> Parts:
    """(base, adapter, t5, encodec) -> the parts of an Editor, on `device`. Each is a local path
    or a Hugging Face id. The released parts (`parts.py`) missing here are downloaded first, all
    of them, into the weights folder (offline: one error naming every one). `base` (None: the
    released MusicGen-large) gives only its config when the adapter holds the whole model, as
    the official checkpoint does. `dtype`: a `defaults.DTYPE_CHOICES` name or a torch dtype
    (with `int8`, that of the activations). `progress(stage, done, total)`: "downloading" and
    "verifying" (bytes, a missing part only), "converting" (bytes of the model file written,
    first use of an official checkpoint only), then "loading" (parts of 3: LM, T5, EnCodec)."""
    report = progress or (lambda stage, done, total: None)
    device = pick_device(device)
    offline = offline_default() if offline is None else offline
    if adapter is not None and not parts.is_official(adapter, parts.CHECKPOINT):
        adapter = adapter_file_of(adapter, offline)  # one's own file is checked before any download starts
    found = fetch_missing(base, adapter, t5, encodec, offline, report)
    base, adapter, t5, encodec = (found.get(k, v) for k, v in
                                  (("base", base), ("adapter", adapter), ("t5", t5), ("encodec", encodec)))
    adapter_file = None
    if adapter is not None:
        adapter_file = resolve_adapter(adapter, offline, convert_into, lambda d, t: report("converting", d, t), base)
    whole = adapter_file is not None and AdapterFile(adapter_file).lm_config is not None
    base_file = None if whole else resolve_file(base or defaults.BASE, "state_dict.bin", "base MusicGen LM", offline)
    report("loading", 0, 3)
    model, meta = load_model(base_file, adapter_file, dtype=dtype, device=device, merge_lora=merge_lora,
                             new_adapter=new_adapter, int8=int8)
    report("loading", 1, 3)
    text_encoder = TextEncoder.from_pretrained(str(t5), offline).to(device)
    report("loading", 2, 3)
    codec = Codec.from_pretrained(str(encodec), offline)
    codec.model.to(device)
    report("loading", 3, 3)
    if new_adapter is not None and adapter is None:
        dialect, stems = new_adapter.dialect, tuple(new_adapter.stems or default_stems(new_adapter.dialect))
    elif adapter is None:
        dialect, stems = "slakh", default_stems("slakh")
    else:
        dialect, stems = adapter_vocabulary(meta, adapter_file)
    return Parts(model, text_encoder, codec, dialect, tuple(stems))


def needed_parts(base, adapter, t5, encodec) -> dict[str, parts.Part]:
    """Which released parts the specs name, by role: the checkpoint, the base's config (to
    convert a checkpoint not converted yet) or its weights (for a file without the LM), T5 and
    EnCodec. A spec naming a file or folder of one's own needs no part."""
    need = {}
    if parts.is_official(adapter, parts.CHECKPOINT):
        need["adapter"] = parts.CHECKPOINT
    holds_lm = True
    if adapter is not None and "adapter" not in need and Path(adapter).expanduser().is_file() \
            and not is_official_checkpoint(adapter):
        holds_lm = AdapterFile(adapter).lm_config is not None
    if adapter is None or not holds_lm:
        if base is None or parts.is_official(base, parts.BASE):
            need["base"] = parts.BASE
    elif base is None or parts.is_official(base, parts.BASE_CONFIG):
        need["base"] = parts.BASE_CONFIG
    if parts.is_official(t5, parts.T5):
        need["t5"] = parts.T5
    if parts.is_official(encodec, parts.ENCODEC):
        need["encodec"] = parts.ENCODEC
    return need


def fetch_missing(base, adapter, t5, encodec, offline: bool, report: Progress,
                  weights: Path | None = None) -> dict[str, str]:
    """The local places of the released parts the specs name (role -> path), downloading the
    missing ones into the weights folder; offline, one error that names every missing part."""
    weights = Path(weights or parts.weights_dir())
    here, missing = {}, []
    for role, part in needed_parts(base, adapter, t5, encodec).items():
        found = parts.locate(part, weights)
        if found is not None:
            here[role] = str(found)
        elif part is parts.BASE_CONFIG and adapter is not None and not parts.is_official(adapter, parts.CHECKPOINT):
            continue  # only needed if the checkpoint is not converted yet: converted_adapter decides
        else:
            missing.append((role, part))
    if missing and offline:
        raise FileNotFoundError(parts.missing_message([p for _, p in missing], lambda p: p.target(weights), True))
    for role, part in missing:
        here[role] = str(parts.fetch_part(part, weights, report))
    return here
