"""ComfyUI adapters for imgen_core. Every node id starts with "InstructMusicGen"."""
from ..imgen_core import torch_problem

if torch_problem():  # one line in ComfyUI's log instead of a traceback; no nodes
    print(f"[Instruct-MusicGen] not loaded: {torch_problem()}", flush=True)
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
else:
    from .registry import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F401

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
