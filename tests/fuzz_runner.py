"""Mutates valid files at random and reads every mutant with the reader of its format: each must
load or be refused with our error (CheckpointError for weights, DatasetError for MIDI files), in
bounded time and memory. Any other exception, or a crash of this process, is a failure.

    python tests/fuzz_runner.py SEED CASES SECONDS OUT.jsonl FILE...

FILEs are torch.save files (read as a base LM when named *.bin, as the official checkpoint when
*.ckpt, as a plain torch.save dict otherwise), our adapters (*.safetensors) or Standard MIDI
Files (*.mid, read for their notes). A torch.save
file's mutants are of two kinds: bytes of the whole file changed (the archive's checks meet
them) and bytes of its pickle changed, then packed into a well-formed archive again (the pickle
interpreter meets them). OUT gets one line a case as it starts and one as it ends, so a crash
names its case; the last line sums up.
"""
import json
import os
import random
import re
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's imgen_core

MUTATIONS = ("flip", "byte", "truncate", "delete", "duplicate", "insert", "opcodes", "opcodes")
# Short well-formed opcode sequences, so that mutants reach past the first malformed byte.
SNIPPETS = [b"}", b"]", b")", b"(", b"t", b"s", b"u", b"a", b"e", b"\x85", b"\x86", b"\x87", b"N", b"\x88",
            b"K\x01", b"J\xff\xff\xff\x7f", b"X\x01\x00\x00\x00a", b"h\x00", b"h\x01", b"q\x00", b"R", b"b",
            b"Q", b"G\x7f\xf0\x00\x00\x00\x00\x00\x00", b"\x8a\x09" + bytes(9), b"ccollections\nOrderedDict\n",
            b"c__builtin__\nset\n", b"ctorch\nSize\n", b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch\nFloatStorage\n"]


def memory(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


def mutate(data: bytes, rng: random.Random, start: int = 0, end: int | None = None) -> bytes:
    """`data` with one random change inside [start, end)."""
    end = len(data) if end is None else end
    out = bytearray(data)
    at = rng.randrange(start, max(start + 1, end))
    kind = rng.choice(MUTATIONS)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(start, max(start + 1, end))
            if i < len(out):
                out[i] ^= 1 << rng.randrange(8)
    elif kind == "byte" and at < len(out):
        out[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, *b"()]}tsuaeXJKMGNqrhjcRbQ.\x85\x86\x87\x88\x89\x8a"])
    elif kind == "truncate":
        del out[at:]
    elif kind == "delete":
        del out[at:at + rng.randint(1, 64)]
    elif kind == "duplicate":
        out[at:at] = out[at:at + rng.randint(1, 4096)]
    elif kind == "insert":
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        out[at:at] = b"".join(rng.choice(SNIPPETS) for _ in range(rng.randint(1, 6)))
    return bytes(out)


def repacked(path: Path, rng: random.Random) -> bytes:
    """The archive again, well formed, with its pickle mutated."""
    import io
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, mutate(data, rng) if info.filename.endswith("data.pkl") else data)
    return buffer.getvalue()


def reader_for(path: Path):
    from imgen_core.adapter_file import read_adapter
    from imgen_core.audiocraft_lm import read_audiocraft_lm
    from imgen_core.official_checkpoint import read_official_checkpoint
    from imgen_core.midi_file import read_notes
    from imgen_core.safe_pickle import safe_load
    if path.suffix == ".mid":
        return read_notes
    if path.suffix == ".json":
        from imgen_core.base_config import base_lm_config
        return base_lm_config
    if path.suffix == ".safetensors":
        return read_adapter
    if path.suffix == ".bin":
        return read_audiocraft_lm
    if path.suffix == ".ckpt":
        return read_official_checkpoint
    return lambda p: safe_load(p, mmap=False)


def main() -> int:
    import torch  # noqa: F401 - imported before measuring
    from imgen_core.checkpoints import CheckpointError
    from imgen_core.data import DatasetError
    seed, cases, seconds, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
    sources = [Path(p) for p in sys.argv[5:]]
    originals = {p: p.read_bytes() for p in sources}
    counts = {"loaded": 0, "refused": 0, "failed": 0}
    worst = {"seconds": 0.0, "peak_mb": 0.0}
    for source in sources:  # each reader once before measuring: what it imports on first use is not the file's
        reader_for(source)(source)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, open(out, "w") as log:
        for case in range(cases):
            if time.perf_counter() - began > seconds:
                break
            rng = random.Random(f"{seed}:{case}")
            source = rng.choice(sources)
            data = originals[source]
            if source.suffix == ".safetensors":
                header = 8 + int.from_bytes(data[:8], "little")
                data = mutate(data, rng, 0, header if rng.random() < 0.9 else len(data))
            elif source.suffix not in (".mid", ".json") and rng.random() < 0.7:
                data = repacked(source, rng)
            else:
                data = mutate(data, rng)
            mutant = Path(tmp) / f"mutant{source.suffix}"
            mutant.write_bytes(data)
            log.write(json.dumps({"case": case, "source": source.name, "started": True}) + "\n")
            log.flush()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before, start = memory("VmRSS"), time.perf_counter()
            try:
                reader_for(source)(mutant)
                outcome = "loaded"
            except (CheckpointError, DatasetError):
                outcome = "refused"
            except Exception:  # noqa: BLE001 - anything else is what the fuzzer looks for
                outcome = "failed"
                log.write(json.dumps({"case": case, "source": source.name, "failed": traceback.format_exc()}) + "\n")
            counts[outcome] += 1
            worst["seconds"] = max(worst["seconds"], time.perf_counter() - start)
            peak = (memory("VmHWM") - before) / 2 ** 20
            if peak > worst["peak_mb"]:
                worst.update(peak_mb=peak, worst_case=case, worst_source=source.name, worst_outcome=outcome)
            os.remove(mutant)
        log.write(json.dumps({"summary": counts, "cases": sum(counts.values()), **worst,
                              "seconds_in_all": time.perf_counter() - began}) + "\n")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
