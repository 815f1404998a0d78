#!/usr/bin/env python3
"""The node's heap setting on this machine: frame buffers kept mapped (the node's default) against
glibc's own thresholds, in one run.

    python benchmarks/heap_settings.py --json benchmarks/results/heap_settings_cpu.json
    python benchmarks/heap_settings.py --quick      # tiny model, seconds

The real node (``dtype`` auto, 8 prompts, ``rate`` 0, pipeline off) measured as ``bench_live.py``
does: one frame at a time end to end, then a 30 Hz camera on the same cores (outputs per second,
latency, cores and minor page faults per output of the node's threads). glibc's own behaviour is
had by giving the node a glibc malloc tunable at its default value
(``GLIBC_TUNABLES=glibc.malloc.tcache_count=7``): the node then leaves glibc as it is
(``clipseg_ros.ros.glibc.keep_frame_buffers_mapped``). The variants alternate, twice each, so
that the host's drift hits both alike.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_live  # noqa: E402
from results_file import write_results  # noqa: E402

VARIANTS = {"kept mapped (default)": {}, "glibc's own thresholds": {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7"}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, short windows, one round")
    parser.add_argument("--seconds", type=float, default=0, help="each 30 Hz window (default 20, quick 3)")
    parser.add_argument("--json", help="write results to this path")
    args = parser.parse_args(argv)
    tmp, model, header = bench_live.node_variants_setup(args.quick, "clipseg_heap_settings_")
    result = {**header, "prompts": 8, "window_s": args.seconds or (3.0 if args.quick else 20.0), "rows": []}
    bench = bench_live.Bench()
    try:
        for _ in range(1 if args.quick else 2):
            for variant, env in VARIANTS.items():
                with mock.patch.dict(os.environ, env):  # the node started inside inherits it
                    [row] = bench_live.node_runs(bench, model, False, result["window_s"], 2 if args.quick else 4,
                                                 counts=(8,))
                result["rows"].append({"heap": variant, **row})
    finally:
        bench.close()
        tmp.cleanup()
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
