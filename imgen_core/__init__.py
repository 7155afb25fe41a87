"""Instruct-MusicGen: edit music by instruction. The library under the CLI and the ComfyUI nodes."""
from __future__ import annotations

import re

__version__ = "0.2.0"  # the same as pyproject.toml's (tests/test_packaging.py)
# The oldest torch this package runs on (pyproject.toml's floor; a test keeps the two equal):
# reading checkpoints needs weights-only unpickling with named stand-ins (torch 2.6).
MIN_TORCH = "2.6"


def torch_problem() -> str | None:
    """One line saying why the installed torch cannot run this package, or None when it can."""
    try:
        import torch
    except ImportError:
        return f"PyTorch is not installed; this package needs torch>={MIN_TORCH} (pip install -r requirements.txt)"
    have = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])
    need = tuple(int(x) for x in MIN_TORCH.split("."))
    if have < need:
        return (f"this package needs torch>={MIN_TORCH}, but this environment has torch {torch.__version__}; "
                f"upgrade it (pip install 'torch>={MIN_TORCH}')")
    return None
