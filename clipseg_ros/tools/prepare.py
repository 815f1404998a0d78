"""``clipseg-prepare``: export and cache a model's onnxruntime graphs ahead of time, so that a
node's first start runs at full speed from its first frame.

Where ``dtype`` (auto on this CPU, or as given) runs the vision encoder as an onnxruntime int8
graph, the graph is exported once per model and library versions and cached
(``$CLIPSEG_ROS_CACHE``, else ``$XDG_CACHE_HOME/clipseg_ros``, else ``~/.cache/clipseg_ros``). A
node that finds no cached graph exports it on a thread while its first frames run in torch (slower,
and the export competes for the cores); this command does the export in the foreground, in a
robot's install step or a Dockerfile, with the node's own key (the weights, the layers run, the
input size, the quantisation and the library versions). Run it with the node's ``model`` and
``dtype`` and the same cache directory (the node's user, or ``CLIPSEG_ROS_CACHE``).

    clipseg-prepare --model /models/clipseg-rd64-refined [--dtype auto] [--cache DIR]

Exit status: 0 prepared (or nothing to prepare for this precision), 2 the model does not load,
1 the export failed (the node would then run the vision encoder in torch; the reason is printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

EXIT_OK, EXIT_EXPORT, EXIT_MODEL = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    from clipseg_ros.core.model.engine import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="clipseg-prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default="cpu", help="the node's device (graphs are for CPUs; default cpu)")
    p.add_argument("--dtype", default="auto", help="the node's dtype: auto | float32 | bfloat16 | float16 | int8")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for the export (0 = torch default)")
    p.add_argument("--cache", help="cache directory (default: $CLIPSEG_ROS_CACHE, $XDG_CACHE_HOME/clipseg_ros or "
                                   "~/.cache/clipseg_ros, as the node)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cache:
        os.environ["CLIPSEG_ROS_CACHE"] = os.path.abspath(os.path.expanduser(args.cache))
    from clipseg_ros.core.model.engine import ModelLoadError, SegmentationEngine

    start = time.perf_counter()
    try:
        engine = SegmentationEngine.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                                    num_threads=args.threads, export_in_background=False)
    except (ModelLoadError, ValueError) as exc:
        print(f"clipseg-prepare: {exc}", file=sys.stderr)
        return EXIT_MODEL
    seconds = time.perf_counter() - start
    network, precision = engine.network, engine.precision
    if network.onnx_vision_path is None:
        print(f"clipseg-prepare: nothing to prepare: precision {precision.describe()} uses no exported graph")
        return EXIT_OK
    if network.onnx_vision is None:
        print(f"clipseg-prepare: the export failed, a node would run the vision encoder in torch: "
              f"{precision.describe()}", file=sys.stderr)
        return EXIT_EXPORT
    how = "already cached" if network.onnx_vision_cached else f"exported in {seconds:.1f} s"
    print(f"clipseg-prepare: {args.model}: int8 vision graph {how}: {network.onnx_vision_path}")
    return EXIT_OK
