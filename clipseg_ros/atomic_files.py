"""Writing files so that readers see the old file or the new one, never half of one.

No ROS in here. Used by the prompt store (durable: each write is flushed to disk) and by the
labeller's output folder (not flushed: a frame's record lists its files' hashes, so a file lost
in a power cut is found and redone on the next run).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``. With
    ``durable``, the file is flushed to disk before the rename and the directory entry after it.
    On any failure the temporary file is removed and the old ``path`` is untouched."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
