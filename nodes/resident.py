"""One resident Instruct-MusicGen per set of weight files, shared by every node and workflow.

The weights sit in a ComfyUI ModelPatcher, so ComfyUI may move them to the offload device when
another model needs the memory; `ResidentEditor.ready()` brings them back before each use.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..imgen_core.defaults import pick_dtype
from ..imgen_core.editor import Editor
from ..imgen_core.loader import cache_dir
from . import comfy_glue

_LOCK = threading.Lock()
_LOADED: dict[tuple, "ResidentEditor"] = {}


class EditorWeights(torch.nn.Module):
    """A plain module holding every weight of an Editor (Hugging Face modules have a read-only
    `.device`, so ModelPatcher gets this container instead)."""

    def __init__(self, editor: Editor):
        super().__init__()
        self.lm = editor.model
        self.text_encoder = editor.text_encoder.encoder
        self.codec = editor.codec.model


@dataclass
class ResidentEditor:
    editor: Editor
    patcher: object
    description: str

    def ready(self) -> Editor:
        size = sum(p.numel() * p.element_size() for p in self.patcher.model.parameters())
        comfy_glue.load_to_device(self.patcher, memory_required=size)
        return self.editor


def _identity(path: str) -> tuple:
    p = Path(path)
    return (str(p.resolve()), p.stat().st_mtime_ns) if p.exists() else (path, 0)


def get_editor(base: str, adapter: str, t5: str, encodec: str, dtype: str,
               progress=None) -> tuple[ResidentEditor, bool]:
    """The resident editor for these files, loading them only the first time. Returns it and
    whether it was loaded now. `progress(stage, done, total)` while converting and loading."""
    import comfy.model_management as mm
    device = mm.get_torch_device()
    torch_dtype = pick_dtype(dtype, device)  # for int8: the activations' dtype on the device it will run on
    key = (_identity(base), _identity(adapter), _identity(t5), _identity(encodec), str(torch_dtype), dtype == "int8")
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key], False
        print(f"[Instruct-MusicGen] loading weights from {base} + {adapter} ({dtype})", flush=True)
        # the official checkpoint is converted once, beside it (or in the user cache if read-only)
        editor = Editor.from_pretrained(base, adapter, t5, encodec, device="cpu", dtype=torch_dtype,
                                        int8=dtype == "int8", progress=progress,
                                        convert_into=[Path(adapter).parent, cache_dir() / "adapters"])
        resident = ResidentEditor(editor, comfy_glue.make_patcher(EditorWeights(editor)),
                                  json.dumps({"base": os.path.basename(base), "adapter": os.path.basename(adapter)}))
        _LOADED[key] = resident
        return resident, True
