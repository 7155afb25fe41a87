"""Tiny random components for the offline demo and the tests: every part of the real pipeline,
at a size that runs in seconds, and weight files in the real formats. Random weights make
noise, not music."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch

from .adapter_file import adapter_metadata, write_safetensors
from .audiocraft_lm import write_audiocraft_lm
from .codec import Codec
from .config import FusionConfig, LMConfig
from .editor import Editor
from .hub import no_transformers_bars
from .instructions import DIALECTS
from .lm import init_lm_weights
from .model import InstructMusicGen
from .text import TextEncoder

TINY_LM = LMConfig(dim=64, num_heads=4, num_layers=2, n_q=4, card=64, text_dim=32)
TINY_FUSION = FusionConfig(num_layers=2)


def tiny_model(seed: int = 0, lm_cfg: LMConfig = TINY_LM, fusion_cfg: FusionConfig = TINY_FUSION) -> InstructMusicGen:
    """A fused model with random weights, and gates, fusion and LoRA large enough that the tokens
    it samples depend on the audio condition and the instruction (about half of them change when
    either does), so every part matters."""
    g = torch.Generator().manual_seed(seed)
    model = InstructMusicGen(lm_cfg, fusion_cfg)
    init_lm_weights(model.lm, g)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("fusion.") or ".lora_" in name or name.startswith("text_proj."):
                scale = 3.0 if "gates" in name else 0.3 if ".lora_" in name else 0.5
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    return model.eval().requires_grad_(False)


def tiny_text_encoder(dim: int = 32, seed: int = 0) -> TextEncoder:
    """A T5 encoder of width `dim` with a word-level tokenizer over the instruction vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel
    words = {"<pad>", "</s>", "<unk>"}
    for d in DIALECTS.values():
        for template in d["templates"].values():
            words.update(template.replace("{}", "").replace(".", " . ").replace(":", " : ").split())
        for stem in d["stems"]:
            words.update(stem.split() + stem.title().split())
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>"] + sorted(words - {"<pad>", "</s>", "<unk>"}))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(vocab), d_model=dim, d_ff=2 * dim, d_kv=8, num_layers=1, num_heads=2,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return TextEncoder(tokenizer, T5EncoderModel(cfg))


def calibration_audio(seed: int = 0, clips: int = 16, seconds: float = 0.64, sample_rate: int = 32000) -> torch.Tensor:
    """Synthetic music-like clips [clips, 1, samples]: chords of three partials and gated noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(sample_rate * seconds)) / sample_rate
    out = []
    for _ in range(clips):
        freqs = 60 * 2 ** (5 * torch.rand(3, generator=g))
        amps, phases = torch.rand(3, generator=g), 6.3 * torch.rand(3, generator=g)
        chord = sum(a * torch.sin(2 * math.pi * f * t + p) for a, f, p in zip(amps, freqs, phases))
        gate = torch.sin(2 * math.pi * (0.5 + 4 * torch.rand(1, generator=g)) * t) > 0.3
        x = chord / 3 + 0.3 * (torch.rand(t.shape, generator=g) - 0.5) * gate
        out.append(0.6 * x / x.abs().max())
    return torch.stack(out)[:, None]


def weight_gain(conv) -> torch.Tensor:
    """The per-channel gain of a weight-normed convolution: a parametrization in transformers
    4.41 and later, the older `weight_g` attribute before."""
    if hasattr(conv, "parametrizations"):
        return conv.parametrizations.weight.original0
    return conv.weight_g


@torch.no_grad()
def calibrate_codec(model, n_q: int, bandwidth: float, audio: torch.Tensor, seed: int = 0, iterations: int = 10):
    """Make a random EnCodec carry information, in place: its encoder's output normalised to unit
    scale on `audio` (a random encoder's output barely varies), each residual codebook set by
    k-means on what the codebooks before it leave (as EnCodec's own initialisation does), and the
    decoder's biases zeroed so that its output is driven by the codes, not by a constant, with its
    last layer scaled to give a standard deviation of 0.3 on `audio`."""
    conv = model.encoder.layers[-1].conv
    emb = model.encoder(audio)
    mean, std = emb.mean((0, 2)), emb.std((0, 2))
    weight_gain(conv).div_(std.view(-1, 1, 1))
    conv.bias.copy_((conv.bias - mean) / std)
    emb = model.encoder(audio)
    residual = emb.permute(0, 2, 1).reshape(-1, emb.shape[1])
    g = torch.Generator().manual_seed(seed)
    for layer in model.quantizer.layers[:n_q]:
        book = layer.codebook
        centres = residual[torch.randperm(residual.shape[0], generator=g)[:book.embed.shape[0]]].clone()
        for _ in range(iterations):
            nearest = torch.cdist(residual, centres).argmin(1)
            for k in range(centres.shape[0]):
                members = residual[nearest == k]
                if len(members):
                    centres[k] = members.mean(0)
        book.embed.copy_(centres)
        book.embed_avg.copy_(centres)
        residual = residual - centres[torch.cdist(residual, centres).argmin(1)]
    for name, p in model.decoder.named_parameters():
        if name.endswith("bias") or ".bias_" in name:
            p.zero_()
    out = model.decoder(model.quantizer.decode(model.quantizer.encode(model.encoder(audio), bandwidth=bandwidth)))
    last = model.decoder.layers[-1].conv
    weight_gain(last).mul_(0.3 / out.std())


def tiny_codec(card: int = 64, seed: int = 0) -> Codec:
    """An EnCodec of 32 kHz, 50 frames/s and 4 codebooks of `card` codes, random but calibrated
    (`calibrate_codec`): distinct clips give distinct codes and distinct codes decode to distinct
    audio. Its decoder is not trained: it does not reconstruct the input (README: measured SNR)."""
    from transformers import EncodecConfig, EncodecModel
    torch.manual_seed(seed)
    # exactly 4 codebooks; transformers before codebook_nbits sized the quantizer for 10 bits a code
    bits = math.log2(card) if hasattr(EncodecConfig(), "codebook_nbits") else 10
    bandwidth = 4 * bits * 50 / 1000
    cfg = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=4, hidden_size=16, codebook_dim=16,
                        codebook_size=card, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[bandwidth],
                        num_lstm_layers=1, num_residual_layers=1, normalize=False, use_causal_conv=False)
    model = EncodecModel(cfg)
    codec = Codec(model)
    calibrate_codec(model, codec.n_q, codec.bandwidth, calibration_audio(seed))
    return codec


def tiny_editor(seed: int = 0, lm_cfg: LMConfig = TINY_LM) -> Editor:
    fusion = FusionConfig(num_layers=lm_cfg.num_layers)
    return Editor(tiny_model(seed, lm_cfg, fusion), tiny_text_encoder(lm_cfg.text_dim, seed),
                  tiny_codec(lm_cfg.card, seed))


def save_tiny(folder, seed: int = 0, lm_cfg: LMConfig = TINY_LM) -> dict[str, Path]:
    """Write a tiny model in the real on-disk formats: base `state_dict.bin` (audiocraft), adapter
    safetensors, a T5 folder and an EnCodec folder (transformers). Returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    editor = tiny_editor(seed, lm_cfg)
    model = editor.model
    paths = {"base": folder / "musicgen" / "state_dict.bin", "adapter": folder / "adapter.safetensors",
             "t5": folder / "t5", "encodec": folder / "encodec"}
    paths["base"].parent.mkdir(exist_ok=True)
    write_audiocraft_lm(paths["base"], model.lm_cfg, model.base_state_dict(), dtype=torch.float32)
    meta = adapter_metadata(model.fusion_cfg, model.lm_cfg.num_layers, model.lm_cfg.dim, "tiny", "slakh",
                            editor.stems, source="tiny random model")
    write_safetensors(model.adapter_state_dict(), paths["adapter"], meta)
    with no_transformers_bars():
        editor.text_encoder.tokenizer.save_pretrained(paths["t5"])
        editor.text_encoder.encoder.save_pretrained(paths["t5"])
        editor.codec.model.save_pretrained(paths["encodec"])
    (folder / "tiny.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
    return paths


def sizes_like(path) -> tuple[int, int]:
    """(text encoder width, codebook size) of the model a file holds: our whole-model file, or
    the official checkpoint; so that tiny T5 and EnCodec parts fit it."""
    from .adapter_file import AdapterFile
    from .checkpoints import CheckpointError
    from .official_checkpoint import OFFICIAL_GLOBALS, is_official_checkpoint
    from .safe_pickle import safe_load
    if is_official_checkpoint(path):
        state = safe_load(path, OFFICIAL_GLOBALS, what="Instruct-MusicGen checkpoint").get("state_dict") or {}
        proj = state.get("model.peft_model.lm.condition_provider.conditioners.description.output_proj.weight")
        emb = state.get("model.peft_model.lm.emb.0.weight")
        if not (isinstance(proj, torch.Tensor) and isinstance(emb, torch.Tensor) and proj.dim() == emb.dim() == 2):
            raise CheckpointError(f"{path} holds no LM (text projection and embeddings) to take sizes from")
        return int(proj.shape[1]), int(emb.shape[0]) - 1
    cfg = AdapterFile(path).lm_config
    if cfg is None:
        raise CheckpointError(f"{path} is an adapter without the LM; give the whole-model file or the checkpoint")
    return cfg.text_dim, cfg.card


def write_official_checkpoint(path, adapter_mb: float, extra_mb: float, dim: int = 512, rank: int = 32,
                              edit=None) -> None:
    """Random weights in the official Lightning checkpoint's layout, of about `adapter_mb` of
    adapter tensors (fusion, LoRA, cross-attention q/k/v) and `extra_mb` of frozen LM weights and
    optimizer state, for the converter's benchmarks and tests. `edit(state_dict)`, when given,
    changes the weights before they are saved (hostile variants)."""
    mb = 1 << 20
    per_layer = 4 * dim * (501 + 4 * dim + 4 * rank)
    layers = max(2, math.ceil(adapter_mb * mb / per_layer))
    lm = "model.peft_model.lm.transformer.base_model.model.layers"
    state = {"model.cp_transformer.pos_emb": torch.randn(layers + 1, 501, dim),
             "model.cp_transformer.gates": torch.zeros(layers)}
    for i in range(layers):
        state[f"model.cp_transformer.merge_linear.{i}.weight"] = torch.randn(dim, dim)
        p = f"{lm}.{i}.cross_attention."
        for proj in ("q_proj", "v_proj"):
            state[p + f"{proj}.base_layer.weight"] = torch.randn(dim, dim)
            state[p + f"{proj}.lora_A.default.weight"] = torch.randn(rank, dim)
            state[p + f"{proj}.lora_B.default.weight"] = torch.zeros(dim, rank)
        state[p + "k_proj.weight"] = torch.randn(dim, dim)
    frozen = max(1, int(extra_mb * mb / 2 / (dim * dim * 2)))
    for i in range(frozen):  # frozen LM weights, fp16 as in the released file
        state[f"{lm}.{i % layers}.self_attn.frozen_{i}.weight"] = torch.randn(dim, dim).half()
    optimizer = {"state": {i: {"exp_avg": torch.randn(dim, dim // 2)} for i in range(frozen)},
                 "param_groups": [{"lr": 1e-4}]}
    if edit is not None:
        edit(state)
    torch.save({"state_dict": state, "optimizer_states": [optimizer], "global_step": 1,
                "hyper_parameters": {"optimizer": functools.partial(torch.optim.AdamW, lr=1e-4)}}, path)
