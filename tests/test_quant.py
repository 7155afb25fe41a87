"""Int8 weights: close to fp32, the fast kernel equal to the plain formula, and usable end to end."""
import copy

import pytest
import torch

from imgen_core.config import FusionConfig, LMConfig
from imgen_core.lm import init_lm_weights
from imgen_core.model import InstructMusicGen
from imgen_core.quant import Int8Linear, fbgemm_available, int8_activation_dtype, quantize_model, quantize_weight

# Bounds that a wrong scale, a transposed or a mis-rounded weight breaks by far.
MAX_REL_RMS = 0.04
MIN_TOP1 = 0.9


def teacher_forced_error(reference, quantized, target, cond, text) -> tuple[float, float]:
    with torch.no_grad():
        a, mask = reference(target, cond, text)
        b, _ = quantized(target, cond, text.to(quantized.dtype))
    a, b = a[mask].float(), b[mask].float()
    rel = ((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt()).item()
    return rel, (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def test_int8_logits_stay_close_to_fp32_on_both_fixtures(fixture, load_fixture):
    path, ref = fixture
    reference, _ = load_fixture(path, merge_lora=True)
    quantized, _ = load_fixture(path, dtype="int8")
    assert any(isinstance(m, Int8Linear) for m in quantized.modules())
    assert not any(isinstance(m, torch.nn.Linear) and m is not quantized.text_proj for m in quantized.lm.modules())
    rel, top1 = teacher_forced_error(reference, quantized, ref["target_codes"], ref["cond_codes"], ref["text_cond"])
    assert rel < MAX_REL_RMS and top1 > MIN_TOP1, (rel, top1)


def test_int8_logits_stay_close_at_musicgen_small_width():
    """MusicGen-small's width and heads (4 of its 24 layers, to stay quick), random weights."""
    cfg = LMConfig(dim=1024, num_heads=16, num_layers=4, card=2048)
    torch.manual_seed(0)
    model = InstructMusicGen(cfg, FusionConfig(num_layers=4), lora=False)
    init_lm_weights(model.lm, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.fusion.pos_emb.normal_(0, 0.02)
        model.fusion.gates.fill_(0.3)
    model.eval().requires_grad_(False)
    quantized = quantize_model(copy.deepcopy(model), int8_activation_dtype(torch.device("cpu")))
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, cfg.card, (2, 4, 40), generator=g)
    cond = torch.randint(0, cfg.card, (2, 4, 40), generator=g)
    text = torch.randn(2, 8, cfg.dim, generator=g)
    rel, top1 = teacher_forced_error(model, quantized, target, cond, text)
    assert rel < MAX_REL_RMS and top1 > MIN_TOP1, (rel, top1)


def test_the_cpu_kernel_computes_the_plain_formula():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=g)
    x = torch.randn(3, 5, 64, generator=g).bfloat16()
    layer = Int8Linear(96, 64, torch.bfloat16)
    layer.weight_int8, layer.scale = quantize_weight(weight)
    expected = (x.float() @ (layer.weight_int8.float() * layer.scale.float()[:, None]).T)
    assert torch.allclose(layer(x).float(), expected, rtol=2e-2, atol=2e-2)
    assert (layer.weight_int8.float() * layer.scale[:, None] - weight).abs().max() <= layer.scale.max() / 2 + 1e-6


@pytest.mark.skipif(not fbgemm_available(), reason="this PyTorch has no fbgemm")
def test_the_packed_cpu_layer_computes_the_formula_and_unpacks_to_the_same_weights():
    """fbgemm holds the only copy once packed: its product matches the formula (up to its 7-bit
    activations), and moving or saving the layer gives back exactly the int8 weights."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=g)
    x = torch.randn(3, 5, 64, generator=g)
    layer = Int8Linear(96, 64, torch.float32)
    layer.weight_int8, layer.scale = quantize_weight(weight)
    original = layer.weight_int8.clone()
    expected = x @ (original.float() * layer.scale[:, None]).T
    layer.pack()
    assert layer.weight_int8.numel() == 0
    out = layer(x)
    assert ((out - expected).norm() / expected.norm()).item() < 0.02
    assert torch.equal(layer.state_dict()["weight_int8"], original) and layer.packed is not None
    layer.to("cpu", torch.float32)  # staying on the CPU: still packed, still right
    assert layer.packed is not None and torch.equal(layer(x), out)
    layer.to("meta")  # leaving the CPU unpacks first: the int8 tensor is what moves
    assert layer.packed is None and layer.weight_int8.shape == original.shape


def test_an_int8_edit_runs_end_to_end(tmp_path, tiny_files):
    from imgen_core.editor import Editor
    editor = Editor.from_pretrained(tiny_files["base"], tiny_files["adapter"], tiny_files["t5"],
                                    tiny_files["encodec"], device="cpu", dtype="int8", offline=True)
    assert editor.model.dtype == torch.float32  # fbgemm's int8 products take fp32 activations
    assert all(m.packed is not None for m in editor.model.modules() if isinstance(m, Int8Linear))
    wav = torch.sin(torch.arange(32000) / 5.0)[None] * 0.5
    out, rate = editor.edit_audio(wav, 32000, editor.instruction("remove", "drums"))
    assert out.shape == (1, 1, 32000) and torch.isfinite(out).all()


@pytest.mark.skipif(not fbgemm_available(), reason="this PyTorch has no fbgemm")
@pytest.mark.parametrize("move", ["parent .to", "to_empty", "_apply", "ComfyUI's module by module"])
def test_packed_layers_unpack_whatever_path_moves_them_off_the_cpu(move):
    """A model moved off the CPU by any route through Module._apply (ComfyUI's full load moves
    the whole container, its partial unload module by module): every packed layer unpacks and
    its int8 weights are what move, never an empty tensor."""
    from imgen_core.quant import quantize_model
    from imgen_core.tiny import tiny_model
    model = quantize_model(tiny_model(seed=0), torch.float32)
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    shapes = [(m.out_features, m.in_features) for m in layers]
    assert layers and all(m.packed is not None for m in layers)
    container = torch.nn.Module()
    container.lm = model
    if move == "parent .to":
        container.to("meta")
    elif move == "to_empty":
        container.to_empty(device="meta")
    elif move == "_apply":
        container._apply(lambda t: t.to("meta"))
    else:
        for module in container.modules():
            module.to("meta")
    assert all(m.packed is None and tuple(m.weight_int8.shape) == s and m.weight_int8.device.type == "meta"
               for m, s in zip(layers, shapes))
