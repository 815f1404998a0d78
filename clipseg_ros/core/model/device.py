"""Where the model runs: device names, CPU threads, CUDA upkeep (its precision: precision.py).

No ROS in here. Names are checked for spelling by :func:`check_device_name` (cheap, at parameter
time) and resolved against this machine by :func:`resolve_device` (at load time).
"""

from __future__ import annotations

import re

import torch

# torch >= 2.5 has torch.OutOfMemoryError (CUDA's is an alias); older releases only the CUDA one.
OUT_OF_MEMORY_ERRORS = tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
                              torch.cuda.OutOfMemoryError})

def check_device_name(device: str) -> str:
    """Normalised device name (auto, cpu, cuda, cuda:<i>); ValueError if it is none of those.
    Only the spelling is checked: whether the device exists is :func:`resolve_device`'s job."""
    name = (device or "auto").strip().lower()
    if name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name):
        return name
    raise ValueError(f"unknown device '{device}' (expected auto, cpu, cuda or cuda:<index>)")


def resolve_device(device: str, fallback_to_cpu: bool = False) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cpu``, ``cuda``, ``cuda:i`` as given.

    Raises ValueError for an unknown name, and for a CUDA device this machine lacks unless
    ``fallback_to_cpu`` (then the CPU is returned; compare ``.type`` to notice).
    """
    name = check_device_name(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if fallback_to_cpu:
            return torch.device("cpu")
        raise ValueError(f"device '{device}' requested but CUDA is not available on this machine")
    dev = torch.device(name)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        if fallback_to_cpu:
            return torch.device("cpu")
        raise ValueError(f"device '{device}': only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def set_num_threads(num_threads: int) -> None:
    """Set torch's intra-op CPU threads; 0 keeps torch's default. Negative raises ValueError."""
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")
    if num_threads > 0 and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels: honest stage timings on CUDA need them finished (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_cache(device: torch.device) -> None:
    """Return the CUDA caching allocator's free blocks to the driver (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
