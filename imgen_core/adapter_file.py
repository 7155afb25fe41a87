"""Our model file: a safetensors file with only what inference needs and metadata that says what
it fits. Either an adapter (fusion parameters, LoRA and the cross-attention q/k/v bases), which
runs on a base MusicGen, or the whole model (the same plus the base LM's weights and its config,
`lm_config` in the metadata), which runs alone. Written tensor by tensor, read tensor by tensor,
so neither ever holds the whole file."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Iterator

import torch

from .checkpoints import CheckpointError, brief, check_finite, check_layout, check_sizes
from .config import ConfigError, FusionConfig, LMConfig
from .files import replacing

ADAPTER_FORMAT = "instruct-musicgen-adapter"
ADAPTER_VERSION = "1"
# A read holds the file's pages mapped until it closes; reopening after this many bytes keeps
# that bounded (the large model's adapter is 3.4 GB; reopening costs a header parse, about 1 ms).
_BYTES_PER_OPEN = 64 * 1024 * 1024
# The header (names, shapes, metadata) of the large model's adapter is about 0.2 MB; the format
# allows 100 MB, which would take several times that in memory to parse.
MAX_HEADER_BYTES = 16 * 1024 * 1024


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


def expected_lm_shapes(lm_cfg: LMConfig, fusion: FusionConfig) -> dict[str, tuple]:
    """The base LM's weights (with the text projection) as our model names them, from its config."""
    from .model import InstructMusicGen
    try:
        with torch.device("meta"):
            model = InstructMusicGen(lm_cfg, fusion, lora=True)
    except ConfigError as e:
        raise CheckpointError(f"the LM config and the adapter do not fit together: {brief(e)}") from None
    return {k: tuple(v.shape) for k, v in model.base_state_dict().items()}


_SAFETENSORS_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32"}


def write_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str],
                      progress: Callable[[int, int], None] | None = None):
    """Write a safetensors file one tensor at a time (peak memory: one tensor, not the file), to a
    temporary name first so that a failure leaves nothing behind. `progress(bytes, total)`
    after each tensor."""
    path = Path(path)
    header, offset = {"__metadata__": metadata}, 0
    for name, t in tensors.items():
        if t.dtype not in _SAFETENSORS_CODES:
            raise CheckpointError(f"cannot store {name} of dtype {t.dtype}")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with replacing(path) as f:
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


def adapter_metadata(fusion: FusionConfig, lm_layers: int, lm_dim: int, base_model: str,
                     dialect: str, stems, source: str = "", lm_config: LMConfig | None = None) -> dict[str, str]:
    meta = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "base_model": base_model,
            "dialect": dialect, "stems": json.dumps(list(stems)), "fusion": json.dumps(fusion.to_dict()),
            "lm_layers": str(lm_layers), "lm_dim": str(lm_dim), "source": source}
    if lm_config is not None:
        meta["lm_config"] = json.dumps(lm_config.to_dict())
    return meta


def lm_config_of(meta: dict, path) -> LMConfig | None:
    """The base LM's config a whole-model file declares (None for an adapter), bounded."""
    from .checkpoints import check_lm_sizes
    if "lm_config" not in meta:
        return None
    try:
        cfg = LMConfig.from_dict(json.loads(meta["lm_config"]))
    except (ValueError, TypeError, AttributeError, RecursionError, ConfigError) as e:
        raise CheckpointError(f"{path}: unreadable lm_config in its metadata: {brief(e)}") from None
    check_lm_sizes(cfg, str(path))
    return cfg


def adapter_vocabulary(meta: dict, path) -> tuple[str, tuple[str, ...]]:
    """(dialect, stems) of the instructions an adapter was trained with, from its metadata
    (the dialect's stems when it names none)."""
    from .instructions import DIALECTS, default_stems
    dialect = meta.get("dialect", "slakh")
    if dialect not in DIALECTS:
        raise CheckpointError(f"adapter {path}: its metadata names the instruction dialect "
                              f"{brief(repr(dialect), 60)}; known: {', '.join(DIALECTS)}")
    if "stems" not in meta:
        return dialect, tuple(default_stems(dialect))
    try:
        stems = json.loads(meta["stems"])
    except (ValueError, RecursionError):
        stems = None
    if not (isinstance(stems, list) and 0 < len(stems) <= 64 and all(isinstance(s, str) and 0 < len(s) <= 64
                                                                      for s in stems)):
        raise CheckpointError(f"adapter {path}: its metadata's stems {brief(repr(meta['stems']), 80)} are not a "
                              f"list of stem names")
    return dialect, tuple(stems)


def adapter_sizes(meta: dict, path) -> tuple[FusionConfig, int, int]:
    """The fusion config and LM sizes an adapter's metadata declares, bounded."""
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is not an Instruct-MusicGen adapter (metadata format="
                              f"{brief(repr(meta.get('format')), 80)}); the official finetuned.ckpt is accepted as it "
                              f"is (converted once)")
    try:
        fusion = FusionConfig.from_dict(json.loads(meta["fusion"]))
        lm_layers, lm_dim = int(meta["lm_layers"]), int(meta["lm_dim"])
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError, ConfigError) as e:
        raise CheckpointError(f"adapter {path} has unreadable metadata: {brief(e)}") from None
    check_sizes(fusion, lm_layers, lm_dim, f"adapter {path}")
    return fusion, lm_layers, lm_dim


class AdapterFile:
    """An adapter file, opened: its validated metadata and layout, and its tensors on demand.

        adapter = AdapterFile(path)              # reads the header only, checks every shape
        for name, tensor in adapter.tensors():   # one tensor at a time, each checked finite
            ...
    """

    def __init__(self, path):
        from safetensors import SafetensorError
        from safetensors.torch import safe_open
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"adapter not found: {self.path}")
        with open(self.path, "rb") as f:
            head = f.read(8)
        header = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if header is not None and header > MAX_HEADER_BYTES:
            raise CheckpointError(f"adapter {self.path}: its header is {header} bytes; at most {MAX_HEADER_BYTES} "
                                  f"are read (a real adapter's is well under 1 MB)")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                self.meta = f.metadata() or {}
                self.fusion, self.lm_layers, self.lm_dim = adapter_sizes(self.meta, self.path)
                self.dialect, self.stems = adapter_vocabulary(self.meta, self.path)
                self.lm_config = lm_config_of(self.meta, self.path)
                layout = {k: (tuple(f.get_slice(k).get_shape()), _torch_dtype(f.get_slice(k).get_dtype()))
                          for k in f.keys()}
        except CheckpointError:
            raise
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"adapter {self.path} is truncated or corrupt: {brief(e)}") from None
        expected = expected_adapter_shapes(self.lm_layers, self.lm_dim, self.fusion)
        if self.lm_config is not None:
            if (self.lm_config.num_layers, self.lm_config.dim) != (self.lm_layers, self.lm_dim):
                raise CheckpointError(f"{self.source}: its lm_config ({self.lm_config.num_layers} layers x "
                                      f"{self.lm_config.dim}) contradicts lm_layers/lm_dim ({self.lm_layers} x "
                                      f"{self.lm_dim})")
            expected = {**expected_lm_shapes(self.lm_config, self.fusion), **expected}
        check_layout(layout, expected, self.source)
        self.names = sorted(layout)
        self.nbytes = {k: _numel(layout[k][0]) * layout[k][1].itemsize for k in layout}

    @property
    def source(self) -> str:
        return f"adapter {self.path}"

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) in name order, each read on its own and checked finite."""
        from safetensors import SafetensorError
        from safetensors.torch import safe_open
        pending = list(self.names)
        try:
            while pending:
                with safe_open(str(self.path), framework="pt") as f:
                    budget = _BYTES_PER_OPEN
                    while pending and (budget == _BYTES_PER_OPEN or budget >= self.nbytes[pending[0]]):
                        name = pending.pop(0)
                        budget -= self.nbytes[name]
                        tensor = f.get_tensor(name)
                        check_finite(name, tensor, self.source)
                        yield name, tensor
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{self.source} is truncated or corrupt: {brief(e)}") from None


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _torch_dtype(name: str) -> torch.dtype:
    dtype = {v: k for k, v in _SAFETENSORS_CODES.items()}.get(name) or {"BOOL": torch.bool, "U8": torch.uint8,
                                                            "I8": torch.int8, "I16": torch.int16}.get(name)
    if dtype is None:
        raise ValueError(f"unsupported tensor type {brief(name, 20)}")
    return dtype


def read_adapter(path) -> tuple[FusionConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Our adapter file -> (fusion config, all its tensors, metadata), validated."""
    adapter = AdapterFile(path)
    return adapter.fusion, dict(adapter.tensors()), adapter.meta
