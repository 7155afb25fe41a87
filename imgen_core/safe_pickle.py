"""Reading a `torch.save` file without running code from it and within bounded memory.

Before torch sees the file: it must be a zip whose entries are stored (torch.save never
compresses, and a compressed entry could unpack to far more than the file), its pickles must be
small, and every global they name must be one of the few that tensors and plain containers need
(plus, per format, names bound to inert stand-ins). torch's own weights-only loader then reads it;
it allows more than we do (for example `bytearray`, which turns a few bytes into gigabytes).
"""
from __future__ import annotations

import os
import pickle
import pickletools
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
import zipfile
from pathlib import Path

import torch

from .checkpoints import CheckpointError, brief

# MusicGen-large's pickle is about 0.1 MB, the official checkpoint's about 1 MB; a pickle can
# build Python objects worth a few dozen times its size, so this bounds that memory too.
MAX_PICKLE_BYTES = 8 * 1024 * 1024

_STORAGES = ("Float", "Half", "BFloat16", "Double", "Long", "Int", "Short", "Char", "Byte", "Bool")
_PICKLED_DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
# What torch.save writes for tensors, parameters and plain containers; nothing here allocates
# more than the pickle's own bytes describe.
TENSOR_GLOBALS = frozenset(
    ["collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
     "torch.Size", "torch.device", "builtins.set", "_codecs.encode"]
    + [f"torch.{kind}Storage" for kind in _STORAGES] + [f"torch.{name}" for name in _PICKLED_DTYPE_NAMES])


class Inert:
    """Stand-in for a class named in a checkpoint's pickle: records its arguments, runs nothing."""

    qualified_name = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<inert {self.qualified_name}>"


def _inert(name: str) -> type:
    return type("Inert_" + name.replace(".", "_"), (Inert,), {"qualified_name": name})


def safe_load(path: str | os.PathLike, inert_globals=(), what: str = "checkpoint", mmap: bool = True) -> dict:
    """A `torch.save` dict with tensors, plain containers and `inert_globals` (bound to inert
    stand-ins). With `mmap`, nothing is read until a tensor is used; without, every tensor is
    read into its own memory (freed as soon as the caller drops it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{what} {path} is truncated or corrupt: it is not a PyTorch zip archive "
                              f"(the format torch.save has written since PyTorch 1.6)")
    check_archive(path, set(inert_globals), what)
    stubs = [(_inert(name), name) for name in inert_globals]
    try:
        with torch.serialization.safe_globals(stubs):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing {what} {path}: {brief(e)}. Nothing from the file was executed.") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{what} {path} is truncated or corrupt and cannot be read: {brief(e)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def check_archive(path: Path, inert_globals: set[str], what: str):
    """Refuse compressed or out-of-file entries, oversized pickles and unknown globals."""
    try:
        with zipfile.ZipFile(path) as z:
            size = path.stat().st_size
            for info in z.infolist():
                if info.header_offset + info.compress_size > size:
                    raise CheckpointError(f"{what} {path} is truncated: entry {brief(info.filename, 80)} runs "
                                          f"past the end")
                if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                    raise CheckpointError(
                        f"{what} {path}: entry {brief(info.filename, 80)} is compressed ({info.compress_size} "
                        f"bytes unpacking to {info.file_size}); torch.save never compresses, so this is not "
                        f"a file it wrote")
            for info in z.infolist():
                if info.filename.endswith(".pkl"):
                    if info.file_size > MAX_PICKLE_BYTES:
                        raise CheckpointError(
                            f"{what} {path}: its pickle {brief(info.filename, 80)} is {info.file_size} bytes; "
                            f"at most {MAX_PICKLE_BYTES} are accepted (real checkpoints hold about 1 MB)")
                    _check_globals(z.read(info), TENSOR_GLOBALS | inert_globals, path, what)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{what} {path} is truncated or corrupt: {brief(e)}") from None


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
               "STRING"}


def _python3_name(module: str, name: str = "") -> str:
    """The name the unpickler will look up: protocol 2 writes Python 2 names (`__builtin__`), which
    it maps as `pickle` does."""
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _check_globals(data: bytes, allowed: set[str], path: Path, what: str):
    """Every global a pickle names must be in `allowed`; checked by reading the opcodes, before
    anything is unpickled."""
    recent: list = []  # the last string pushes, for STACK_GLOBAL (module and name from the stack)
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                name = _python3_name(*str(arg).split(" ", 1))
            elif op.name == "STACK_GLOBAL":
                name = _python3_name(*recent[-2:]) if len(recent) >= 2 else "<computed name>"
            elif op.name in ("EXT1", "EXT2", "EXT4"):
                name = f"<extension code {arg}>"
            else:
                if op.name in _STRING_OPS:
                    recent = (recent + [str(arg)])[-2:]
                elif op.name not in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):
                    recent = []
                continue
            if name not in allowed:
                raise CheckpointError(
                    f"refusing {what} {path}: its pickle references '{brief(name, 120)}', which is not a "
                    f"tensor, a plain container or one of the known names ({', '.join(sorted(allowed - TENSOR_GLOBALS)) or 'none'}). "
                    f"Nothing from the file was executed.")
            recent = []
    except CheckpointError:
        raise
    except (ValueError, EOFError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{what} {path} has a corrupt pickle: {brief(e)}") from None

