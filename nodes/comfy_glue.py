"""What the nodes need from ComfyUI: model folders, the model manager, progress and Cancel.
Written against ComfyUI's public module functions, which older versions also have (with fewer
keyword arguments, hence the fallbacks)."""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

MODEL_EXTENSIONS = {".bin", ".ckpt", ".safetensors", ".pt", ".pth"}
FOLDERS = ("musicgen", "instruct_musicgen")


def inside_comfyui() -> bool:
    return importlib.util.find_spec("folder_paths") is not None


def register_model_folders():
    """models/musicgen (base MusicGen, T5 and EnCodec folders) and models/instruct_musicgen
    (adapters), added to whatever the user configured, never replacing it."""
    import folder_paths
    for name in FOLDERS:
        default = os.path.join(folder_paths.models_dir, name)
        try:
            folder_paths.add_model_folder_path(name, default, is_default=True)
        except TypeError:  # ComfyUI before is_default existed
            folder_paths.add_model_folder_path(name, default)
        paths, exts = folder_paths.folder_names_and_paths[name]
        folder_paths.folder_names_and_paths[name] = (paths, set(exts) | MODEL_EXTENSIONS)


def folder_paths_of(name: str) -> list[str]:
    import folder_paths
    return [p for p in folder_paths.get_folder_paths(name) if os.path.isdir(p)]


def model_file(folder: str, name: str) -> str:
    import folder_paths
    path = folder_paths.get_full_path(folder, name)
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(f"{name} not found in the '{folder}' model folders: "
                                f"{', '.join(folder_paths.get_folder_paths(folder))}")
    return path


def torch_device():
    import comfy.model_management as mm
    return mm.get_torch_device()


def make_patcher(module, on_unload=None):
    """A plain ModelPatcher for `module`; `on_unload()` is called when ComfyUI unloads it where
    there is nowhere to move it (offload device = load device: the CPU), so that the caller can
    drop the weights instead of keeping them where they are."""
    import comfy.model_management as mm
    import comfy.model_patcher
    patcher = comfy.model_patcher.ModelPatcher(module, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    if getattr(patcher, "is_dynamic", lambda: False)():
        # a dynamic patcher moves buffers without Module._apply, which would leave the CPU's packed
        # int8 layers packed around empty weights, and loads models part by part
        raise RuntimeError("this ComfyUI gave Instruct-MusicGen a dynamic ModelPatcher, which it cannot run on; "
                           "start ComfyUI with --disable-dynamic-vram, or report this with your ComfyUI version")
    if on_unload is not None and hasattr(patcher, "add_callback"):  # ComfyUI since late 2024
        from comfy.patcher_extension import CallbacksMP

        def detached(p, unpatch_all):
            if unpatch_all and _same(torch.device(p.load_device), torch.device(p.offload_device)):
                on_unload()
        patcher.add_callback(CallbacksMP.ON_DETACH, detached)
    return patcher


def load_to_device(patcher, memory_required: int = 0):
    """Ask ComfyUI to make room for `memory_required` bytes of working memory and put every
    weight on the load device; a clear error names what it left elsewhere."""
    import comfy.model_management as mm
    try:
        mm.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)
    except TypeError:  # older ComfyUI: no force_full_load
        mm.load_models_gpu([patcher], memory_required=memory_required)
    check_on_device(patcher.model, patcher.load_device)


def check_on_device(module, device):
    """Every parameter and buffer of `module` on `device`, or a RuntimeError naming those that
    are not (ComfyUI loads models part by part under --novram, and under --lowvram without
    force_full_load)."""
    device = torch.device(device)
    left = [(name, t.device) for name, t in [*module.named_parameters(), *module.named_buffers()]
            if not _same(t.device, device)]
    if left:
        shown = ", ".join(f"{name} ({where})" for name, where in left[:3]) + (" ..." if len(left) > 3 else "")
        raise RuntimeError(f"ComfyUI left {len(left)} of Instruct-MusicGen's weights off {device}: {shown}. "
                           f"The model runs with all its weights on one device: start ComfyUI without --novram "
                           f"(and, with --lowvram, free memory or pick int8 in the loader)")


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def empty_device_cache():
    import comfy.model_management as mm
    mm.soft_empty_cache()


def progress_callback():
    """A progress(done, total) for the library: drives the node's bar and honours Cancel."""
    import comfy.model_management as mm
    import comfy.utils
    bar = None

    def update(done: int, total: int):
        nonlocal bar
        mm.throw_exception_if_processing_interrupted()
        if bar is None:
            bar = comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)
    return update


def staged_progress_callback(label: str):
    """A progress(stage, done, total) for long loads: one node bar that restarts for each stage,
    and a console line when a stage starts."""
    bar = progress_callback()
    current = None

    def update(stage: str, done: int, total: int):
        nonlocal current
        if stage != current:
            current = stage
            print(f"[{label}] {stage}...", flush=True)
        bar(done, total)
    return update


def input_directory() -> str:
    import folder_paths
    return folder_paths.get_input_directory()


def annotated_path(name: str) -> str:
    import folder_paths
    return folder_paths.get_annotated_filepath(name)


def output_directory() -> str:
    import folder_paths
    return folder_paths.get_output_directory()


def save_path(prefix: str):
    import folder_paths
    return folder_paths.get_save_image_path(prefix, output_directory())


def plain_errors(function):
    """A node function whose errors from this pack reach ComfyUI as the built-in type they derive
    from (ValueError, FileNotFoundError, ...) with the same message. ComfyUI names an exception by
    its module, and this pack's modules live under the server's custom_nodes path: its error
    panel would show that path before the message, where core errors read "ValueError"."""
    package = __name__.rsplit(".", 2)[0]  # the pack, under whatever name ComfyUI imported it

    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as e:
            if not type(e).__module__.startswith(package + "."):
                raise
            builtin = next(c for c in type(e).__mro__ if c.__module__ == "builtins")
            raise builtin(str(e)) from e
    return run
