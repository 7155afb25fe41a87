"""Reading a `torch.save` file without running anything from it, in bounded memory and time: our
own interpreter of what torch.save writes. Neither torch's nor Python's unpickler is used.

A torch.save file is a zip archive: `<name>/data.pkl`, a protocol-2 pickle of the object whose
tensors refer to storages by persistent id, and `<name>/data/<key>`, each storage's raw
little-endian bytes, stored uncompressed. The archive is checked before anything is read from it
(`check_archive`): at most MAX_ENTRIES entries, every one stored and inside the file, no two names
alike (in any case), all under one folder, exactly one pickle, named exactly `<name>/data.pkl`,
of at most MAX_PICKLE_BYTES. Then the pickle is interpreted opcode by opcode (`_Reader`). These
opcodes, everything torch.save writes for state dicts and Lightning checkpoints, are the only
ones accepted:

    opcode                      byte         what it does here
    PROTO                       \\x80         protocol 2 only (torch.save's)
    EMPTY_DICT/_LIST/_TUPLE     } ] )        a new empty container
    MARK                        (            remembers the stack position
    TUPLE, TUPLE1/2/3           t \\x85-\\x87  a tuple of the items above the mark / of the last 1-3
    APPEND, APPENDS             a e          items into the list below them
    SETITEM, SETITEMS           s u          pairs into the dict below them; keys str, int, float, bool, None
    BINUNICODE                  X            a str (UTF-8)
    BININT, BININT1, BININT2    J K M        an int
    LONG1                       \\x8a         an int of at most 8 bytes
    BINFLOAT                    G            a float
    NONE, NEWTRUE, NEWFALSE     N \\x88 \\x89  None, True, False
    BINPUT, LONG_BINPUT         q r          into the memo (at most MAX_MEMO entries)
    BINGET, LONG_BINGET         h j          from the memo
    GLOBAL                      c            one of the names below; any other is refused by name
    REDUCE                      R            calls one of the names below, its arguments checked
    BUILD                       b            state, for an inert stand-in (a dict's attributes: dropped)
    BINPERSID                   Q            a storage: ('storage', torch.<Type>Storage, key, location, numel)
    STOP                        .            the end: one object, a dict

The names: `collections.OrderedDict()` (a dict), `torch._utils._rebuild_tensor_v2` and
`_rebuild_parameter` (a view of a storage, checked to lie inside it), `torch.<Type>Storage` (the
dtype of a storage), `torch.Size(ints)`, `builtins.set(scalars)`, `_codecs.encode(str, "latin1")`
(how protocol 2 writes bytes) and, per format, the classes a checkpoint is known to name, bound
to inert stand-ins that only record what they are given.

Bounds: MAX_ITEMS containers and entries, MAX_TENSORS tensors and MAX_MEMO memo entries in all
(every call counts its arguments, which it may copy), MAX_DEPTH levels of
nesting, strings and bytes no more than the pickle's size; every tensor lies inside its storage,
and each storage is read or mapped once, so what the reader holds never exceeds the file.
Dictionary keys and set items are never containers, so nothing recursive runs on them. Tensors
may view the same storage (the official checkpoint's condition stream shares the LM's weights);
whoever copies a set of tensors refuses, with `checkpoints.refuse_hollow`, those that claim more
bytes than the file regions they view, so a few bytes cannot become gigabytes.
"""
from __future__ import annotations

import math
import os
import struct
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoints import CheckpointError, brief

# MusicGen-large's pickle is about 0.1 MB, the official checkpoint's about 1 MB.
MAX_PICKLE_BYTES = 8 * 1024 * 1024
MAX_ENTRIES = 50_000       # the official checkpoint has a few thousand storages
MAX_DIRECTORY_BYTES = 8 * 1024 * 1024  # its central directory, about 100 bytes an entry
MAX_ITEMS = 1_000_000      # containers made and entries put into them, in all
MAX_TENSORS = 100_000
MAX_MEMO = 500_000
MAX_DEPTH = 64
MAX_DIMS = 32

STORAGE_TYPES = {"torch.FloatStorage": torch.float32, "torch.HalfStorage": torch.float16,
                 "torch.BFloat16Storage": torch.bfloat16, "torch.DoubleStorage": torch.float64,
                 "torch.LongStorage": torch.int64, "torch.IntStorage": torch.int32,
                 "torch.ShortStorage": torch.int16, "torch.CharStorage": torch.int8,
                 "torch.ByteStorage": torch.uint8, "torch.BoolStorage": torch.bool}
SCALARS = (str, int, float, bool, type(None))


class Inert:
    """Stand-in for a class named in a checkpoint's pickle: records its arguments, runs nothing."""

    qualified_name = "?"

    def __init__(self, *args):
        self.args, self.state = args, None

    def __repr__(self):
        return f"<inert {self.qualified_name}>"


class _Refused(Exception):
    """What is wrong with the pickle, in one line; made a CheckpointError with the file's name."""


def safe_load(path: str | os.PathLike, inert_globals=(), what: str = "checkpoint", mmap: bool = True) -> dict:
    """A `torch.save` dict of tensors, plain values and `inert_globals` (as `Inert` stand-ins).
    With `mmap`, the tensors view the file (read when used, copy-on-write); without, each
    storage is read into its own memory (freed when the caller drops its tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes)")
    archive = check_archive(path, what)
    names = {name: _Global(name, call) for name, call in _CALLS.items()}
    names.update({name: _Global(name, None, dtype=dtype) for name, dtype in STORAGE_TYPES.items()})
    for name in inert_globals:
        names[name] = _Global(name, type("Inert_" + name.replace(".", "_"), (Inert,), {"qualified_name": name}))
    storages = _Storages(path, archive, mmap)
    try:
        obj = _Reader(archive.pickle, names, storages).run()
        _check_depth(obj)
    except _Refused as e:
        raise CheckpointError(f"refusing {what} {path}: {e}. Nothing from the file was executed.") from None
    except RecursionError:
        raise CheckpointError(f"refusing {what} {path}: its pickle is nested too deeply") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} holds a {type(obj).__name__}, expected a dict")
    return obj


# ------------------------------------------------------------------ the archive

class Archive:
    """Where a checked archive keeps its pickle and its storages."""

    def __init__(self, folder: str, pickle: bytes, entries: dict[str, zipfile.ZipInfo]):
        self.folder, self.pickle, self.entries = folder, pickle, entries


def check_archive(path: Path, what: str) -> Archive:
    """Refuse anything torch.save would not have written before reading the pickle."""
    declared = _directory_size(path)
    if declared is None:
        raise CheckpointError(f"{what} {path} is truncated or corrupt: it is not a PyTorch zip archive "
                              f"(the format torch.save has written since PyTorch 1.6)")
    count, directory = declared
    if count > MAX_ENTRIES or directory > MAX_DIRECTORY_BYTES:
        raise CheckpointError(f"{what} {path} declares {count} archive entries in a directory of {directory} bytes; "
                              f"at most {MAX_ENTRIES} entries and {MAX_DIRECTORY_BYTES} bytes are accepted (the "
                              f"official checkpoint has a few thousand)")
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            _check_entries(path, infos, what)
            folder = infos[0].filename.split("/", 1)[0]
            pickles = [i for i in infos if i.filename.lower().endswith(".pkl")]
            if [i.filename for i in pickles] != [f"{folder}/data.pkl"]:
                raise CheckpointError(
                    f"{what} {path} holds the pickle entries {brief([i.filename for i in pickles], 160)}; "
                    f"torch.save writes exactly one, named {folder}/data.pkl")
            if pickles[0].file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(
                    f"{what} {path}: its pickle is {pickles[0].file_size} bytes; at most {MAX_PICKLE_BYTES} are "
                    f"accepted (real checkpoints hold about 1 MB)")
            order = z.NameToInfo.get(f"{folder}/byteorder")
            if order is not None and (order.file_size > 16 or z.read(order).strip() not in (b"little", b"")):
                raise CheckpointError(f"{what} {path} was written on a big-endian machine; only little-endian "
                                      f"files are read")
            return Archive(folder, z.read(pickles[0]), {i.filename: i for i in infos})
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{what} {path} is truncated or corrupt: {brief(e)}") from None


def _check_entries(path: Path, infos: list[zipfile.ZipInfo], what: str):
    if not infos:
        raise CheckpointError(f"{what} {path} is an empty archive")
    size = path.stat().st_size
    folder = infos[0].filename.split("/", 1)[0]
    seen = set()
    for info in infos:
        name = info.filename
        if name.lower() in seen:
            raise CheckpointError(f"{what} {path} has two entries named {brief(name, 80)} (in some case); "
                                  f"torch.save writes each name once")
        seen.add(name.lower())
        if not name.startswith(folder + "/") or ".." in name.split("/"):
            raise CheckpointError(f"{what} {path}: entry {brief(name, 80)} is outside the archive's folder "
                                  f"{brief(folder, 80)}")
        if info.header_offset + info.compress_size > size:
            raise CheckpointError(f"{what} {path} is truncated: entry {brief(name, 80)} runs past the end")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise CheckpointError(
                f"{what} {path}: entry {brief(name, 80)} is compressed ({info.compress_size} bytes unpacking to "
                f"{info.file_size}); torch.save never compresses, so this is not a file it wrote")


def _directory_size(path: Path) -> tuple[int, int] | None:
    """(entries, bytes) of a zip's central directory as its end record declares them, read before
    the directory is parsed (each parsed entry costs memory); None when there is no end record."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        tail_start = max(0, size - (22 + 65535))
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        count, directory = struct.unpack_from("<HI", tail, at + 10)
        locator = at - 20
        if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":  # zip64: the counts are there
            offset = struct.unpack_from("<Q", tail, locator + 8)[0]
            if offset + 56 > size:
                return None
            f.seek(offset)
            record = f.read(56)
            if record[:4] != b"PK\x06\x06":
                return None
            count, directory = struct.unpack_from("<QQ", record, 32)
        return count, directory


class _Storages:
    """The archive's storages, each read (or mapped) once, when a tensor first uses it."""

    def __init__(self, path: Path, archive: Archive, mmap: bool):
        self.path, self.archive, self.mmap = path, archive, mmap
        self.declared: dict[str, tuple[torch.dtype, int]] = {}
        self.loaded: dict[str, torch.Tensor] = {}

    def declare(self, pid) -> "_Storage":
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"its pickle refers to {_shown(pid)}, which is not a storage")
        _, kind, key, location, numel = pid
        if not (isinstance(kind, _Global) and kind.dtype is not None):
            raise _Refused(f"its pickle refers to a storage of type {_shown(kind)}")
        if not (isinstance(key, str) and key.isdigit() and len(key) <= 12 and isinstance(location, str)
                and len(location) <= 64 and _whole(numel) and numel >= 0):
            raise _Refused(f"its pickle refers to a storage as ({', '.join(_shown(x) for x in pid)})")
        info = self.archive.entries.get(f"{self.archive.folder}/data/{key}")
        size = numel * _itemsize(kind.dtype)
        if info is None or info.file_size != size:
            found = "none" if info is None else f"{info.file_size} bytes"
            raise _Refused(f"storage {key} of {numel} values ({size} bytes) has no matching entry ({found})")
        if self.declared.setdefault(key, (kind.dtype, numel)) != (kind.dtype, numel):
            raise _Refused(f"storage {key} declared twice with different types or sizes")
        return _Storage(self, key, kind.dtype, numel)

    def tensor(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """The storage as a 1-D tensor of `numel` values."""
        if key not in self.loaded:
            info = self.archive.entries[f"{self.archive.folder}/data/{key}"]
            start = self._data_offset(info)
            if self.mmap and info.file_size:
                if start % _itemsize(dtype):
                    raise _Refused(f"storage {key} is not aligned to its values (torch.save aligns them)")
                raw = torch.from_numpy(np.memmap(self.path, dtype=np.uint8, mode="c", offset=start,
                                                 shape=(info.file_size,)))
            else:
                raw = torch.empty(info.file_size, dtype=torch.uint8)
                with open(self.path, "rb") as f:
                    f.seek(start)
                    if f.readinto(memoryview(raw.numpy())) != info.file_size:
                        raise _Refused(f"storage {key} is truncated")
            self.loaded[key] = raw.view(dtype) if numel else torch.empty(0, dtype=dtype)
        return self.loaded[key]

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(30)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise _Refused(f"entry {brief(info.filename, 80)} has no local header")
            name_length, extra_length = struct.unpack_from("<HH", header, 26)
            name = f.read(name_length)
        if name != info.filename.encode() or struct.unpack_from("<H", header, 8)[0] != 0:
            raise _Refused(f"entry {brief(info.filename, 80)}'s local header disagrees with the directory")
        start = info.header_offset + 30 + name_length + extra_length
        if start + info.file_size > self.path.stat().st_size:
            raise _Refused(f"entry {brief(info.filename, 80)} runs past the end of the file")
        return start


class _Storage:
    def __init__(self, storages: _Storages, key: str, dtype: torch.dtype, numel: int):
        self.storages, self.key, self.dtype, self.numel = storages, key, dtype, numel

    @property
    def nbytes(self) -> int:
        return self.numel * _itemsize(self.dtype)

    def __repr__(self):
        return f"<storage {self.key}>"


# ------------------------------------------------------------------ the interpreter

class _Global:
    """What GLOBAL pushes: a known name, callable by REDUCE (`call`) or a storage type (`dtype`)."""

    def __init__(self, name: str, call: Callable | None, dtype: torch.dtype | None = None):
        self.name, self.call, self.dtype = name, call, dtype

    def __repr__(self):
        return self.name


class _Machine:
    """The pickle machine's state: the bytes and the read position, the stack and its marks, the
    memo, and the count of what has been built (MAX_ITEMS)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}
        self.items = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Refused("its pickle ends early (truncated)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def number(self, form: str):
        return struct.unpack(form, self.take(struct.calcsize(form)))[0]

    def pop(self, what: str = "an item"):
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise _Refused(f"its pickle asks for {what} where its stack holds none")
        return self.stack.pop()

    def top(self, kind, what: str):
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise _Refused(f"its pickle adds {what} where its stack holds nothing")
        if not isinstance(self.stack[-1], kind):
            raise _Refused(f"its pickle adds {what} to a {type(self.stack[-1]).__name__}")
        return self.stack[-1]

    def pop_mark(self) -> list:
        if not self.marks:
            raise _Refused("its pickle closes a mark it never opened")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        self.charge(len(items))
        return items

    def charge(self, items: int):
        self.items += items
        if self.items > MAX_ITEMS:
            raise _Refused(f"its pickle builds more than {MAX_ITEMS} containers and entries")

    def put(self, index: int):
        if not self.stack:
            raise _Refused("its pickle memoizes from an empty stack")
        if index not in self.memo and len(self.memo) >= MAX_MEMO:
            raise _Refused(f"its pickle memoizes more than {MAX_MEMO} objects")
        self.memo[index] = self.stack[-1]

    def get(self, index: int):
        if index not in self.memo:
            raise _Refused(f"its pickle reads memo entry {index}, which it never wrote")
        self.stack.append(self.memo[index])


# The opcodes that push a constant, a number of a fixed form, or use the memo (see the table above).
_CONSTANTS = {0x4E: None, 0x88: True, 0x89: False, 0x29: ()}
_NUMBERS = {0x4A: "<i", 0x4B: "<B", 0x4D: "<H", 0x47: ">d"}
_MEMO = {0x71: ("put", "<B"), 0x72: ("put", "<I"), 0x68: ("get", "<B"), 0x6A: ("get", "<I")}
_TUPLES = {0x85: 1, 0x86: 2, 0x87: 3}


class _Reader(_Machine):
    """What each opcode does; `run` reads the pickle to its STOP."""

    def __init__(self, data: bytes, names: dict[str, _Global], storages: _Storages):
        super().__init__(data)
        self.names, self.storages = names, storages
        self.made_bytes = 0
        self.tensors = 0
        self.ops = {op: getattr(self, f"_{name}") for op, name in _OPCODES.items()}

    def run(self):
        while True:
            op = self.take(1)[0]
            if op == 0x2E:  # STOP
                if len(self.stack) != 1 or self.marks:
                    raise _Refused("its pickle ends with a malformed stack")
                return self.stack[0]
            if op in _CONSTANTS:
                self.stack.append(_CONSTANTS[op])
            elif op in _NUMBERS:
                self.stack.append(self.number(_NUMBERS[op]))
            elif op in _MEMO:
                action, form = _MEMO[op]
                getattr(self, action)(self.number(form))
            elif op in _TUPLES:
                items = [self.pop("a tuple item") for _ in range(_TUPLES[op])][::-1]
                self.charge(len(items))
                self.stack.append(tuple(items))
            elif op in self.ops:
                self.ops[op]()
            else:
                raise _Refused(f"its pickle uses opcode 0x{op:02x} at byte {self.pos - 1}, which torch.save "
                               f"does not write")

    def _proto(self):
        if self.take(1)[0] != 2:
            raise _Refused("its pickle is not protocol 2 (torch.save's)")

    def _mark(self):
        self.marks.append(len(self.stack))

    def _empty_dict(self):
        self.charge(1)
        self.stack.append({})

    def _empty_list(self):
        self.charge(1)
        self.stack.append([])

    def _tuple(self):
        self.stack.append(tuple(self.pop_mark()))

    def _append(self):
        value = self.pop("a list item")
        self.top(list, "an item").append(value)
        self.charge(1)

    def _appends(self):
        items = self.pop_mark()
        self.top(list, "items").extend(items)

    def _setitem(self):
        value, key = self.pop("a value"), self.pop("a key")
        self.top(dict, "a key")[_key(key)] = value
        self.charge(1)

    def _setitems(self):
        items = self.pop_mark()
        if len(items) % 2:
            raise _Refused("its pickle gives a dict a key without a value")
        target = self.top(dict, "keys")
        for i in range(0, len(items), 2):
            target[_key(items[i])] = items[i + 1]

    def _binunicode(self):
        text = self.take(self.number("<I"))
        try:
            self.stack.append(text.decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError:
            raise _Refused("its pickle holds a text that is not UTF-8") from None

    def _long1(self):
        n = self.take(1)[0]
        if n > 8:
            raise _Refused(f"its pickle holds a {n}-byte integer; torch.save's fit in 8 bytes")
        self.stack.append(int.from_bytes(self.take(n), "little", signed=True))

    def _global(self):
        module, name = self._line(), self._line()
        if (module, name) in NAME_MAPPING:  # protocol 2 writes Python 2 names (`__builtin__`)
            module, name = NAME_MAPPING[(module, name)]
        elif module in IMPORT_MAPPING:
            module = IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if full not in self.names:
            known = sorted(n for n, g in self.names.items() if isinstance(g.call, type))
            raise _Refused(f"its pickle references '{brief(full, 120)}', which is not a tensor, a plain value or "
                           f"one of the known names ({', '.join(known) or 'none'})")
        self.stack.append(self.names[full])

    def _line(self) -> str:
        end = self.data.find(b"\n", self.pos, self.pos + 257)
        if end < 0:
            raise _Refused("its pickle names a global without ending the name")
        text = self.data[self.pos:end]
        self.pos = end + 1
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise _Refused("its pickle names a global in non-ASCII characters") from None

    def _reduce(self):
        args, func = self.pop("arguments"), self.pop("a callable")
        if not isinstance(func, _Global) or func.call is None:
            raise _Refused(f"its pickle calls {_shown(func)}")
        if not isinstance(args, tuple):
            raise _Refused(f"its pickle calls {func.name} with arguments that are not a tuple")
        self.charge(1 + len(args))  # every call makes an object and may copy its arguments
        if isinstance(func.call, type) and issubclass(func.call, Inert):
            self.stack.append(func.call(*args))
        else:
            self.stack.append(func.call(self, *args))

    def _build(self):
        state = self.pop("a state")
        target = self.top((Inert, dict), "a state")
        if isinstance(target, Inert):
            target.state = state
        elif not isinstance(state, dict):  # a state dict's attributes (its `_metadata`): not kept
            raise _Refused("its pickle gives a dictionary a state that is not a dictionary of attributes")

    def _binpersid(self):
        self.stack.append(self.storages.declare(self.pop("a persistent id")))


# ------------------------------------------------------------------ what the known names build

def _rebuild_tensor(reader: _Reader, storage=None, offset=None, size=None, stride=None, requires_grad=False, hooks=None,
                   metadata=None, *extra) -> torch.Tensor:
    if not isinstance(storage, _Storage) or extra or metadata is not None:
        raise _Refused("its pickle rebuilds a tensor from something other than a storage")
    if not (_whole(offset) and offset >= 0 and _ints(size) and _ints(stride) and len(size) == len(stride)
            and len(size) <= MAX_DIMS and isinstance(requires_grad, bool) and _empty(hooks)):
        raise _Refused(f"its pickle rebuilds a tensor with malformed arguments ({_shown(offset)}, "
                       f"{_shown(size)}, {_shown(stride)})")
    reader.tensors += 1
    if reader.tensors > MAX_TENSORS:
        raise _Refused(f"its pickle builds more than {MAX_TENSORS} tensors")
    numel = math.prod(size)
    if numel and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.numel:
        raise _Refused(f"a tensor of shape {list(size)} at offset {offset} reaches past its storage of "
                       f"{storage.numel} values")
    base = reader.storages.tensor(storage.key, storage.dtype, storage.numel)
    return base.as_strided(size, stride, base.storage_offset() + offset)


def _rebuild_parameter(reader: _Reader, data=None, requires_grad=False, hooks=None, *extra):
    if not isinstance(data, torch.Tensor) or extra or not isinstance(requires_grad, bool) or not _empty(hooks):
        raise _Refused("its pickle rebuilds a parameter with malformed arguments")
    return data


def _ordered_dict(reader: _Reader, *args):
    if args:
        raise _Refused("its pickle builds an OrderedDict from arguments (torch.save writes none)")
    return {}


def _size(reader: _Reader, values=None, *extra):
    if extra or not isinstance(values, (list, tuple)) or len(values) > MAX_DIMS or not _ints(tuple(values)):
        raise _Refused("its pickle builds a torch.Size of something other than a few integers")
    return tuple(values)


def _set(reader: _Reader, values=None, *extra):
    if extra or not isinstance(values, list) or not all(isinstance(v, SCALARS) for v in values):
        raise _Refused("its pickle builds a set of something other than plain values")
    reader.charge(len(values))
    return set(values)


def _encode(reader: _Reader, text=None, encoding=None, *extra):
    if extra or not isinstance(text, str) or encoding != "latin1":
        raise _Refused(f"its pickle calls _codecs.encode with {_shown(encoding)} (torch.save writes bytes as "
                       f"latin1 text)")
    reader.made_bytes += len(text)
    if reader.made_bytes > MAX_PICKLE_BYTES:
        raise _Refused(f"its pickle makes more than {MAX_PICKLE_BYTES} bytes of bytes objects")
    try:
        return text.encode("latin1")
    except UnicodeEncodeError:
        raise _Refused("its pickle encodes a text that is not latin1") from None


# The other opcodes, by the method that runs them.
_OPCODES = {0x80: "proto", 0x28: "mark", 0x7D: "empty_dict", 0x5D: "empty_list", 0x74: "tuple", 0x61: "append",
            0x65: "appends", 0x73: "setitem", 0x75: "setitems", 0x58: "binunicode", 0x8A: "long1", 0x63: "global",
            0x52: "reduce", 0x62: "build", 0x51: "binpersid"}

_CALLS = {"collections.OrderedDict": _ordered_dict, "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
          "torch._utils._rebuild_parameter": _rebuild_parameter, "torch.Size": _size, "builtins.set": _set,
          "_codecs.encode": _encode}


def _key(key):
    if not isinstance(key, SCALARS):
        raise _Refused(f"its pickle uses a {type(key).__name__} as a dictionary key; torch.save's keys are names "
                       f"and numbers")
    return key


def _shown(x) -> str:
    """A value from the file, for a message: plain values shortened, containers by type only
    (their repr could be huge or nested beyond any limit)."""
    if isinstance(x, (str, int, float, bool, type(None), _Global, _Storage)):
        return brief(repr(x), 60)
    return f"a {type(x).__name__}"


def _empty(hooks) -> bool:
    return hooks is None or (isinstance(hooks, dict) and not hooks)


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _ints(values) -> bool:
    return isinstance(values, tuple) and all(_whole(v) and 0 <= v < 2 ** 62 for v in values)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _check_depth(obj):
    """Refuse containers nested more than MAX_DEPTH deep (walked without recursion; the memo can
    make a container hold itself, so each is visited once)."""
    seen, todo = set(), [(obj, 1)]
    while todo:
        item, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise _Refused(f"its pickle nests containers more than {MAX_DEPTH} deep")
        if isinstance(item, Inert):
            children = (item.args, item.state)
        elif isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple, set)):
            children = item
        else:
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        todo.extend((child, depth + 1) for child in children)
