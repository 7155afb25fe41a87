"""The optimized decode path against the reference path."""
import dataclasses

import pytest
import torch

from imgen_core import pattern
from imgen_core import generate as engine
from imgen_core.generate import CheckedStep, eager_step, generate, loop, prefill, prepare, take_step
from imgen_core.sampling import Sampling
from imgen_core.tiny import TINY_LM, tiny_model
from support import GREEDY, conditional_text


def test_merged_lora_engine_reproduces_the_reference_greedy_tokens(fixture, load_fixture):
    path, ref = fixture
    model, _ = load_fixture(path)
    reference = generate(model, ref["cond_codes"], conditional_text(ref), GREEDY)
    model.merge_lora()
    fast = generate(model, ref["cond_codes"], conditional_text(ref), GREEDY)
    assert torch.equal(fast, reference) and torch.equal(fast, ref["gen_tokens"])
    model.unmerge_lora()
    assert torch.equal(generate(model, ref["cond_codes"], conditional_text(ref), GREEDY), reference)


def test_bf16_stays_within_its_rounding_of_fp32():
    """bf16 keeps 8 bits of mantissa (unit roundoff 2**-8 = 0.0039). Through this model the
    teacher-forced logits differ from fp32 by 1.25% (relative L2) and the argmax agrees on 98.5%
    of positions. The bounds, 3% and 95%, leave room for other CPUs' rounding; a precision bug
    (a softmax or a norm accumulated in bf16, a residual or the fusion lost in the cast) moves
    the logits by tens of percent."""
    model = tiny_model(seed=3)
    g = torch.Generator().manual_seed(0)
    cond = torch.randint(0, TINY_LM.card, (2, 4, 50), generator=g)
    target = torch.randint(0, TINY_LM.card, (2, 4, 50), generator=g)
    text = torch.randn(2, 4, TINY_LM.dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fp32, valid = model(target, cond, text)
        bf16, _ = model.to(torch.bfloat16)(target, cond, text.bfloat16())
    fp32, bf16 = fp32[valid], bf16[valid].float()
    assert (fp32 - bf16).norm() / fp32.norm() < 0.03
    assert (fp32.argmax(-1) == bf16.argmax(-1)).float().mean() > 0.95
    tokens = generate(model, cond[:1, :, :20], text[:1].bfloat16(), GREEDY)
    assert tokens.shape == (1, 4, 20) and tokens.max() < TINY_LM.card


def test_cuda_graph_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    model = tiny_model(seed=0)
    with pytest.raises(ValueError, match="cuda_graph=on needs the model on a CUDA device"):
        generate(model, torch.zeros(1, 4, 5, dtype=torch.long), torch.zeros(1, 3, TINY_LM.dim), cuda_graph="on")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_engines_reproduce_the_reference_greedy_tokens(fixture, load_fixture):
    path, ref = fixture
    model, _ = load_fixture(path)
    model = model.cuda().merge_lora()
    for mode in ("off", "on"):
        tokens = generate(model, ref["cond_codes"], conditional_text(ref), GREEDY, cuda_graph=mode)
        assert torch.equal(tokens.cpu(), ref["gen_tokens"]), mode


def _decode(model, ref, step_for, sampling=GREEDY, generator=None):
    """prepare + prefill + loop with the loop's step built by `step_for(lm, d, sampler)`."""
    with torch.no_grad():
        d = prepare(model, ref["cond_codes"], conditional_text(ref), sampling.guidance, None)
        sampler = sampling.sampler(generator)
        model.lm.setup_cache(d.rows, d.steps)
        try:
            prefill(model.lm, d, sampler)
            loop(step_for(model.lm, d, sampler), d, None)
        finally:
            model.lm.clear_cache()
    return pattern.revert_sequence(d.seq, model.lm_cfg.delays, ref["cond_codes"].shape[-1])


def whole_cache_step(lm, d, sampler):
    """The step a CUDA graph captures: static shapes, the whole cache attended under the mask."""
    return lambda offset: take_step(lm, d, sampler, torch.tensor([offset - 1]), kv_len=d.steps)


def test_the_captured_steps_attention_decodes_the_eager_tokens(fixture, load_fixture):
    """The graph and the eager loop run the same take_step; only the attended length differs
    (the whole cache under the mask, or the part written so far). Same greedy tokens as the
    official decode loop either way, and the same sampled tokens for the same seed."""
    path, ref = fixture
    model, _ = load_fixture(path)
    model.merge_lora()
    assert torch.equal(_decode(model, ref, eager_step), ref["gen_tokens"])
    assert torch.equal(_decode(model, ref, whole_cache_step), ref["gen_tokens"])
    sampled = [_decode(model, ref, step, Sampling(top_k=50), generator=torch.Generator().manual_seed(7))
               for step in (eager_step, whole_cache_step)]
    assert torch.equal(*sampled) and not torch.equal(sampled[0], ref["gen_tokens"])


def stale_position_step(lm, d, sampler):
    """A captured step gone wrong: it reads the position it was captured at (0), not the one
    each replay is given."""
    return lambda offset: take_step(lm, d, sampler, torch.tensor([0]), kv_len=d.steps)


def stale_instruction_step(lm, d, sampler):
    """A captured step gone wrong the other way: the right position, but it reads the keys and
    values of another window's instruction (here: none), so it writes wrong tokens into the
    columns it decides."""
    other = dataclasses.replace(d, cross_kv=[(torch.zeros_like(k), torch.zeros_like(v)) for k, v in d.cross_kv])
    return lambda offset: take_step(lm, other, sampler, torch.tensor([offset - 1]), kv_len=d.steps)


def test_the_graph_self_check_passes_a_right_step_and_catches_a_stale_position(fixture, load_fixture, recwarn,
                                                                               monkeypatch):
    """The check of a graph's first replay, on the CPU with the captured step simulated by the
    whole-cache step: a right one passes without a word and decodes the official tokens; one
    that reads a stale position is caught at once, warned about once, and the window decoded
    eagerly still gives the official tokens."""
    path, ref = fixture
    model, _ = load_fixture(path)
    model.merge_lora()
    monkeypatch.setattr(engine, "_warned", set())

    def checked(fast):
        return lambda lm, d, sampler: CheckedStep(fast(lm, d, sampler), lm, d, sampler)
    assert torch.equal(_decode(model, ref, checked(whole_cache_step)), ref["gen_tokens"])
    assert engine.last_graph_check["ok"] and engine.last_graph_check["error"] < 1e-5
    assert not [w for w in recwarn if "CUDA graph" in str(w.message)]
    for broken in (stale_position_step, stale_instruction_step, stale_position_step):  # three windows, one warning
        assert torch.equal(_decode(model, ref, checked(broken)), ref["gen_tokens"]), broken.__name__
        assert not engine.last_graph_check["ok"] and engine.last_graph_check["error"] > 2 * engine.GRAPH_TOLERANCE
    warned = [str(w.message) for w in recwarn if "CUDA graph" in str(w.message)]
    assert len(warned) == 1 and "disagrees with the eager step" in warned[0] and "decoding eagerly" in warned[0]
    # unchecked, the broken steps decode other tokens: the check is what saves the window
    for broken in (stale_position_step, stale_instruction_step):
        assert not torch.equal(_decode(model, ref, broken), ref["gen_tokens"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_sampling_is_seeded_and_leaves_no_trace_of_its_warm_up(fixture, load_fixture):
    """The capture's warm-up decides a column and draws random numbers; both are undone, so a
    seed gives the same tokens twice, with a user's generator and with the default one."""
    path, ref = fixture
    model, _ = load_fixture(path)
    model = model.cuda().merge_lora()

    def run(**kw):
        return generate(model, ref["cond_codes"], conditional_text(ref), Sampling(top_k=50), cuda_graph="on", **kw)
    a = run(generator=torch.Generator(device="cuda").manual_seed(5))
    b = run(generator=torch.Generator(device="cuda").manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a.cpu(), ref["gen_tokens"])
    torch.cuda.manual_seed(5)
    c = run()
    torch.cuda.manual_seed(5)
    assert torch.equal(c, run())
