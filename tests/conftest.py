import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("IMGEN_FIXTURES", REPO.parent / "shared" / "fixtures"))
FIXTURE_NAMES = ["instruct_musicgen_tiny", "instruct_musicgen_tiny_partial"]


def fixture_dir(name: str) -> Path:
    path = FIXTURES / name
    if not (path / "reference.pt").is_file():
        pytest.skip(f"parity fixture {path} not found: set IMGEN_FIXTURES to the fixtures folder")
    return path


@pytest.fixture(params=FIXTURE_NAMES)
def fixture(request):
    path = fixture_dir(request.param)
    ref = torch.load(path / "reference.pt", weights_only=True)
    return path, ref


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    from imgen_core.tiny import save_tiny
    return save_tiny(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_editor():
    from imgen_core.tiny import tiny_editor
    return tiny_editor(seed=0)


def pytest_terminal_summary(terminalreporter):
    """Say loudly, in one line, when the ComfyUI integration tests could not run."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "test_comfyui" in r.nodeid]
    if skipped:
        reason = skipped[0].longrepr[2] if isinstance(skipped[0].longrepr, tuple) else str(skipped[0].longrepr)
        terminalreporter.write_line(f"SKIPPED {len(skipped)} ComfyUI integration tests: {reason}", red=True, bold=True)
