"""What the package declares: the same floors everywhere, and a clear refusal of an old torch."""
import re
import subprocess
import sys

from pathlib import Path

import pytest

import imgen_core

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
from imgen_core.cli import main

REPO = Path(__file__).resolve().parent.parent


def declared() -> list[str]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


def test_requirements_txt_declares_the_same_floors_as_pyproject():
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == declared()


def test_the_torch_the_code_checks_for_is_the_declared_floor():
    [torch_floor] = [r for r in declared() if r.startswith("torch>=")]
    assert torch_floor == f"torch>={imgen_core.MIN_TORCH}"


def test_an_old_torch_gets_one_line_naming_the_version_it_needs(monkeypatch, capsys, tmp_path):
    import torch
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    assert main(["demo", "-o", str(tmp_path / "demo.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"needs torch>=\d+\.\d+, but this environment has torch 2\.5\.1", err[0])
    assert not (tmp_path / "demo.wav").exists()


@pytest.mark.parametrize("version, loaded", [("2.5.1", False), (None, True)])
def test_comfyui_loads_no_nodes_with_an_old_torch_and_says_why(version, loaded):
    code = ("import importlib.util, sys, torch\n"
            + (f"torch.__version__ = {version!r}\n" if version else "")
            + f"spec = importlib.util.spec_from_file_location('pack', {str(REPO / '__init__.py')!r}, "
            f"submodule_search_locations=[{str(REPO)!r}])\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n"
            "print(len(m.NODE_CLASS_MAPPINGS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    if loaded:
        assert out.stdout.strip().endswith("6")
    else:
        assert "[Instruct-MusicGen] not loaded: this package needs torch>=" in out.stdout
        assert out.stdout.strip().endswith("0")


def test_pyproject_has_what_the_comfy_registry_requires():
    """The fields `comfy node validate` and the registry read (its documented specification):
    a name without "ComfyUI", an X.Y.Z version, a Repository address, a publisher, a display name
    and an icon address that is this repository's own square PNG."""
    import json
    import struct
    with open(REPO / "pyproject.toml", "rb") as f:
        meta = tomllib.load(f)
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    repository = project["urls"]["Repository"]
    assert repository.startswith("https://github.com/")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    owner_repo = repository.removeprefix("https://github.com/")
    assert comfy["Icon"] == f"https://raw.githubusercontent.com/{owner_repo}/main/icon.png"
    png = (REPO / "icon.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == height <= 800
    assert all((REPO / folder).is_dir() for folder in comfy["includes"])
    [model] = comfy["Models"]
    workflow = json.loads((REPO / "workflows" / "Remove a stem.json").read_text())
    assert model["model_url"] == workflow["models"][0]["url"]
    assert model["location"] == f"/{workflow['models'][0]['directory']}/{workflow['models'][0]['name']}"


def test_the_librarys_version_is_the_declared_one():
    with open(REPO / "pyproject.toml", "rb") as f:
        assert imgen_core.__version__ == tomllib.load(f)["project"]["version"]
