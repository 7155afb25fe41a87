"""Writing files so that nothing is lost: every file is written under a new temporary name in its
own folder (created fresh, so never through a link someone planted there) and renamed into place
when complete; any failure or interruption removes the temporary, and the old file, if any, is
left as it was."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: mkstemp creates files 0600, the result gets the usual permissions


@contextlib.contextmanager
def replacing(path):
    """`with replacing(path) as f:` a new binary file that becomes `path` when the block ends."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
