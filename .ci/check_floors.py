"""The dependency floors hold: install exactly the oldest version of every runtime dependency that
pyproject.toml declares (or, with --newest, the newest ones) into a fresh virtual environment and
run the test suite there, minus the ComfyUI and browser tests (they run in ComfyUI's own
environment).

    python .ci/check_floors.py            # the declared floors
    python .ci/check_floors.py --newest   # the newest versions the index offers

Prints the versions installed, the pytest summary and the seconds it took; exits with pytest's
status. Needs the package index (pip) and a few GB of disk for the virtual environment.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# In ComfyUI's environment, not ours: these need a ComfyUI server or a browser.
LEFT_OUT = ["tests/test_comfyui.py", "tests/test_browser.py", "tests/test_workflows.py"]


def declared() -> list[str]:
    """The dependencies the suite runs on as pyproject.toml declares them, e.g. "torch>=2.6": the
    runtime ones and the libraries of the test extra (pytest and playwright aside: tools)."""
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    tools = ("pytest", "playwright")
    return project["dependencies"] + [r for r in project["optional-dependencies"]["test"] if not r.startswith(tools)]


def pinned_to_floor(requirement: str) -> str:
    name, floor = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([0-9][^,;\s]*)", requirement.strip()).groups()
    return f"{name}=={floor}"


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--newest", action="store_true", help="the newest versions instead of the floors")
    p.add_argument("pytest_args", nargs="*", help="extra arguments for pytest")
    args = p.parse_args()
    start = time.perf_counter()
    requirements = [r.split(">=")[0] for r in declared()] if args.newest else [pinned_to_floor(r) for r in declared()]
    with tempfile.TemporaryDirectory(prefix="imgen-floors-") as venv:
        python = str(Path(venv) / "bin" / "python")
        run([sys.executable, "-m", "venv", venv])
        run([python, "-m", "pip", "install", "-q", *(["--upgrade"] if args.newest else []), *requirements,
             "pytest>=7"])
        run([python, "-m", "pip", "install", "-q", "--no-deps", str(REPO)])
        versions = run([python, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
        names = {r.split("=")[0].split(">")[0].lower().replace("_", "-") for r in requirements}
        print("installed:", ", ".join(line for line in versions.splitlines()
                                      if line.split("==")[0].lower().replace("_", "-") in names))
        tests = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                *[f"--ignore={t}" for t in LEFT_OUT], *args.pytest_args], cwd=REPO)
    print(f"{'newest versions' if args.newest else 'declared floors'}: pytest exit {tests.returncode}, "
          f"{time.perf_counter() - start:.0f} s in all")
    return tests.returncode


if __name__ == "__main__":
    sys.exit(main())
