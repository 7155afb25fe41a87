"""Which weights, on which device, in which dtype: the library's defaults outside generation
(those are `sampling.Sampling`). Everything that offers these choices (the Python API, the
command line, the trainer, the ComfyUI loader) takes them from here."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .quant import int8_activation_dtype

# The released model: MusicGen-large with the Slakh2100 adapter, T5-base and EnCodec 32 kHz.
BASE = "facebook/musicgen-large"
ADAPTER = "ldzhangyx/instruct-MusicGen"
T5 = "t5-base"
ENCODEC = "facebook/encodec_32khz"

# EnCodec 32 kHz codes 50 frames a second: what settings in seconds are checked against before the
# codec itself is loaded (it then decides).
FRAME_RATE = 50

FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# What a user may ask for: a float dtype, or int8 weights with activations in the dtype
# quant.int8_activation_dtype picks (fp16 on CUDA, fp32 for fbgemm on the CPU).
DTYPE_CHOICES = ("auto", *FLOAT_DTYPES, "int8")


def cache_dir() -> Path:
    """Where the library keeps what it makes once (converted checkpoints) and downloads."""
    root = os.environ.get("IMGEN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"),
                                                          "instruct_musicgen")
    return Path(root).expanduser()


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """"auto": the first GPU when there is one, else the CPU. A device this machine does not have
    is refused here, before anything is loaded onto it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {str(device)[:40]!r}; use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (chosen.index or 0) >= count:
            raise ValueError(f"there is no CUDA device {chosen.index or 0} here ({count} found); use auto or cpu"
                             if count == 0 else f"there is no CUDA device {chosen.index} here (0 to {count - 1})")
    elif chosen.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"unsupported device {str(device)[:40]!r}; use auto, cpu, cuda or cuda:N")
    return chosen


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The activation dtype for a dtype choice on `device` ("auto": fp16 on CUDA, fp32 elsewhere;
    "int8": that of the int8 layers' activations)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype == "int8":
        return int8_activation_dtype(device)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPE_CHOICES)}")
    return FLOAT_DTYPES[dtype]
