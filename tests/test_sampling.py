import torch

from imgen_core.sampling import sample


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
