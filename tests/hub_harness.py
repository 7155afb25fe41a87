"""The hub stand-in (hub_server.py) for the download tests: the released files of a parity
fixture under the hub's names, the server in its own process, and the environment that points
huggingface_hub at it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from support import REPO

CHECKPOINT = ("ldzhangyx/instruct-MusicGen", "finetuned.ckpt")


def transformers_config(base_state_dict: Path) -> dict:
    """What `facebook/musicgen-large`'s config.json says, for a fixture's base: the same sizes,
    read here from the base's own audiocraft config (no product code)."""
    pkg = torch.load(base_state_dict, weights_only=True, map_location="cpu")
    lm = yaml.safe_load(pkg["xp.cfg"])["transformer_lm"]
    text = pkg["best_state"]["condition_provider.conditioners.description.output_proj.weight"].shape[1]
    return {"model_type": "musicgen", "audio_encoder": {"audio_channels": 1},
            "decoder": {"model_type": "musicgen_decoder", "hidden_size": lm["dim"], "num_attention_heads": lm["num_heads"],
                        "num_hidden_layers": lm["num_layers"], "ffn_dim": lm["dim"] * lm.get("hidden_scale", 4),
                        "num_codebooks": lm["n_q"], "vocab_size": lm["card"], "activation_function": "gelu",
                        "audio_channels": 1},
            "text_encoder": {"model_type": "t5", "d_model": text}}


def hub_root(folder: Path, fixture: Path) -> Path:
    """The hub's files for a fixture under the released names: the checkpoint, MusicGen-large's
    config.json (the fixture's sizes, as the official run redirected 'large' to its base), and a
    tiny T5 of the fixture's text width and a tiny EnCodec of its codebook size."""
    from imgen_core.tiny import tiny_codec, tiny_text_encoder
    ckpt = folder / CHECKPOINT[0] / CHECKPOINT[1]
    ckpt.parent.mkdir(parents=True)
    shutil.copy(fixture / "instruct_checkpoint.ckpt", ckpt)
    config = transformers_config(fixture / "base_state_dict.bin")
    (folder / "facebook" / "musicgen-large").mkdir(parents=True)
    (folder / "facebook" / "musicgen-large" / "config.json").write_text(json.dumps(config))
    t5 = tiny_text_encoder(config["text_encoder"]["d_model"])
    t5.tokenizer.save_pretrained(folder / "t5-base")
    t5.encoder.save_pretrained(folder / "t5-base")
    tiny_codec(config["decoder"]["vocab_size"]).model.save_pretrained(folder / "facebook" / "encodec_32khz")
    return folder


class Hub:
    """tests/hub_server.py in its own process."""

    def __init__(self, root: Path, *flags: str, port: int = 0):
        self.root = root
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "hub_server.py"), str(root),
                                      "--port", str(port), *flags], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> list[str]:
        self.proc.kill()
        out = self.proc.communicate(timeout=30)[0]
        return out.splitlines()


def online_env(hub: Hub, weights: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    return dict(env, HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", IMGEN_WEIGHTS=str(weights),
                HF_HOME=str(weights.parent / "hf_home"), IMGEN_CACHE=str(weights.parent / "cache"),
                HF_HUB_DISABLE_XET="1")


