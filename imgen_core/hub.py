"""Finding weight files: a local file, a local folder, or a Hugging Face repo (downloaded once,
with a progress bar, into the Hugging Face cache; `offline=True` or HF_HUB_OFFLINE=1 never
touches the network); and `fetch`, which downloads one file of a repo into a folder of the
user's choosing, resumably and verified."""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

# fetch's progress: (stage, bytes done, bytes in all); stage "downloading", then "verifying".
FetchProgress = Callable[[str, int, int], None]
PARTIAL_SUFFIX = ".partial"
_HASH_CHUNK = 8 * 1024 * 1024


def offline_default() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def go_offline():
    """No library of this process touches the network from now on: huggingface_hub read
    HF_HUB_OFFLINE when it was imported, and the evaluation's models (laion_clap,
    frechet_audio_distance) otherwise wait minutes in retries for a hub they cannot reach."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import huggingface_hub.constants
    huggingface_hub.constants.HF_HUB_OFFLINE = True


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


@contextlib.contextmanager
def no_transformers_bars():
    """transformers' own bars ("Loading weights", "Writing model shards") off for a moment: on
    every run they say nothing to users, and they break the lines of a log."""
    from transformers.utils import logging as transformers_logging
    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def load_pretrained(cls, spec: str, what: str, offline: bool | None = None, **kwargs):
    """`cls.from_pretrained(spec)` (transformers), with the same clear error when it is missing."""
    offline = offline_default() if offline is None else offline
    try:
        with no_transformers_bars():
            return cls.from_pretrained(spec, local_files_only=offline, **kwargs)
    except (OSError, ValueError) as e:
        from huggingface_hub.constants import HF_HUB_CACHE
        where = "the Hugging Face hub (skipped: offline mode)" if offline else f"the Hugging Face hub repo {spec}"
        raise FileNotFoundError(f"{what}: could not load '{spec}'. Looked in: local folder '{spec}'; the "
                                f"Hugging Face cache {HF_HUB_CACHE}; {where}. ({str(e).splitlines()[0]})") from None


class DownloadError(OSError):
    """A download that did not give the file the hub describes; nothing is left under its name."""


class NotOnHub(DownloadError):
    """The repo has no such file."""


def fetch(repo: str, filename: str, dest, progress: FetchProgress | None = None) -> Path:
    """`filename` of the Hugging Face repo `repo` downloaded to the file `dest` through
    huggingface_hub. What has arrived is kept in `dest` + ".partial", so an interrupted download
    (a dropped connection, a killed process) continues where it stopped on the next call. The
    file is checked against the size and the hash the hub gives (sha256 for large files, the git
    blob hash for small ones) and only then takes its name: a truncated or corrupted download is
    removed and refused. One process at a time per file (a lock beside it)."""
    from filelock import FileLock
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if dest.is_file():  # another process finished it while this one waited
            return dest
        return _fetch_locked(repo, filename, dest, progress or (lambda stage, done, total: None))


def _fetch_locked(repo: str, filename: str, dest: Path, progress: FetchProgress) -> Path:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers
    from huggingface_hub.errors import EntryNotFoundError
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, filename))
    except EntryNotFoundError:
        raise NotOnHub(f"the Hugging Face repo {repo} has no file {filename}") from None
    except Exception as e:  # noqa: BLE001 - any hub failure gets one explanation
        raise DownloadError(f"cannot reach {filename} of the Hugging Face repo {repo}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Without internet here: "
                            f"`imgen models` lists what is missing, and `imgen download --to DIR` on a machine with "
                            f"it fetches everything to copy over") from None
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    have = partial.stat().st_size if partial.is_file() else 0
    if meta.size is not None and have > meta.size:
        partial.unlink()
        have = 0
    needed = (meta.size or 0) - have
    free = shutil.disk_usage(dest.parent).free
    if needed > free:
        raise DownloadError(f"{filename} needs {needed / 1e9:.2f} GB more in {dest.parent}, which has "
                            f"{free / 1e9:.2f} GB free")
    total = meta.size or 0
    with open(partial, "ab") as f:
        if meta.size is None or have < meta.size:
            quiet = {"tqdm_class": _Silent} if "tqdm_class" in inspect.signature(http_get).parameters else {}
            try:
                http_get(meta.location, _Counting(f, have, total, progress), resume_size=have,
                         headers=build_hf_headers(), expected_size=meta.size, displayed_filename=filename, **quiet)
            except Exception as e:  # noqa: BLE001 - the network, the server or the disk: one explanation
                f.flush()
                kept = partial.stat().st_size
                raise DownloadError(f"the download of {filename} from {repo} stopped: {type(e).__name__}: "
                                    f"{' '.join(str(e).split())[:200]}. The {kept} bytes that arrived are kept in "
                                    f"{partial}; run again to continue from there") from None
    try:
        _verify(partial, meta.size, meta.etag, filename, progress)
    except DownloadError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, dest)
    return dest


def _verify(path: Path, size: int | None, etag: str | None, filename: str, progress: FetchProgress):
    got = path.stat().st_size
    if size is not None and got != size:
        raise DownloadError(f"{filename}: the download has {got} bytes, the hub says {size}; removed (run again "
                            f"to download it anew)")
    etag = (etag or "").strip('"').lower()
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        digest = hashlib.sha256()
    elif re.fullmatch(r"[0-9a-f]{40}", etag):
        digest = hashlib.sha1(f"blob {got}\0".encode())  # git's hash of a small file
    else:
        return  # the hub gave no hash to check against; the size matched
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            progress("verifying", done, got)
    if digest.hexdigest() != etag:
        raise DownloadError(f"{filename}: the download is corrupt (its hash is {digest.hexdigest()[:16]}..., the "
                            f"hub's {etag[:16]}...); removed (run again to download it anew)")


class _Counting:
    """The partial file, as http_get writes to it, reporting the bytes it holds."""

    def __init__(self, f, have: int, total: int, progress: FetchProgress):
        self.f, self.done, self.total, self.progress = f, have, total, progress
        progress("downloading", have, total)

    def write(self, chunk) -> int:
        n = self.f.write(chunk)
        self.done += len(chunk)
        self.progress("downloading", self.done, max(self.total, self.done))
        return n

    def seek(self, *args):
        return self.f.seek(*args)

    def tell(self):
        return self.f.tell()

    def truncate(self, *args):
        self.done = 0 if not args else args[0]
        return self.f.truncate(*args)


class _Silent(tqdm):
    """huggingface_hub's own bar stays quiet: the caller shows progress its own way."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)
