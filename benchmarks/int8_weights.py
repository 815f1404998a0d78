#!/usr/bin/env python3
"""Which int8 weights for onnxruntime's vision graph on this CPU: speed and agreement, one run.

    python benchmarks/int8_weights.py --json benchmarks/results/int8_weights_cpu.json
    python benchmarks/int8_weights.py --quick      # tiny model, seconds

The engine with float32 and with the onnxruntime int8 vision encoder quantised three ways:
signed 8-bit weights, signed 7-bit weights (``reduce_range``, onnxruntime's advice for x86 without
VNNI, where the u8s8 kernels' int16 sums can saturate) and unsigned weights (u8u8, which cannot
saturate). For each: the engine's median ms per stage at 8 prompts on the coffee photo
(interleaved, so that the host's drift hits all alike), and the agreement with float32 on the
four bundled photos at threshold 0.4 (mask pixels, worst frame-and-prompt, worst IoU, objects
lost; random weights in the real architecture: a proxy, ``agreement.py`` is the check with the
real checkpoint). ``chosen`` is what ``int8_weight_type`` picks on this CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import sample_image  # noqa: E402
from bench_precision import PROMPTS, STAGES, photos  # noqa: E402
from results_file import cpu_name, write_results  # noqa: E402

from clipseg_ros.core.model import onnx_vision  # noqa: E402
from clipseg_ros.core.model.agreement import measure_agreement  # noqa: E402
from clipseg_ros.core.model.engine import SegmentationEngine  # noqa: E402
from clipseg_ros.core.model.precision import cpu_features, int8_weight_type  # noqa: E402

VARIANTS = {"int8 weights": ("int8", False), "int8 weights, 7-bit (reduce_range)": ("int8", True),
            "uint8 weights (u8u8)": ("uint8", False)}


def int8_engine(model: str, weights: str, reduce_range: bool) -> SegmentationEngine:
    """The engine with dtype int8, its graph quantised as given (in a cache of its own)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def quantize(float_path, int8_path, _weights="int8"):
        with onnx_vision._without_preprocessing_advice():
            quantize_dynamic(str(float_path), str(int8_path), reduce_range=reduce_range,
                             weight_type=QuantType.QInt8 if weights == "int8" else QuantType.QUInt8)

    with mock.patch.object(onnx_vision, "quantize_int8", quantize), \
            mock.patch.dict(os.environ, {"CLIPSEG_ROS_CACHE": tempfile.mkdtemp(prefix="clipseg_int8_weights_")}):
        return SegmentationEngine.from_pretrained(model, device="cpu", dtype="int8", export_in_background=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 repeats")
    parser.add_argument("--repeats", type=int, default=0, help="timed rounds (default 5, quick 2)")
    parser.add_argument("--json", help="write results to this path")
    args = parser.parse_args(argv)
    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    tmp = tempfile.TemporaryDirectory(prefix="clipseg_int8_weights_")
    model = str(make_random_checkpoint(tmp.name, size="tiny" if args.quick else "rd64-refined"))
    engines = {"float32": SegmentationEngine.from_pretrained(model, device="cpu", dtype="float32")}
    engines.update({name: int8_engine(model, *variant) for name, variant in VARIANTS.items()})
    image, images = sample_image(), photos()
    sets = {name: e.make_prompt_set(PROMPTS) for name, e in engines.items()}
    for name, e in engines.items():
        e.segment(image, sets[name])  # warm-up
    timings = {name: [] for name in engines}
    for _ in range(args.repeats or (2 if args.quick else 5)):
        for name, e in engines.items():
            timings[name].append(e.segment(image, sets[name]).timings_ms)
    rows = []
    for name, e in engines.items():
        row = {"variant": name, **{f"{s}_ms": round(statistics.median(t[s] for t in timings[name]), 1)
                                   for s in (*STAGES, "total")}}
        if name != "float32":
            row.update(measure_agreement(engines["float32"], e, images, PROMPTS).as_row())
        rows.append(row)
        print(row, flush=True)
    fp32 = rows[0]["total_ms"]
    for row in rows:
        row["speedup_vs_float32"] = round(fp32 / row["total_ms"], 2)
    chosen = int8_weight_type(cpu_features())
    result = {"cpu": cpu_name(), "model": "random tiny" if args.quick else "random rd64-refined", "image": "640x480",
              "prompts": len(PROMPTS), "chosen": "uint8 weights (u8u8)" if chosen == "uint8" else "int8 weights",
              "rows": rows}
    write_results(args.json, result)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
