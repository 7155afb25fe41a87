import pytest
import torch

from imgen_core.sampling import Sampling, sample


@pytest.mark.parametrize("settings, message", [
    ({"temperature": -1.0}, "temperature must be 0 .greedy. or at least 0.001"),
    ({"temperature": float("nan")}, "temperature must be 0"),
    ({"temperature": 1e-300}, "temperature must be 0 .greedy. or at least 0.001"),
    ({"top_k": -3}, "top_k must be an integer >= 0"),
    ({"top_k": 2.5}, "top_k must be an integer >= 0"),
    ({"top_p": 1.5}, r"top_p must be in \[0, 1\]"),
    ({"guidance": -1.0}, "guidance must be a number >= 0"),
    ({"window_seconds": 0.0}, "window must be more than 0 and at most 60 seconds"),
    ({"window_seconds": 1e308}, "window must be more than 0 and at most 60 seconds"),
    ({"guidance": float("inf")}, "guidance must be a number >= 0"),
    ({"overlap_seconds": 5.0}, r"overlap must be more than 0 and less than the window \(5.0 s\)"),
    ({"overlap_seconds": 0.0}, "overlap must be more than 0"),
    ({"seed": 2 ** 64}, "seed must be an integer"),
    ({"seed": True}, "seed must be an integer"),
])
def test_bad_settings_are_refused_when_made(settings, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**settings)


def test_windows_in_frames_are_bounded_by_the_model():
    assert Sampling().window_frames(50, 500) == (250, 100)
    assert Sampling(window_seconds=10.0, overlap_seconds=3.0).window_frames(50, 500) == (500, 150)
    with pytest.raises(ValueError, match="window must be from 0.04 to 10 s for this model, got 12.0 s"):
        Sampling(window_seconds=12.0).window_frames(50, 500)
    with pytest.raises(ValueError, match="overlap must be at least one frame"):
        Sampling(overlap_seconds=0.001).window_frames(50, 500)


def test_no_guidance_is_a_setting():
    assert Sampling(guidance=None).guidance is None


def draws(logits, n=400, **kw):
    g = torch.Generator().manual_seed(0)
    return {int(sample(logits, generator=g, **kw)) for _ in range(n)}


def test_greedy_when_temperature_is_zero_or_top_k_is_one():
    logits = torch.tensor([0.1, 2.0, 1.9, -1.0])
    assert draws(logits, n=5, temperature=0.0) == {1}
    assert draws(logits, n=5, top_k=1) == {1}


def test_top_k_samples_only_among_the_k_best():
    logits = torch.tensor([3.0, 2.9, 2.8, -5.0, 2.7])
    assert draws(logits, top_k=2) == {0, 1}


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert draws(logits, top_p=0.7) == {0, 1}
    assert draws(logits, top_p=0.9) == {0, 1, 2}


def test_seeded_generator_reproduces():
    logits = torch.randn(8, 64)
    a = sample(logits, top_k=20, generator=torch.Generator().manual_seed(5))
    b = sample(logits, top_k=20, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (8,)


def test_draws_are_torch_multinomials_for_the_same_generator():
    """The draw avoids torch.multinomial (it waits for the device, so it cannot sit inside a CUDA
    graph) yet picks the same tokens from the same generator state: seeds keep their outputs."""
    logits = torch.randn(2, 4, 300, generator=torch.Generator().manual_seed(1))
    for kw in ({}, {"top_k": 50}, {"top_p": 0.8}, {"temperature": 0.7, "top_k": 250}):
        ours = sample(logits, generator=torch.Generator().manual_seed(3), **kw)
        probs = torch.softmax(logits / kw.get("temperature", 1.0), dim=-1)
        if "top_k" in kw:
            probs = probs * (probs >= torch.topk(probs, kw["top_k"], dim=-1).values[..., -1:])
        if "top_p" in kw:
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs <= kw["top_p"]
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
        theirs = torch.multinomial(probs.reshape(-1, 300), 1, generator=torch.Generator().manual_seed(3))
        assert torch.equal(ours, theirs.reshape(2, 4)), kw
