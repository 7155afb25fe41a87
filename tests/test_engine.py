"""The optimized decode path against the reference path."""
import pytest
import torch

from imgen_core.build import load_instruct
from imgen_core.generate import generate
from imgen_core.tiny import TINY_LM, tiny_model


def test_merged_lora_engine_reproduces_the_reference_greedy_tokens(fixture):
    path, ref = fixture
    model, _ = load_instruct(path / "base_state_dict.bin", path / "instruct_checkpoint.ckpt")
    reference = generate(model, ref["cond_codes"], ref["cfg_text_cond"], top_k=1)
    model.merge_lora()
    fast = generate(model, ref["cond_codes"], ref["cfg_text_cond"], top_k=1)
    assert torch.equal(fast, reference) and torch.equal(fast, ref["gen_tokens"])
    model.unmerge_lora()
    assert torch.equal(generate(model, ref["cond_codes"], ref["cfg_text_cond"], top_k=1), reference)


def test_bf16_engine_runs_and_stays_close():
    model = tiny_model(seed=3)
    cond = torch.randint(0, TINY_LM.card, (1, 4, 20), generator=torch.Generator().manual_seed(0))
    text = torch.cat([torch.randn(1, 4, TINY_LM.dim, generator=torch.Generator().manual_seed(1)),
                      torch.zeros(1, 4, TINY_LM.dim)])
    fp32 = generate(model, cond, text, top_k=1)
    bf16 = generate(model.to(torch.bfloat16), cond, text, top_k=1)
    assert bf16.shape == fp32.shape
    assert (bf16 == fp32).float().mean() > 0.5  # greedy decoding diverges a little in bf16, not wholesale


def test_cuda_graph_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    model = tiny_model(seed=0)
    with pytest.raises(ValueError, match="cuda_graph=on needs the model on a CUDA device"):
        generate(model, torch.zeros(1, 4, 5, dtype=torch.long), torch.zeros(2, 3, TINY_LM.dim), cuda_graph="on")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_engines_reproduce_the_reference_greedy_tokens(fixture):
    path, ref = fixture
    model, _ = load_instruct(path / "base_state_dict.bin", path / "instruct_checkpoint.ckpt")
    model = model.cuda().merge_lora()
    for mode in ("off", "on"):
        tokens = generate(model, ref["cond_codes"], ref["cfg_text_cond"], top_k=1, cuda_graph=mode)
        assert torch.equal(tokens.cpu(), ref["gen_tokens"]), mode
