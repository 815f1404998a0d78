"""The labeller's memory against the number of frames, measured in one run.

    python benchmarks/bench_label_memory.py --frames 50 1000 --json benchmarks/results/label_memory_cpu.json

For each count, a child process labels that many 160x120 smooth random pictures with the tiny
random checkpoint (3 prompts, every object kept: ~33 kB of records a frame) and reports the
Python heap's peak (``tracemalloc``) and its maximum RSS. Memory that does not grow with the
frames is the goal (issue 19, point 10).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, write_results  # noqa: E402

CHILD = r"""
import json, resource, sys, tracemalloc
from pathlib import Path
import cv2, numpy as np
from clipseg_ros.tools import label
import clipseg_ros.core.model.engine  # noqa: F401 - torch and transformers imported before the measurement
n, checkpoint, work = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
images = work / "images"; images.mkdir()
rng = np.random.default_rng(0)
for k in range(n):
    cv2.imwrite(str(images / f"f{k:05d}.png"), cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 4))
tracemalloc.start()
rc = label.main([str(images), "-o", str(work / "out"), "--prompts", "cup;door handle;cat", "--model", checkpoint,
                 "--device", "cpu", "--dtype", "float32", "--no-progress", "--min-object-area", "0"])
peak = tracemalloc.get_traced_memory()[1]
records = [p.stat().st_size for p in (work / "out" / "frames").glob("*.json")]
print(json.dumps({"frames": n, "rc": rc, "python_heap_peak_mb": round(peak / 2**20, 2),
                  "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "record_kb": round(float(np.mean(records)) / 1024, 1)}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--json", help="write results to this path")
    args = parser.parse_args(argv)
    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    rows = []
    with tempfile.TemporaryDirectory(prefix="clipseg_label_memory_") as tmp:
        checkpoint = str(make_random_checkpoint(Path(tmp) / "checkpoint"))
        for n in args.frames:
            work = Path(tmp) / f"run_{n}"
            work.mkdir()
            out = subprocess.run([sys.executable, "-c", CHILD, str(n), checkpoint, str(work)], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
            print(rows[-1], flush=True)
    write_results(args.json, {"cpu": cpu_name(), "model": "tiny", "image": "160x120", "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
