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


def _model_folders(monkeypatch, root):
    """ComfyUI's folder_paths over `root`/musicgen and `root`/instruct_musicgen."""
    import types
    fake = types.ModuleType("folder_paths")

    def files(name):
        base = root / name
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    fake.get_filename_list = files
    fake.get_folder_paths = lambda name: [str(root / name)]
    fake.get_full_path = lambda name, file: str(root / name / file) if (root / name / file).is_file() else None
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    for name in ("musicgen", "instruct_musicgen"):
        (root / name).mkdir(parents=True, exist_ok=True)


def test_the_loader_offers_the_released_parts_first_and_downloads_what_is_missing(pack, monkeypatch, tmp_path):
    _model_folders(monkeypatch, tmp_path)
    loader_class = pack.NODE_CLASS_MAPPINGS["InstructMusicGenLoader"]
    inputs = loader_class.INPUT_TYPES()["required"]
    assert inputs["dtype"][0] == list(defaults.DTYPE_CHOICES)
    assert inputs["base"][0] == ["from the checkpoint"]
    assert inputs["adapter"][0] == ["finetuned.ckpt (download 14.6 GB)"]
    assert inputs["t5"][0] == ["t5-base"] and inputs["encodec"][0] == ["encodec_32khz"]  # downloaded by the run
    # a shared workflow names the checkpoint itself: accepted before it is here (Run downloads it)
    assert loader_class.VALIDATE_INPUTS("finetuned.ckpt") is True
    refused = loader_class.VALIDATE_INPUTS("mine.safetensors")
    assert "'mine.safetensors' is not in the instruct_musicgen model folders" in refused
    assert "finetuned.ckpt (download 14.6 GB)" in refused

    (tmp_path / "instruct_musicgen" / "finetuned.ckpt").write_bytes(b"present")
    (tmp_path / "instruct_musicgen" / "mine.safetensors").write_bytes(b"mine")
    (tmp_path / "instruct_musicgen" / "finetuned.0123456789ab.model.safetensors").write_bytes(b"converted")
    (tmp_path / "musicgen" / "t5-base").mkdir()
    (tmp_path / "musicgen" / "t5-base" / "config.json").write_text('{"model_type": "t5"}')
    (tmp_path / "musicgen" / "my-t5").mkdir()
    (tmp_path / "musicgen" / "my-t5" / "config.json").write_text('{"model_type": "t5"}')
    (tmp_path / "musicgen" / "large").mkdir()
    (tmp_path / "musicgen" / "large" / "state_dict.bin").write_bytes(b"base")
    inputs = loader_class.INPUT_TYPES()["required"]
    assert inputs["base"][0] == ["from the checkpoint", "large/state_dict.bin"]
    assert inputs["adapter"][0] == ["finetuned.ckpt", "mine.safetensors"]  # the converted copy is not a choice
    assert inputs["t5"][0] == ["t5-base", "my-t5"]
    assert inputs["encodec"][0] == ["encodec_32khz"]


def test_offline_the_loader_names_every_missing_part_and_where_it_goes(pack, monkeypatch, tmp_path):
    _model_folders(monkeypatch, tmp_path)
    loader = sys.modules["imgen_node_pack.nodes.loader"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as e:
        loader.weight_files("from the checkpoint", "finetuned.ckpt", "t5-base", "encodec_32khz", None)
    message = str(e.value)
    assert message.startswith("4 part(s) of the model are missing")
    for place in (tmp_path / "instruct_musicgen" / "finetuned.ckpt", tmp_path / "musicgen" / "musicgen-large",
                  tmp_path / "musicgen" / "t5-base", tmp_path / "musicgen" / "encodec_32khz"):
        assert str(place) in message, place


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


def test_the_stem_list_puts_the_released_checkpoints_stems_first_and_marks_the_others(pack):
    stems = pack.NODE_CLASS_MAPPINGS["InstructMusicGenEdit"].INPUT_TYPES()["required"]["stem"][0]
    assert stems[:4] == ["drums", "bass", "piano", "guitar"]
    assert len(stems) > 4 and all(s.endswith(" (other checkpoints)") for s in stems[4:])
    assert "strings (other checkpoints)" in stems
