"""Writing files so that readers see the old file or the new one, never half of one.

No ROS in here. Used by the prompt store (durable: each write is flushed to disk) and by the
labeller's output folder (not flushed: a frame's record lists its files' hashes, so a file lost
in a power cut is found and redone on the next run).
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (read from /proc on Linux; elsewhere set and restored under a lock)."""
    try:
        match = re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.M)
        if match:
            return int(match.group(1), 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes, durable: bool = True) -> bool:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``. With
    ``durable``, the file is flushed to disk before the rename and the directory entry after it.
    On any failure before the rename the temporary file is removed, the old ``path`` is
    untouched and the error raised. Once renamed, ``path`` is the new file: a failure to flush
    the directory entry then does not raise (that would say "not written" of a file that was
    replaced); False tells that the rename may not survive a power cut."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; the file takes the mode open() would give it (0666 less
        # the umask), so that a labelling tool or a container running as another user can read it.
        os.fchmod(fd, 0o666 & ~current_umask())
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
    if not durable:
        return True
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        return False
    return True
