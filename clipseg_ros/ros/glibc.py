"""What the node asks of the C library (glibc): thread names the OS shows, and a heap that keeps
the per-frame buffers mapped. Where there is no glibc (musl, macOS) each call does nothing.

No rclpy in here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt() parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_MAPPED_BYTES = 1 << 30
# Set by the operator, these win: the node changes nothing then.
OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _libc_function(name: str):
    """A function of the C library (glibc), or None where it has none (musl, macOS)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


_MALLOPT = _libc_function("mallopt")
_MALLOC_TRIM = _libc_function("malloc_trim")


def keep_frame_buffers_mapped() -> str:
    """Serve every allocation under 1 GiB from the heap and never give freed heap back on its own;
    says what was done (for the log).

    Why: each frame the decoder and the post-processing allocate and free buffers of 4-32 MB (the
    decoder's MLP at 8 prompts: 32 MB a layer). glibc maps such sizes freshly and unmaps them when
    freed (its threshold adapts only up to 32 MB), and trimming the heap once a second returned the
    rest, so every frame faulted the same memory in again. With glibc's own thresholds alone:
    44 000-47 000 page faults (~180 MB) a frame in the model thread at 8 prompts, against
    426-5 831 with the heap kept, and 0.85-1.05 against 1.15-1.20 outputs/s under a 30 Hz camera
    (``benchmarks/heap_settings.py``, full-size model, 2-core AVX2 EPYC). The cost: the process keeps its high-water mark
    (:func:`return_free_memory` gives it back when the model thread stops)."""
    if any(name in os.environ for name in OPERATOR_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "heap: the environment's malloc settings kept"
    if _MALLOPT is None:
        return "heap: no glibc mallopt here; left as it is"
    if _MALLOPT(M_MMAP_THRESHOLD, KEEP_MAPPED_BYTES) != 1 or _MALLOPT(M_TRIM_THRESHOLD, KEEP_MAPPED_BYTES) != 1:
        return "heap: glibc refused the settings; left as it is"
    return "heap: buffers under 1 GiB served from the heap and kept mapped between frames"


def return_free_memory() -> None:
    """Give the heap's free pages back to the OS (glibc's malloc_trim)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _find_set_thread_name():
    set_name, self_id = _libc_function("pthread_setname_np"), _libc_function("pthread_self")
    if set_name is None or self_id is None:
        return None
    set_name.argtypes, self_id.restype = [ctypes.c_ulong, ctypes.c_char_p], ctypes.c_ulong
    return lambda name: set_name(self_id(), name.encode()[:15])


_SET_THREAD_NAME = _find_set_thread_name()


def name_this_thread(name: str) -> None:
    """Give the calling thread ``name`` (first 15 bytes) where the OS shows it: ``top -H``,
    ``ps -L``, ``/proc/<pid>/task/<tid>/comm`` (Python's own thread names stay inside Python).
    What each thread costs a robot's CPU can then be read without a profiler."""
    if _SET_THREAD_NAME is not None:
        _SET_THREAD_NAME(name)
