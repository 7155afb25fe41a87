"""The ComfyUI nodes' declarations, read outside ComfyUI (the pack defines its nodes without it):
their defaults are the library's. Running them is tests/test_comfyui.py's and test_browser.py's."""
import importlib.util
import sys

import pytest

from imgen_core import defaults
from imgen_core.sampling import Sampling
from imgen_core.take import DEFAULT_FADE_SECONDS
from support import REPO


@pytest.fixture(scope="module")
def pack():
    spec = importlib.util.spec_from_file_location("imgen_node_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["imgen_node_pack"] = module
    spec.loader.exec_module(module)
    yield module
    for name in [n for n in sys.modules if n == "imgen_node_pack" or n.startswith("imgen_node_pack.")]:
        del sys.modules[name]


def test_instruct_edit_widgets_default_to_the_librarys_settings(pack):
    inputs = pack.NODE_CLASS_MAPPINGS["InstructMusicGenEdit"].INPUT_TYPES()
    widgets = {**inputs["required"], **inputs["optional"]}
    default = {name: spec[1]["default"] for name, spec in widgets.items() if isinstance(spec[1], dict)
               and "default" in spec[1]}
    sampling = Sampling()
    assert default["seed"] == sampling.seed and default["guidance"] == sampling.guidance
    assert default["top_k"] == sampling.top_k and default["temperature"] == sampling.temperature
    assert (default["window_seconds"], default["overlap_seconds"]) == (sampling.window_seconds,
                                                                       sampling.overlap_seconds)
    assert default["fade_seconds"] == DEFAULT_FADE_SECONDS
    # a widget's range admits its default
    for name in ("seed", "guidance", "top_k", "temperature", "window_seconds", "overlap_seconds", "fade_seconds"):
        assert widgets[name][1]["min"] <= default[name] <= widgets[name][1]["max"], name


def test_the_loader_offers_the_librarys_choices(pack, monkeypatch):
    loader = sys.modules["imgen_node_pack.nodes.loader"]
    monkeypatch.setattr(loader, "_base_files", lambda: ["tiny/state_dict.bin"])
    monkeypatch.setattr(loader, "_adapter_files", lambda: ["tiny.safetensors"])
    monkeypatch.setattr(loader, "_model_folders", lambda model_type: [])
    inputs = pack.NODE_CLASS_MAPPINGS["InstructMusicGenLoader"].INPUT_TYPES()["required"]
    assert inputs["dtype"][0] == list(defaults.DTYPE_CHOICES)
    assert inputs["t5"][0] == [defaults.T5] and inputs["encodec"][0] == [defaults.ENCODEC]


def test_weights_left_off_the_load_device_are_named(pack):
    """ComfyUI loads part of a model under --novram (and --lowvram without a full load): the
    nodes refuse to run on split weights and say which and why."""
    glue = sys.modules["imgen_node_pack.nodes.comfy_glue"]
    import torch
    weights = torch.nn.Module()
    weights.lm = torch.nn.Linear(4, 4)
    glue.check_on_device(weights, "cpu")
    weights.codec = torch.nn.Linear(4, 4, device="meta")
    with pytest.raises(RuntimeError) as e:
        glue.check_on_device(weights, "cpu")
    assert "left 2 of Instruct-MusicGen's weights off cpu: codec.weight (meta), codec.bias (meta)" in str(e.value)
    assert "--novram" in str(e.value)


def test_a_dynamic_model_patcher_is_refused(pack, monkeypatch):
    """Should ComfyUI's ModelPatcher ever be the dynamic one (which moves buffers without
    Module._apply), the loader refuses it clearly instead of running on half-moved weights."""
    import types
    import torch
    glue = sys.modules["imgen_node_pack.nodes.comfy_glue"]

    class DynamicPatcher:  # what such a ComfyUI would hand back
        def __init__(self, model, load_device, offload_device):
            self.model = model

        def is_dynamic(self):
            return True
    comfy = types.ModuleType("comfy")
    comfy.model_patcher = types.SimpleNamespace(ModelPatcher=DynamicPatcher)
    comfy.model_management = types.SimpleNamespace(get_torch_device=lambda: torch.device("cpu"),
                                                   unet_offload_device=lambda: torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", comfy.model_patcher)
    monkeypatch.setitem(sys.modules, "comfy.model_management", comfy.model_management)
    with pytest.raises(RuntimeError, match="dynamic ModelPatcher.*--disable-dynamic-vram"):
        glue.make_patcher(torch.nn.Linear(2, 2))
