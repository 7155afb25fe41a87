"""Faithfulness: our model against the official implementation's outputs on both fixtures."""
import torch

from imgen_core.loader import load_model
from imgen_core.official_checkpoint import convert_official
from imgen_core.generate import generate
from support import GREEDY, conditional_text

TOL = 1e-4


def max_diff(logits, mask, ref):
    return (logits[mask] - ref[mask]).abs().max().item()


def test_base_lm_logits_match_audiocraft(fixture):
    path, ref = fixture
    model = load_model(path / "base_state_dict.bin")[0]
    with torch.no_grad():
        logits, mask = model(ref["target_codes"], None, ref["text_cond"])
        assert torch.equal(mask, ref["logits_mask"])
        assert max_diff(logits, mask, ref["logits_base"]) < TOL
        logits, mask = model(ref["b2_target_codes"], None, ref["b2_text_cond"])
        assert max_diff(logits, mask, ref["b2_logits_base"]) < TOL


def test_condition_stream_prefixes_match(fixture, load_fixture):
    path, ref = fixture
    model, _ = load_fixture(path)
    with torch.no_grad():
        prefixes = model.prefixes(ref["cond_codes"])
    assert len(prefixes) == len(ref["meta"]["gates"])
    for i, (q, k, v) in enumerate(prefixes):
        for name, t in zip("qkv", (q, k, v)):
            assert (t - ref[f"prefix_{name}_l{i}"]).abs().max().item() < TOL, (i, name)
        assert model.fusion.gates[i].item() == ref[f"gate_l{i}"].item()


def _fused_checks(model, ref):
    with torch.no_grad():
        seq, seq_logits = model.sequence_logits(ref["target_codes"], ref["cond_codes"], ref["text_cond"])
        assert torch.equal(seq, ref["seq_codes"])
        logits, mask = model(ref["target_codes"], ref["cond_codes"], ref["text_cond"])
        assert max_diff(logits, mask, ref["logits_fused"]) < TOL
        logits, mask = model(ref["b2_target_codes"], ref["b2_cond_codes"], ref["b2_text_cond"])
        assert max_diff(logits, mask, ref["b2_logits_fused"]) < TOL
        tokens = generate(model, ref["cond_codes"], conditional_text(ref), GREEDY)
    assert torch.equal(tokens, ref["gen_tokens"])


def test_fused_model_from_official_checkpoint(fixture, load_fixture):
    path, ref = fixture
    model, _ = load_fixture(path)
    _fused_checks(model, ref)


def test_fused_model_from_converted_adapter(fixture, tmp_path):
    path, ref = fixture
    adapter = tmp_path / "adapter.safetensors"
    meta = convert_official(path / "instruct_checkpoint.ckpt", adapter, base_model="tiny-fixture")
    assert meta["dialect"] == "slakh" and meta["base_model"] == "tiny-fixture"
    model, loaded_meta = load_model(path / "base_state_dict.bin", adapter)
    assert loaded_meta["stems"] == meta["stems"]
    _fused_checks(model, ref)


def test_generation_step_logits_match(fixture, load_fixture):
    """Every step's CFG logits, not only the argmax, follow the official decode loop."""
    path, ref = fixture
    model, _ = load_fixture(path)
    seen = []
    original = model.lm.forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out[:, :, -1].detach().clone())
        return out
    model.lm.forward = spy
    generate(model, ref["cond_codes"], conditional_text(ref), GREEDY)
    steps = torch.stack(seen)  # [23, 2, K, card]
    assert steps.shape == ref["gen_step_logits"].shape
    assert (steps - ref["gen_step_logits"]).abs().max().item() < TOL


def test_no_fusion_matches_official_with_fusion_off(fixture, load_fixture):
    """Gates 0 and LoRA off, keeping the checkpoint's own cross q/k/v: the official 'no fusion' logits."""
    path, ref = fixture
    model, _ = load_fixture(path)
    with torch.no_grad():
        model.fusion.gates.zero_()
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.zero_()
        logits, mask = model(ref["target_codes"], ref["cond_codes"], ref["text_cond"])
    assert max_diff(logits, mask, ref["logits_official_no_fusion"]) < TOL
