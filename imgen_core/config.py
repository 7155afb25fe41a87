"""Model configuration: the sizes of the MusicGen LM and of the fusion modules."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields


# The width of each T5 that audiocraft's text conditioner may name (the LM's text projection input).
T5_WIDTHS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024}


class ConfigError(ValueError):
    """A model configuration this library cannot build."""


@dataclass(frozen=True)
class LMConfig:
    """Sizes of an audiocraft MusicGen language model (pre-norm, no biases, sinusoidal positions)."""

    dim: int
    num_heads: int
    num_layers: int
    n_q: int = 4
    card: int = 2048
    hidden_scale: int = 4
    text_dim: int = 768
    delays: tuple[int, ...] = (0, 1, 2, 3)
    max_period: float = 10_000.0

    def __post_init__(self):
        _whole_numbers(self, ("dim", "num_heads", "num_layers", "n_q", "card", "hidden_scale", "text_dim"))
        if not isinstance(self.delays, tuple) or not all(_whole(d) and d >= 0 for d in self.delays):
            raise ConfigError(f"delays must be whole numbers of at least 0, got {_shown(self.delays)}")
        if not (isinstance(self.max_period, (int, float)) and math.isfinite(self.max_period) and self.max_period > 1):
            raise ConfigError(f"max_period must be a finite number above 1, got {_shown(self.max_period)}")
        if self.dim % self.num_heads:
            raise ConfigError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if len(self.delays) != self.n_q:
            raise ConfigError(f"{len(self.delays)} delays given for {self.n_q} codebooks")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def special_token(self) -> int:
        return self.card

    @classmethod
    def from_audiocraft(cls, cfg: dict) -> "LMConfig":
        """Build from the training config stored in an audiocraft `state_dict.bin` (`xp.cfg`)."""
        lm = cfg.get("transformer_lm")
        if not isinstance(lm, dict):
            raise ConfigError("xp.cfg has no 'transformer_lm' section: not a MusicGen LM checkpoint")
        expected = {
            "norm_first": True, "bias_ff": False, "bias_attn": False, "bias_proj": False,
            "positional_embedding": "sin", "layer_scale": None, "activation": "gelu",
            "norm": "layer_norm", "qk_layer_norm": False, "qk_layer_norm_cross": False,
            "kv_repeat": 1, "past_context": None, "causal": True,
        }
        unsupported = [f"{k}={lm.get(k)!r} (supported: {v!r})" for k, v in expected.items()
                       if k in lm and lm[k] != v]
        pattern = cfg.get("codebooks_pattern", {}) or {}
        if pattern.get("modeling", "delay") != "delay":
            unsupported.append(f"codebooks_pattern.modeling={pattern.get('modeling')!r} (supported: 'delay')")
        fuser = cfg.get("fuser", {}) or {}
        if fuser.get("cross", ["description"]) != ["description"] or fuser.get("prepend") or fuser.get("sum"):
            unsupported.append(f"fuser={fuser!r} (supported: cross=['description'] only)")
        if fuser.get("cross_attention_pos_emb"):
            unsupported.append("fuser.cross_attention_pos_emb=True (supported: False)")
        if unsupported:
            raise ConfigError("unsupported MusicGen LM settings: " + "; ".join(unsupported))
        delays = tuple(pattern.get("delay", {}).get("delays", range(lm["n_q"])))
        t5_name = (((cfg.get("conditioners") or {}).get("description") or {}).get("t5") or {}).get("name", "t5-base")
        return cls(dim=int(lm["dim"]), num_heads=int(lm["num_heads"]), num_layers=int(lm["num_layers"]),
                   n_q=int(lm["n_q"]), card=int(lm["card"]), hidden_scale=int(lm.get("hidden_scale", 4)),
                   text_dim=T5_WIDTHS.get(t5_name, 768), delays=delays)

    @classmethod
    def from_transformers(cls, cfg: dict) -> "LMConfig":
        """Build from a transformers MusicGen `config.json` (what `facebook/musicgen-*` repos hold
        beside audiocraft's `state_dict.bin`): transformers implements only the settings this
        library supports (pre-norm, gelu, sinusoidal positions, the delay pattern), so the sizes
        are all it needs to say."""
        decoder = cfg.get("decoder")
        if cfg.get("model_type") != "musicgen" or not isinstance(decoder, dict):
            raise ConfigError(f"not a MusicGen config (model_type={_shown(cfg.get('model_type'))}; expected "
                              f"'musicgen' with a 'decoder' section)")
        channels = (cfg.get("audio_encoder") or {}).get("audio_channels", 1)
        if channels != 1 or decoder.get("audio_channels", 1) != 1:
            raise ConfigError("stereo MusicGen is not supported (the adapter was trained on mono MusicGen)")
        if decoder.get("activation_function", "gelu") != "gelu":
            raise ConfigError(f"unsupported activation {_shown(decoder.get('activation_function'))} (supported: gelu)")
        dim, ffn = decoder.get("hidden_size"), decoder.get("ffn_dim")
        if not (_whole(dim) and _whole(ffn) and dim > 0 and ffn % dim == 0):
            raise ConfigError(f"hidden_size {_shown(dim)} and ffn_dim {_shown(ffn)} must be whole numbers, "
                              f"ffn_dim a multiple of hidden_size")
        n_q = decoder.get("num_codebooks")
        text_dim = (cfg.get("text_encoder") or {}).get("d_model", 768)
        return cls(dim=dim, num_heads=decoder.get("num_attention_heads"), num_layers=decoder.get("num_hidden_layers"),
                   n_q=n_q, card=decoder.get("vocab_size"), hidden_scale=ffn // dim, text_dim=text_dim,
                   delays=tuple(range(n_q)) if _whole(n_q) and 0 < n_q <= 64 else ())

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        return _from_plain(cls, d, "an LM config")


@dataclass(frozen=True)
class FusionConfig:
    """Sizes of the audio fusion module and the LoRA text fusion module."""

    num_layers: int
    max_frames: int = 500
    lora_rank: int = 32
    lora_alpha: int = 64
    lora_targets: tuple[str, ...] = field(default=("q_proj", "v_proj"))

    def __post_init__(self):
        _whole_numbers(self, ("num_layers", "max_frames", "lora_rank"))
        alpha = self.lora_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ConfigError(f"lora_alpha must be a finite number above 0, got {_shown(alpha)}")
        if not (isinstance(self.lora_targets, tuple) and self.lora_targets
                and set(self.lora_targets) <= {"q_proj", "k_proj", "v_proj"}):
            raise ConfigError(f"lora_targets must name some of q_proj, k_proj, v_proj, got {_shown(self.lora_targets)}")

    def start_layer(self, lm: LMConfig) -> int:
        if not 0 < self.num_layers <= lm.num_layers:
            raise ConfigError(f"fusion num_layers {self.num_layers} must be in 1..{lm.num_layers} "
                              f"(the LM has {lm.num_layers} layers)")
        return lm.num_layers - self.num_layers

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FusionConfig":
        return _from_plain(cls, d, "a fusion config")


def _plain(cfg) -> dict:
    """A config as JSON values (its tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def _from_plain(cls, d, what: str):
    """A config from `_plain`'s values (lists back to tuples, at most 64 long), validated as built."""
    if not isinstance(d, dict) or not set(d) <= {f.name for f in fields(cls)}:
        raise ConfigError(f"{what} must be a mapping of {', '.join(f.name for f in fields(cls))}")
    return cls(**{k: tuple(v) if isinstance(v, list) and len(v) <= 64 else v for k, v in d.items()})


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _whole_numbers(cfg, names):
    """Refuse sizes that are not whole numbers of at least 1 (a file's 2.0, "64" or 0)."""
    for name in names:
        value = getattr(cfg, name)
        if not _whole(value) or value < 1:
            raise ConfigError(f"{name} must be a whole number of at least 1, got {_shown(value)}")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."
