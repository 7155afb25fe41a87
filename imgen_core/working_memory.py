"""The memory an edit needs beyond its weights, from the window, the batch and the dtype: what a
host such as ComfyUI is asked to make room for before a window is decoded or audio is coded.

A window of `frames` frames decodes `frames + max_delay + 1` pattern steps. It holds, besides the
weights: the self-attention cache (keys and values of every layer for every step and row; rows
are the items, twice under guidance), the instruction's cross-attention keys and values, the
audio fusion's prefix queries, keys and values (per item, at most the window), and the largest
transient: the prompt's pass through one layer (its feed-forward and its attention scores over
the window) or one step's scores over the codebooks. EnCodec codes audio in chunks of at most
CODEC_CHUNK_FRAMES frames plus their margins, each holding its activations at once.
"""
from __future__ import annotations

import math

import torch

from .config import LMConfig

TEXT_TOKENS = 64  # an instruction's T5 tokens at most, as counted here (they are a dozen)
# EnCodec 32 kHz (fp32): activations above its weights per input sample of a chunk, measured on the
# CPU (peak resident memory): 1,225 bytes encoding and 1,428 decoding 12 s, with room to spare.
CODEC_BYTES_PER_SAMPLE = 1600
CODEC_CHUNK_FRAMES = 600  # a 500-frame chunk and its margins (codec.py)


def window_bytes(cfg: LMConfig, fusion_layers: int, items: int, frames: int, guidance: bool,
                 dtype: torch.dtype, cache_dtype: torch.dtype) -> int:
    """Bytes one window of `frames` frames needs for `items` items, beyond the weights."""
    rows = items * (2 if guidance else 1)
    steps = frames + max(cfg.delays) + 1
    width = _size(dtype)
    cache = 2 * cfg.num_layers * rows * steps * cfg.dim * _size(cache_dtype)
    cross = 2 * cfg.num_layers * rows * TEXT_TOKENS * cfg.dim * width
    prefix = 3 * fusion_layers * items * frames * cfg.dim * width
    prompt = rows * frames * (cfg.dim * (cfg.hidden_scale + 4) * width + cfg.num_heads * steps * 4)
    scores = 4 * rows * cfg.n_q * cfg.card * 4  # fp32 scores, guided, filtered and drawn from
    return cache + cross + prefix + max(prompt, scores)


def codec_bytes(items: int, samples: int, hop: int, dtype: torch.dtype) -> int:
    """Bytes EnCodec (`hop` samples per frame) needs to code `samples` samples of `items` items,
    chunk by chunk."""
    return items * min(samples, CODEC_CHUNK_FRAMES * hop) * CODEC_BYTES_PER_SAMPLE * _size(dtype) // 4


def _size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def of_editor(editor, batch: int = 1, sampling=None, seconds: float = 0.0) -> int:
    """Bytes an edit by `editor` of `batch` items under `sampling` (its window and guidance) needs
    beyond the weights, on the model's device; with `sampling` None, what coding `seconds` of
    audio per item needs."""
    if sampling is None:
        return codec_bytes(batch, math.ceil(seconds * editor.sample_rate), editor.codec.hop,
                           next(editor.codec.model.parameters()).dtype)
    window, _ = sampling.window_frames(editor.frame_rate, editor.max_frames)
    model = editor.model
    cache_dtype = torch.float32 if model.device.type == "cpu" else model.dtype  # as lm.setup_cache keeps it
    return window_bytes(model.lm_cfg, model.fusion_cfg.num_layers, batch, window, sampling.guidance is not None,
                        model.dtype, cache_dtype)
