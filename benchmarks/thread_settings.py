#!/usr/bin/env python3
"""Thread settings for the node on this CPU: ``num_threads`` (torch's and, through it, the
onnxruntime graph's intra-op threads) with the pipeline on and off, in one run.

    python benchmarks/thread_settings.py --json benchmarks/results/thread_settings_cpu.json
    python benchmarks/thread_settings.py --quick      # tiny model, seconds

The real node (``dtype`` auto, 8 prompts, ``rate`` 0) measured as ``bench_live.py`` does: one
frame at a time end to end, then a 30 Hz camera on the same cores (outputs per second, latency,
cores per thread). ``num_threads`` 0 is torch's default (one per core).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_live  # noqa: E402
from results_file import write_results  # noqa: E402

VARIANTS = ((True, 0), (True, 1), (False, 0), (False, 1))  # (pipeline, num_threads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, short windows")
    parser.add_argument("--seconds", type=float, default=0, help="each 30 Hz window (default 20, quick 3)")
    parser.add_argument("--json", help="write results to this path")
    args = parser.parse_args(argv)
    import torch

    tmp, model, header = bench_live.node_variants_setup(args.quick, "clipseg_thread_settings_")
    result = {**header, "default_threads": torch.get_num_threads(), "prompts": 8,
              "window_s": args.seconds or (3.0 if args.quick else 20.0), "rows": []}
    bench = bench_live.Bench()
    try:
        for pipeline, threads in VARIANTS:
            [row] = bench_live.node_runs(bench, model, pipeline, result["window_s"], 2 if args.quick else 4,
                                         counts=(8,), num_threads=threads)
            result["rows"].append({"num_threads": threads, **row})
    finally:
        bench.close()
        tmp.cleanup()
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
