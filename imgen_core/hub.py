"""Finding weight files: a local file, a local folder, or a Hugging Face repo (downloaded once,
with a progress bar, into the Hugging Face cache; `offline=True` or HF_HUB_OFFLINE=1 never
touches the network)."""
from __future__ import annotations

import os
from pathlib import Path


def offline_default() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def is_repo_id(spec) -> bool:
    """Whether a spec that is no local path reads as a Hugging Face repo id (owner/name)."""
    spec = str(spec)
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~"))


def resolve_file(spec: str | os.PathLike, filename: str, what: str, offline: bool | None = None) -> Path:
    """`spec` is a file, a folder holding `filename`, or a Hugging Face repo id holding it."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise FileNotFoundError(f"{what}: no {filename} in folder {path}")
    spec = str(spec)
    if not is_repo_id(spec):
        raise FileNotFoundError(f"{what}: {spec} is neither a file, a folder, nor a Hugging Face repo id "
                                f"(owner/name)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import HF_HUB_CACHE
    offline = offline_default() if offline is None else offline
    try:
        return Path(hf_hub_download(spec, filename, local_files_only=offline))
    except Exception as first:  # noqa: BLE001 - any hub failure gets the same explanation
        reason = f"{type(first).__name__}: {first}".splitlines()[0]
        if not offline:
            try:
                return Path(hf_hub_download(spec, filename, local_files_only=True))
            except Exception:  # noqa: BLE001
                pass
        places = [f"local path '{spec}' (no such file or folder)", f"the Hugging Face cache {HF_HUB_CACHE}"]
        places.append("the Hugging Face hub (skipped: offline mode)" if offline
                      else f"the Hugging Face hub repo {spec} ({reason})")
        raise FileNotFoundError(f"{what}: could not find {filename}. Looked in: " + "; ".join(places)) from None


def load_pretrained(cls, spec: str, what: str, offline: bool | None = None, **kwargs):
    """`cls.from_pretrained(spec)` (transformers), with the same clear error when it is missing."""
    offline = offline_default() if offline is None else offline
    try:
        return cls.from_pretrained(spec, local_files_only=offline, **kwargs)
    except (OSError, ValueError) as e:
        from huggingface_hub.constants import HF_HUB_CACHE
        where = "the Hugging Face hub (skipped: offline mode)" if offline else f"the Hugging Face hub repo {spec}"
        raise FileNotFoundError(f"{what}: could not load '{spec}'. Looked in: local folder '{spec}'; the "
                                f"Hugging Face cache {HF_HUB_CACHE}; {where}. ({str(e).splitlines()[0]})") from None
