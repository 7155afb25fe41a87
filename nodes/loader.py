"""Model loader node."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..imgen_core import defaults, parts
from ..imgen_core.adapter_file import AdapterFile
from ..imgen_core.hub import offline_default
from ..imgen_core.official_checkpoint import is_official_checkpoint
from . import comfy_glue
from .resident import get_editor

CATEGORY = "audio/Instruct-MusicGen"
MODEL_TYPE = "IMGEN_MODEL"


FROM_CHECKPOINT = "from the checkpoint"
# Files the loader writes itself (the official checkpoint converted once, beside it): not choices.
_CONVERTED = re.compile(r"\.[0-9a-f]{12}\.(model|adapter)\.safetensors$")


def download_entry(part: parts.Part) -> str:
    """The choice that downloads a released part that is not here. It names no model file (it
    ends in a bracket), so that a workflow saved with the part's own name still shows the
    frontend's missing-model dialog while the part is absent."""
    return f"{part.local_name} (download {parts.human_size(part.size)})"


def _base_files() -> list[str]:
    import folder_paths
    names = folder_paths.get_filename_list("musicgen")
    return [FROM_CHECKPOINT] + sorted(n for n in names if n.endswith(".bin")
                                      and not n.endswith("compression_state_dict.bin"))


def _adapter_files() -> list[str]:
    import folder_paths
    names = sorted(n for n in folder_paths.get_filename_list("instruct_musicgen")
                   if n.endswith((".safetensors", ".ckpt")) and not _CONVERTED.search(n))
    return _with_official(names, parts.CHECKPOINT)


def _model_folders(model_type: str, part: parts.Part) -> list[str]:
    """Sub-folders of the musicgen model folders holding a transformers model of `model_type`,
    after the released one's name, listed whether it is there or not (the run downloads it):
    these are no model files, so the frontend's missing-model dialog never looks at them, and a
    workflow naming them runs in either case."""
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
    return [part.local_name] + [n for n in sorted(set(found)) if n != part.local_name]


def _with_official(names: list[str], part: parts.Part) -> list[str]:
    """The released file first: its own name when it is here, else the entry that downloads it."""
    if part.local_name in names:
        return [part.local_name] + [n for n in names if n != part.local_name]
    return [download_entry(part)] + names


def _official(value: str, part: parts.Part) -> bool:
    return value in (part.local_name, download_entry(part))


def _comfy_folder(part: parts.Part) -> Path:
    """Where a released part goes: the first of its model folders that exists (else the first)."""
    import folder_paths
    existing = comfy_glue.folder_paths_of(part.comfy_folder)
    return Path(existing[0] if existing else folder_paths.get_folder_paths(part.comfy_folder)[0])


def _located(part: parts.Part) -> Path | None:
    for root in comfy_glue.folder_paths_of(part.comfy_folder):
        found = parts.locate(part, Path(root))
        if found is not None:
            return found
    return None


def weight_files(base: str, adapter: str, t5: str, encodec: str, progress) -> dict[str, str]:
    """The loader's choices as files: the user's own from the model folders; the released parts
    from there too, downloaded into them first when missing (every missing one named at once
    when offline)."""
    wanted = {"adapter": (adapter, parts.CHECKPOINT), "t5": (t5, parts.T5), "encodec": (encodec, parts.ENCODEC),
              "base": (base, parts.BASE_CONFIG)}
    official = {role: part for role, (value, part) in wanted.items()
                if (value == FROM_CHECKPOINT if role == "base" else _official(value, part))}
    if base == FROM_CHECKPOINT and "adapter" not in official and not is_official_checkpoint(adapter):
        del official["base"]  # our own file: the whole model needs nothing more; an adapter, its base
        if AdapterFile(comfy_glue.model_file("instruct_musicgen", adapter)).lm_config is None:
            raise ValueError(f"{adapter} is an adapter without the LM: choose its base MusicGen (state_dict.bin) "
                             f"instead of '{FROM_CHECKPOINT}'")
    files = {"base": None if "base" in official else comfy_glue.model_file("musicgen", base),
             "adapter": None if "adapter" in official else comfy_glue.model_file("instruct_musicgen", adapter),
             "t5": None if "t5" in official else _resolve_folder(t5),
             "encodec": None if "encodec" in official else _resolve_folder(encodec)}
    missing = []
    for role, part in official.items():
        found = _located(part)
        if found is None:
            missing.append((role, part))
        else:
            files[role] = str(found)
    if missing and offline_default():
        raise FileNotFoundError(parts.missing_message(
            [p for _, p in missing], lambda p: _comfy_folder(p) / p.local_name, True,
            "Download them on a machine with internet (`imgen download --to DIR`, or the links above) and put "
            "each where it says, then run again."))
    for role, part in missing:
        print(f"[Instruct-MusicGen] downloading {part.what} from {part.repo} into {_comfy_folder(part)}", flush=True)
        files[role] = str(parts.fetch_part(part, _comfy_folder(part), progress))
    return files


def _resolve_folder(name: str) -> str:
    """A folder name inside the musicgen model folders."""
    for root in comfy_glue.folder_paths_of("musicgen"):
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    raise FileNotFoundError(f"{name} not found in the 'musicgen' model folders")


class InstructMusicGenLoader:
    DESCRIPTION = ("Loads Instruct-MusicGen. The official checkpoint (finetuned.ckpt in models/instruct_musicgen) "
                   "holds the whole model; it is converted once, beside it, into a compact file. The released parts "
                   "that are not in ComfyUI's model folders (the checkpoint, shown as 'finetuned.ckpt (download "
                   "14.6 GB)', T5 and EnCodec) are downloaded there from Hugging Face on the first run (resumable, "
                   "verified), with progress on this node. Loaded once and shared by every workflow; ComfyUI may "
                   "offload it when another model needs the memory.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded editor, for Encode, Instruct Edit and Decode.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "base": (_base_files(), {"tooltip": "Base MusicGen. 'from the checkpoint': the official checkpoint holds "
                                                "the whole model; only MusicGen-large's config.json (8 kB) is read, "
                                                "downloaded into models/musicgen/musicgen-large when missing. Or an "
                                                "audiocraft state_dict.bin from models/musicgen, for adapters without "
                                                "the LM."}),
            "adapter": (_adapter_files(), {"tooltip": "Instruct-MusicGen checkpoint or adapter from "
                                                      "models/instruct_musicgen. 'finetuned.ckpt (download 14.6 GB)' "
                                                      "fetches the official one from ldzhangyx/instruct-MusicGen."}),
            "t5": (_model_folders("t5", parts.T5), {"tooltip": "T5 text encoder: a folder in models/musicgen. "
                                                              "t5-base is downloaded into models/musicgen/t5-base "
                                                              "(0.89 GB) on the first run when it is not there."}),
            "encodec": (_model_folders("encodec", parts.ENCODEC),
                        {"tooltip": "EnCodec 32 kHz: a folder in models/musicgen. encodec_32khz is downloaded "
                                    "from facebook/encodec_32khz into models/musicgen/encodec_32khz (0.24 GB) on "
                                    "the first run when it is not there."}),
            "dtype": (list(defaults.DTYPE_CHOICES), {"default": "auto",
                      "tooltip": "LM precision: auto is fp16 on GPU and fp32 on CPU. int8: the LM's weights in "
                                 "int8, half the memory of fp16 (for small GPUs), activations in fp16 on GPU."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, adapter):
        """The adapter is in its list, or is the released checkpoint before it is downloaded (a shared
        workflow's 'finetuned.ckpt', which the frontend shows as missing: the run downloads it).
        The list is read anew, so new files count. The other inputs ComfyUI checks itself."""
        choices = _adapter_files()
        if adapter in choices or adapter == parts.CHECKPOINT.local_name:
            return True
        return f"'{adapter}' is not in the instruct_musicgen model folders; choose one of: {', '.join(choices[:8])}"

    @comfy_glue.plain_errors
    def load(self, base, adapter, t5, encodec, dtype):
        progress = comfy_glue.staged_progress_callback("Instruct-MusicGen")
        files = weight_files(base, adapter, t5, encodec, progress)
        resident = get_editor(files["base"], files["adapter"], files["t5"], files["encodec"], dtype, progress=progress)
        return (resident,)
