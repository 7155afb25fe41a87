"""One resident Instruct-MusicGen per set of weight files, shared by every node and workflow, and
released when nothing needs it any more.

The weights sit in a ComfyUI ModelPatcher, so ComfyUI may move them to the offload device when
another model needs the memory; `ResidentEditor.ready()` brings them back before each use, asking
for the working memory of what comes next (not the weights, which ComfyUI counts itself).

What holds a ResidentEditor is ComfyUI's cache of the loader node's output, and so the workflows
that use it; this module keeps only weak references. When ComfyUI drops that output ("Free model
and node cache", another set of weights chosen in the loader) the editor and its weights go with
it. When ComfyUI unloads the model where it has nowhere to move it (the CPU: "Unload Models",
`POST /free`), the weights are dropped too; the next use loads them again from the files, with
the node's progress bar.
"""
from __future__ import annotations

import ctypes
import gc
import threading
import weakref
from pathlib import Path

import torch

from ..imgen_core import working_memory
from ..imgen_core.defaults import cache_dir, pick_dtype
from ..imgen_core.editor import Editor
from . import comfy_glue

_LOCK = threading.RLock()
_LOADED: "weakref.WeakValueDictionary[tuple, ResidentEditor]" = weakref.WeakValueDictionary()
LABEL = "Instruct-MusicGen"


class EditorWeights(torch.nn.Module):
    """A plain module holding every weight of an Editor (Hugging Face modules have a read-only
    `.device`, so ModelPatcher gets this container instead)."""

    def __init__(self, editor: Editor):
        super().__init__()
        self.lm = editor.model
        self.text_encoder = editor.text_encoder.encoder
        self.codec = editor.codec.model


class ResidentEditor:
    """The loader node's output: the files, and the editor loaded from them while it is loaded."""

    def __init__(self, files: dict, dtype: str):
        self.files, self.dtype = files, dtype
        self.editor: Editor | None = None
        self.patcher = None

    def describe(self) -> str:
        adapter = self.files["adapter"]
        return f"{self.files['base']} + {adapter}" if self.files["base"] and not str(adapter).endswith(".ckpt") \
            else str(adapter)

    def load(self, progress=None):
        """Load the weights if they are not (first use, or after a release)."""
        with _LOCK:
            if self.editor is not None:
                return
            gc.collect()  # residents that only a reference cycle kept alive go before more weights come
            print(f"[{LABEL}] loading weights from {self.describe()} ({self.dtype})", flush=True)
            device = comfy_glue.torch_device()
            editor = Editor.from_pretrained(
                self.files["base"], self.files["adapter"], self.files["t5"], self.files["encodec"], device="cpu",
                dtype=pick_dtype(self.dtype, device), int8=self.dtype == "int8", progress=progress,
                # the official checkpoint is converted once, beside it (or in the user cache if read-only)
                convert_into=[Path(self.files["adapter"]).parent, cache_dir() / "adapters"])
            owner = weakref.ref(self)
            self.patcher = comfy_glue.make_patcher(EditorWeights(editor), on_unload=lambda: _unloaded(owner))
            self.editor = editor
            weakref.finalize(self, _gone, self.patcher.model)

    def ready(self, batch: int = 1, sampling=None, seconds: float = 0.0) -> Editor:
        """The editor with every weight on ComfyUI's device, room made for an edit of `batch`
        items under `sampling` (or for coding `seconds` of audio per item)."""
        with _LOCK:
            if self.editor is None:
                self.load(comfy_glue.staged_progress_callback(LABEL))
            need = working_memory.of_editor(self.editor, batch, sampling, seconds)
            comfy_glue.load_to_device(self.patcher, memory_required=need)
            return self.editor

    def release(self):
        """Drop the weights; the next use loads them again."""
        with _LOCK:
            if self.editor is None:
                return
            _empty(self.patcher.model)
            self.editor = self.patcher = None
            print(f"[{LABEL}] released the weights of {self.describe()}", flush=True)
        _return_memory()


def _unloaded(owner):
    resident = owner()
    if resident is not None:
        resident.release()


def _empty(weights: EditorWeights):
    """Take every module out of the container ComfyUI holds, so that the weights are freed now,
    whatever still refers to the patcher (ComfyUI's list of loaded models, a frame on the stack)."""
    for name in list(weights._modules):
        delattr(weights, name)


def _gone(weights: EditorWeights):
    """The resident itself is gone (ComfyUI dropped the loader's output): its weights go too."""
    _empty(weights)
    _trim()


def _return_memory():
    gc.collect()
    comfy_glue.empty_device_cache()
    _trim()


def _trim():
    try:  # glibc keeps freed heap pages; hand them back so that the resident memory drops
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _identity(path: str | None) -> tuple:
    if path is None:
        return (None, 0)
    p = Path(path)
    return (str(p.resolve()), p.stat().st_mtime_ns) if p.exists() else (path, 0)


def get_editor(base: str, adapter: str, t5: str, encodec: str, dtype: str, progress=None) -> ResidentEditor:
    """The resident editor for these files, loaded (the first time, or again after a release).
    `progress(stage, done, total)` while converting and loading."""
    torch_dtype = pick_dtype(dtype, comfy_glue.torch_device())  # for int8: the activations' dtype on that device
    key = (_identity(base), _identity(adapter), _identity(t5), _identity(encodec), str(torch_dtype), dtype == "int8")
    with _LOCK:
        resident = _LOADED.get(key)
        if resident is None:
            resident = ResidentEditor({"base": base, "adapter": adapter, "t5": t5, "encodec": encodec}, dtype)
            _LOADED[key] = resident
        resident.load(progress)
        return resident
