"""Model loader node."""
from __future__ import annotations

import json
import os

from ..imgen_core import defaults
from . import comfy_glue
from .resident import get_editor

CATEGORY = "audio/Instruct-MusicGen"
MODEL_TYPE = "IMGEN_MODEL"


def _base_files() -> list[str]:
    import folder_paths
    names = folder_paths.get_filename_list("musicgen")
    return sorted(n for n in names if n.endswith(".bin") and not n.endswith("compression_state_dict.bin"))


def _adapter_files() -> list[str]:
    import folder_paths
    return sorted(n for n in folder_paths.get_filename_list("instruct_musicgen")
                  if n.endswith((".safetensors", ".ckpt")))


def _model_folders(model_type: str) -> list[str]:
    """Sub-folders of the musicgen model folders holding a transformers model of `model_type`."""
    found = []
    for root in comfy_glue.folder_paths_of("musicgen"):
        for dirpath, _dirs, files in os.walk(root):
            if "config.json" in files:
                try:
                    with open(os.path.join(dirpath, "config.json")) as f:
                        if json.load(f).get("model_type") == model_type:
                            found.append(os.path.relpath(dirpath, root))
                except (OSError, ValueError):
                    continue
    return sorted(set(found))


def _resolve_folder(name: str) -> str:
    """A folder name inside the musicgen model folders, or else a Hugging Face repo id."""
    for root in comfy_glue.folder_paths_of("musicgen"):
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return name


class InstructMusicGenLoader:
    DESCRIPTION = ("Loads Instruct-MusicGen: a base MusicGen LM (audiocraft state_dict.bin in models/musicgen) "
                   "and the instruct adapter (models/instruct_musicgen: our .safetensors, or the official "
                   "finetuned.ckpt, converted once and cached beside it). Loaded once and shared by every "
                   "workflow; ComfyUI may offload it when another model needs the memory.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded editor, for Encode, Instruct Edit and Decode.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "base": (_base_files(), {"tooltip": "Base MusicGen LM (audiocraft state_dict.bin) from models/musicgen. "
                                                "The released adapter needs facebook/musicgen-large."}),
            "adapter": (_adapter_files(), {"tooltip": "Instruct-MusicGen adapter from models/instruct_musicgen."}),
            "t5": ([defaults.T5] + _model_folders("t5"), {"tooltip": "T5 text encoder: a folder in models/musicgen, "
                                                                     f"or {defaults.T5} downloaded from Hugging Face."}),
            "encodec": ([defaults.ENCODEC] + _model_folders("encodec"),
                        {"tooltip": "EnCodec 32 kHz: a folder in models/musicgen, or downloaded from Hugging Face."}),
            "dtype": (list(defaults.DTYPE_CHOICES), {"default": "auto",
                      "tooltip": "LM precision: auto is fp16 on GPU and fp32 on CPU. int8: the LM's weights in "
                                 "int8, half the memory of fp16 (for small GPUs), activations in fp16 on GPU."}),
        }}

    # No VALIDATE_INPUTS: ComfyUI's own check of each dropdown against its list (re-read at every
    # run, so newly added files count) reports a missing file once, naming the input.

    def load(self, base, adapter, t5, encodec, dtype):
        resident = get_editor(comfy_glue.model_file("musicgen", base),
                                 comfy_glue.model_file("instruct_musicgen", adapter),
                                 _resolve_folder(t5), _resolve_folder(encodec), dtype,
                                 progress=comfy_glue.staged_progress_callback("Instruct-MusicGen"))
        return (resident,)
