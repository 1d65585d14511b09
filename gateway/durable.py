"""Files that survive a crash whole: written beside their final name, fsynced, renamed, folder fsynced.

Used for the small files whose loss or tearing would lose data: the master key file, the gateway key
file and the transcript spool (its files and its wrapped key). A crash leaves the old file or the new
one, never half of one. Every file is created ``0600``: they hold key material or sealed transcripts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a file's creation or rename in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, *, temp: Path | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably, readable by the owner only.

    ``temp`` names the temporary file (for callers whose recovery looks for it); by default it is a
    fresh hidden name in the same folder, removed if writing fails.
    """
    if temp is None:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
        tmp = Path(name)
        os.fchmod(fd, 0o600)
    else:
        tmp = temp
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
