"""Shared by the benchmark scripts: the machine they ran on, and the result dict where ``--json`` points."""

from __future__ import annotations

import json
import platform


def write_results(path: str | None, result: dict) -> None:
    """Write ``result`` as indented JSON to ``path`` (nothing when ``path`` is empty)."""
    if not path:
        return
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {path}")


def cpu_name() -> str:
    """The CPU's model name and the instruction sets that decide reduced-precision speed."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16") if f in flags]
    return f"{model} ({' '.join(wanted)})"
