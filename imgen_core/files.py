"""Writing files so that nothing is lost: every file is written under a new temporary name in its
own folder (created there, exclusively, so never through a link someone planted) and renamed into
place when complete; any failure or interruption removes the temporary, and the old file, if any,
is left as it was."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


@contextlib.contextmanager
def replacing(path):
    """`with replacing(path) as f:` a new binary file that becomes `path` when the block ends. The
    temporary is named before it is created, so that an interruption at any moment, even while
    it is being created, can remove it; it gets the usual permissions (0666 less the umask)."""
    path = Path(path)
    tmp = path.parent / f"{path.name}.{secrets.token_hex(8)}.part"
    try:
        with open(tmp, "xb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException as e:
        if not (isinstance(e, FileExistsError) and e.filename == str(tmp)):  # never one this did not create
            tmp.unlink(missing_ok=True)
        raise


def append_line(path, line: str):
    """Append one line to a log, refusing to follow a link planted where the log goes."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as e:
        if os.path.islink(path):
            raise FileExistsError(f"{path} is a symbolic link; logs are never written through links") from None
        raise e
    with os.fdopen(fd, "a") as f:
        f.write(line + "\n")


def check_writable_folder(folder) -> Path:
    """Refuse (one line) a folder that results could not be written to, before any work is done
    for them: a file in its place, or no right to write it or to create it. Nothing is created."""
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file; name a folder for the results")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise FileExistsError(f"{existing} is a file, so {folder} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{'folder is not writable' if existing == folder else 'cannot create folders in'}: "
                              f"{existing}")
    return folder
