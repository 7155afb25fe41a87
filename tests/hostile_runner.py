"""Runs `imgen` commands one after another in this one process and reports, for each: the exit
code (or the exception that escaped), what it printed on stderr, its peak resident memory above
what the process held when it started (Linux: the peak is reset before each), and its seconds.

    python tests/hostile_runner.py cases.json results.jsonl
"""
import contextlib
import io
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's imgen_core


def memory(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


def run(case: dict) -> dict:
    from imgen_core import cli
    os.environ.update(case.get("env", {}))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from here
    before, start, err = memory("VmRSS"), time.perf_counter(), io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = cli.main(case["argv"])
        except BaseException:  # noqa: BLE001 - what escapes is exactly what the test looks for
            code = "escaped"
            traceback.print_exc(file=err)
    return {"code": code, "stderr": err.getvalue(), "seconds": time.perf_counter() - start,
            "peak_mb": (memory("VmHWM") - before) / 2 ** 20}


def main():
    import safetensors.torch  # noqa: F401 - imported before measuring: their memory is not the case's
    import soundfile  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoTokenizer, EncodecModel, T5EncoderModel  # noqa: F401

    import imgen_core.cli  # noqa: F401
    import imgen_core.loader  # noqa: F401
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    with open(sys.argv[2], "w") as out:  # one line a case, written as it ends: a crash names its case
        for case in cases:
            out.write(json.dumps({"name": case["name"], **run(case)}) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
