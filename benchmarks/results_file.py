"""Shared by the benchmark scripts: write a result dict where ``--json`` points."""

from __future__ import annotations

import json


def write_results(path: str | None, result: dict) -> None:
    """Write ``result`` as indented JSON to ``path`` (nothing when ``path`` is empty)."""
    if not path:
        return
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {path}")
