"""The released model's parts: what each is, where it comes from, how large it is, under which
licence, where it goes, and whether it is here. The command line (`imgen models`, `imgen
download`), the loader and the ComfyUI loader all read this one table.

Each part lives in a folder of its own name inside a weights folder: `IMGEN_WEIGHTS` (default
`~/.cache/instruct_musicgen/weights`) for the library and the command line, ComfyUI's model
folders for the nodes. A part is downloaded there file by file (`hub.fetch`: resumable,
verified, never partial under its final name).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import defaults
from .hub import FetchProgress, NotOnHub, fetch


@dataclass(frozen=True)
class Part:
    key: str            # how the command line names it
    what: str
    repo: str           # the Hugging Face repo it comes from
    files: tuple[str, ...]
    size: int           # bytes, about (the hub says exactly when downloading)
    licence: str
    comfy_folder: str   # the ComfyUI model folder type it goes in
    local_name: str     # the file (one file) or folder (several) it becomes there
    when: str           # when it is needed
    optional: tuple[str, ...] = ()  # fetched when the repo has them (tokenizer settings)

    @property
    def single_file(self) -> bool:
        return len(self.files) == 1 and self.local_name == self.files[0]

    def target(self, weights: Path) -> Path:
        """Where the part is inside a weights folder: the file itself, or its folder."""
        return Path(weights) / self.local_name

    def present(self, weights: Path) -> bool:
        target = self.target(weights)
        if self.single_file:
            return target.is_file()
        return all((target / name).is_file() for name in self.files)

    def source(self) -> str:
        files = self.files[0] if len(self.files) == 1 else f"{len(self.files)} files"
        return f"https://huggingface.co/{self.repo} ({files})"


CHECKPOINT = Part("checkpoint", "Instruct-MusicGen checkpoint (the whole model: MusicGen-large and the adapter)",
                  defaults.ADAPTER, ("finetuned.ckpt",), 14_600_000_000, "none stated by its authors",
                  "instruct_musicgen", "finetuned.ckpt", "always (converted once into an 8.8 GB model file)")
BASE_CONFIG = Part("base-config", "MusicGen-large's hyper-parameters (config.json, no weights)", defaults.BASE,
                   ("config.json",), 8_000, "CC-BY-NC 4.0", "musicgen", "musicgen-large",
                   "once, to convert the checkpoint")
# MusicGen-large's weights sit beside its config: the same folder, another file.
T5 = Part("t5", "T5-base text encoder", "t5-base", ("config.json", "model.safetensors", "tokenizer.json"),
          894_000_000, "Apache 2.0", "musicgen", "t5-base", "always",
          optional=("tokenizer_config.json", "special_tokens_map.json", "spiece.model"))
ENCODEC = Part("encodec", "EnCodec 32 kHz audio codec", defaults.ENCODEC, ("config.json", "model.safetensors"),
               236_000_000, "CC-BY-NC 4.0", "musicgen", "encodec_32khz", "always",
               optional=("preprocessor_config.json",))
BASE = Part("base", "MusicGen-large LM weights (state_dict.bin)", defaults.BASE, ("state_dict.bin",),
            6_500_000_000, "CC-BY-NC 4.0", "musicgen", "musicgen-large",
            "only for plain MusicGen, training a new adapter, or an adapter file without the LM")

PARTS = (CHECKPOINT, BASE_CONFIG, T5, ENCODEC, BASE)
NEEDED = (CHECKPOINT, BASE_CONFIG, T5, ENCODEC)  # what editing with the released model takes
BY_KEY = {p.key: p for p in PARTS}


def weights_dir() -> Path:
    """Where the command line and the library keep the parts they download."""
    root = os.environ.get("IMGEN_WEIGHTS")
    if root:
        return Path(root).expanduser()
    return defaults.cache_dir() / "weights"


def is_official(spec, part: Part) -> bool:
    """Whether a spec names the released part (its repo id) rather than a file or folder of one's own."""
    return spec is not None and str(spec) == part.repo and not Path(str(spec)).expanduser().exists()


def locate(part: Part, weights: Path) -> Path | None:
    """The part's file or folder: in `weights`, else in the Hugging Face cache (where earlier
    versions downloaded it); None when it is not on this machine."""
    if part.present(weights):
        return part.target(weights)
    from huggingface_hub import try_to_load_from_cache
    cached = [try_to_load_from_cache(part.repo, name) for name in part.files]
    if all(isinstance(c, str) for c in cached):
        return Path(cached[0]) if part.single_file else Path(cached[0]).parent
    return None


def fetch_part(part: Part, weights: Path, progress: FetchProgress | None = None,
               on_file: Callable[[str], None] | None = None) -> Path:
    """Download what of `part` is missing into `weights`; returns the part's file or folder."""
    target = part.target(weights)
    for name in part.files + part.optional:
        dest = target if part.single_file else target / name
        if not dest.is_file():
            if on_file is not None:
                on_file(name)
            try:
                fetch(part.repo, name, dest, progress)
            except NotOnHub:
                if name not in part.optional:
                    raise
    return target


def missing_message(missing: list[Part], target_of: Callable[[Part], Path], offline: bool,
                    advice: str | None = None) -> str:
    """One message for every part that is not here: what, from where, how large, where it goes."""
    why = "offline (--offline or HF_HUB_OFFLINE=1), so nothing was downloaded" if offline else \
        "they could not be downloaded"
    lines = [f"{len(missing)} part(s) of the model are missing and {why}:"]
    for part in missing:
        lines.append(f"  - {part.what}: {part.source()}, about {human_size(part.size)}, goes to {target_of(part)}")
    lines.append(advice or "On a machine with internet: `imgen download --to DIR`, then copy DIR here and set "
                           f"IMGEN_WEIGHTS=DIR (now {weights_dir()}). `imgen models` lists what is here.")
    return "\n".join(lines)


def human_size(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e8:
        return f"{n / 1e9:.2f} GB"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.0f} {unit}"
    return f"{n} B"
