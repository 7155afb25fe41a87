"""The working memory an edit asks its host for: it covers what a window really holds and grows
with the window, the batch and guidance, not with the weights."""
import pytest
import torch

from imgen_core import working_memory
from imgen_core.config import FusionConfig, LMConfig
from imgen_core.lm import KVCache
from imgen_core.model import InstructMusicGen
from imgen_core.sampling import Sampling
from imgen_core.tiny import tiny_editor, tiny_model


def held_by_a_window(model, items: int, frames: int, guidance: float | None) -> int:
    """Bytes of the tensors a window keeps while it decodes (as generate.prepare and the LM make
    them): the cache, the instruction's keys and values, the fusion's prefixes and the sequence."""
    cfg, device = model.lm_cfg, model.device
    rows, steps = items * (2 if guidance is not None else 1), frames + max(cfg.delays) + 1
    with torch.no_grad():
        model.lm.setup_cache(rows, steps)
        try:
            tensors = [t for m in model.lm.modules() if isinstance(m, KVCache) for t in (m.k, m.v)]
            text = torch.zeros(rows, working_memory.TEXT_TOKENS, cfg.dim, dtype=model.dtype, device=device)
            tensors += [t for kv in model.lm.cross_keys_values(text) for t in kv]
            codes = torch.zeros(items, cfg.n_q, frames, dtype=torch.long, device=device)
            tensors += [t for qkv in model.prefixes(codes) for t in qkv]
            tensors.append(torch.zeros(items, cfg.n_q, steps, dtype=torch.long, device=device))
            return sum(t.numel() * t.element_size() for t in tensors)
        finally:
            model.lm.clear_cache()


SMALL = LMConfig(dim=1024, num_heads=16, num_layers=24, text_dim=768)
LARGE = LMConfig(dim=2048, num_heads=32, num_layers=48, text_dim=768)


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("items,frames,guidance", [(1, 250, 3.0), (2, 500, 3.0), (1, 500, None)])
def test_the_estimate_covers_what_a_window_holds(size, items, frames, guidance):
    """At MusicGen's sizes (shapes only, on the meta device): all that a window holds, and the
    transients on top, at most half as much again."""
    cfg = {"small": SMALL, "large": LARGE}[size]
    with torch.device("meta"):
        model = InstructMusicGen(cfg, FusionConfig(num_layers=cfg.num_layers), lora=False).half()
    held = held_by_a_window(model, items, frames, guidance)
    estimate = working_memory.window_bytes(cfg, cfg.num_layers, items, frames, guidance is not None,
                                           torch.float16, torch.float16)
    assert held <= estimate <= 1.5 * held, (held, estimate)


def test_the_estimate_covers_a_real_window_of_a_small_model():
    cfg = LMConfig(dim=128, num_heads=4, num_layers=4, n_q=4, card=256, text_dim=32)
    model = tiny_model(seed=0, lm_cfg=cfg)
    held = held_by_a_window(model, 2, 250, 3.0)
    assert held <= working_memory.window_bytes(cfg, model.fusion_cfg.num_layers, 2, 250, True, torch.float32,
                                               torch.float32)


def test_the_editors_working_memory_follows_the_window_batch_and_guidance_not_the_weights():
    editor = tiny_editor(seed=0)

    def memory(*args, **kwargs):
        return working_memory.of_editor(editor, *args, **kwargs)
    one = memory(1, Sampling(window_seconds=1.0, overlap_seconds=0.5))
    assert memory(2, Sampling(window_seconds=1.0, overlap_seconds=0.5)) == pytest.approx(2 * one, rel=0.01)
    assert memory(1, Sampling(window_seconds=1.0, overlap_seconds=0.5, guidance=None)) < 0.6 * one
    assert memory(1, Sampling(window_seconds=0.5, overlap_seconds=0.2)) < 0.6 * one
    weights = sum(p.numel() * p.element_size() for p in editor.model.parameters())
    assert one != weights
    # coding audio: per item, up to one chunk, whatever the length after that
    chunk = working_memory.CODEC_CHUNK_FRAMES / editor.frame_rate  # seconds
    assert memory(1, seconds=chunk / 2) == pytest.approx(memory(1, seconds=chunk) / 2, rel=0.01)
    assert memory(1, seconds=100 * chunk) == memory(1, seconds=chunk)
    assert memory(3, seconds=chunk) == 3 * memory(1, seconds=chunk)
