"""What every weight reader checks, whatever the format: sizes bounded before anything is
allocated from them, every tensor stored in the file with the expected shape and a floating-point
type, and messages that are one bounded line.

The formats: `safe_pickle.py` (any torch.save file), `audiocraft_lm.py` (the base MusicGen LM),
`official_checkpoint.py` (the official Lightning checkpoint), `adapter_file.py` (ours).
"""
from __future__ import annotations

import re

import torch

from .config import FusionConfig


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message says what is wrong with it."""


# Bounds on sizes a file declares, checked before anything is allocated from them: far above
# MusicGen-large (48 layers of width 2048, 500 position frames), far below what would exhaust a
# machine's memory in the per-layer tables and position embeddings they size.
MAX_LAYERS = 256
MAX_DIM = 8192
MAX_HEADS = 256
MAX_CODEBOOKS = 32
MAX_CARD = 65536
MAX_FRAMES = 3000  # position embeddings: 60 s at 50 frames/s
MAX_PARAMETERS = 20_000_000_000  # a model this size needs 40 GB in fp16; MusicGen-large has 3.3 billion


def brief(text, limit: int = 300) -> str:
    """Text from a file or a library, made safe to show: one line, at most `limit` characters,
    and without torch's advice to turn its weights-only safety off (never do that here)."""
    text = str(text)
    reason = re.search(r"WeightsUnpickler error: (.*)", text)
    if reason:
        text = reason.group(1)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def check_sizes(fusion: FusionConfig, lm_layers: int, lm_dim: int, source: str):
    """Refuse adapter sizes beyond the bounds above, before anything is allocated from them."""
    if not (1 <= lm_layers <= MAX_LAYERS and 1 <= lm_dim <= MAX_DIM):
        raise CheckpointError(f"{source} declares an LM of {brief(lm_layers, 40)} layers of width "
                              f"{brief(lm_dim, 40)}; accepted: 1 to {MAX_LAYERS} layers, width 1 to {MAX_DIM}")
    if not (1 <= fusion.num_layers <= MAX_LAYERS and 1 <= fusion.max_frames <= MAX_FRAMES
            and 1 <= fusion.lora_rank <= lm_dim):
        raise CheckpointError(f"{source} declares fusion sizes out of range ({brief(fusion, 120)}); "
                              f"accepted: 1 to {MAX_LAYERS} adapter layers, 1 to {MAX_FRAMES} frames, "
                              f"LoRA rank 1 to {lm_dim}")


def refuse_hollow(tensors: dict, source: str):
    """Refuse values that are not tensors, and tensors that claim more values than the file stores
    for them: a view repeating values (a zero or overlapping stride), or views of the same bytes
    (copying them would turn a few bytes of the file into gigabytes). The bytes the tensors claim
    must not exceed the bytes of the regions they view, counted once."""
    other = [f"{k} (a {type(t).__name__})" for k, t in tensors.items() if not isinstance(t, torch.Tensor)]
    if other:
        raise CheckpointError(f"{source}: {_some(other)} should be tensors")
    regions, claimed, hollow = [], 0, []
    for key, t in tensors.items():
        if not t.numel():
            continue
        size = t.element_size()
        start = t.storage_offset() * size
        end = start + (sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1) * size
        if end > t.untyped_storage().nbytes() or end - start < t.numel() * size:
            hollow.append(key)
        regions.append((t.untyped_storage().data_ptr(), start, end, key))
        claimed += t.numel() * size
    if hollow:
        raise CheckpointError(f"{source}: {_some(hollow)} are not tensors stored in the file (repeated or "
                              f"missing values behind a view); a real checkpoint stores every value")
    covered, shared = 0, []
    regions.sort()
    reach = (None, 0)
    for ptr, start, end, key in regions:
        if ptr == reach[0] and start < reach[1]:
            shared.append(key)
        covered += max(0, end - max(start, reach[1] if ptr == reach[0] else start))
        reach = (ptr, max(end, reach[1]) if ptr == reach[0] else end)
    if claimed > covered:
        raise CheckpointError(f"{source}: {_some(shared)} view the same bytes of the file as other tensors; a real "
                              f"checkpoint stores each of these weights once")


def check_tensors(tensors: dict, expected: dict[str, tuple], source: str, allow_extra: bool = False):
    """Refuse hollow, missing, mis-shaped, non-float, non-finite or (unless allowed) unexpected
    tensors, naming them."""
    refuse_hollow(tensors, source)
    check_layout({k: (tuple(t.shape), t.dtype) for k, t in tensors.items()}, expected, source, allow_extra)
    for key in expected:
        check_finite(key, tensors[key], source)


def check_layout(layout: dict[str, tuple], expected: dict[str, tuple], source: str, allow_extra: bool = False):
    """`layout`: name -> (shape, dtype), as a file declares them, checked before any value is read."""
    missing = sorted(k for k in expected if k not in layout)
    wrong = sorted(f"{k} {list(layout[k][0])} (expected {list(expected[k])})"
                   for k in expected if k in layout and tuple(layout[k][0]) != tuple(expected[k]))
    extra = [] if allow_extra else sorted(k for k in layout if k not in expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_some(missing)}")
    if wrong:
        problems.append(f"mis-shaped keys: {_some(wrong)}")
    if extra:
        problems.append(f"unexpected keys: {_some(extra)}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    not_float = [f"{k} ({layout[k][1]})" for k in expected if layout[k][1] not in STORED_FLOAT_TYPES]
    if not_float:
        raise CheckpointError(f"{source}: weights must be float16, bfloat16, float32 or float64; "
                              f"{_some(not_float)} are not")


# The types a weight may be stored in (any is converted to the dtype asked for).
STORED_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_finite(name: str, tensor: torch.Tensor, source: str):
    if not torch.isfinite(tensor).all():
        raise CheckpointError(f"{source}: non-finite values (NaN or inf) in {name}")


def _some(items, n=4) -> str:
    items = list(items)
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def check_lm_sizes(cfg, source: str):
    """Refuse an LM config beyond the bounds above (the model is built from it, on the meta
    device, before any weight is read: its size must not be able to exhaust memory by itself)."""
    sizes = {"num_layers": (cfg.num_layers, MAX_LAYERS), "dim": (cfg.dim, MAX_DIM),
             "num_heads": (cfg.num_heads, MAX_HEADS), "n_q": (cfg.n_q, MAX_CODEBOOKS), "card": (cfg.card, MAX_CARD),
             "hidden_scale": (cfg.hidden_scale, 16), "text_dim": (cfg.text_dim, MAX_DIM)}
    bad = [f"{name}={value} (accepted: 1 to {bound})" for name, (value, bound) in sizes.items()
           if not 1 <= value <= bound]
    if any(not 0 <= d <= 64 for d in cfg.delays):
        bad.append(f"delays={brief(list(cfg.delays), 80)} (accepted: 0 to 64)")
    if bad:
        raise CheckpointError(f"{source}: its config declares sizes out of range: {'; '.join(bad)}")
    count = lm_parameters(cfg)
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: its config declares an LM of {count / 1e9:.1f} billion parameters; "
                              f"accepted: at most {MAX_PARAMETERS / 1e9:.0f} billion (MusicGen-large has 3.3)")


def lm_parameters(cfg) -> int:
    """The weights an LM config declares: per layer self- and cross-attention (4 d x d each), the
    feed-forward (2 x hidden_scale d x d) and three norms; the code embeddings and output heads;
    the text projection."""
    d = cfg.dim
    layer = 8 * d * d + 2 * cfg.hidden_scale * d * d + 6 * d
    return cfg.num_layers * layer + cfg.n_q * (2 * cfg.card + 1) * d + 2 * d + cfg.text_dim * d + d
