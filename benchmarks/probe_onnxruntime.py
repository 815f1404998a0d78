#!/usr/bin/env python3
"""Probe for issue #13's next step: the vision pass (the engine's largest stage) in onnxruntime,
float32 and dynamic int8, against torch float32 and bfloat16, in one run on one machine.

Not a backend of the node (yet): it answers whether one would pay. Needs ``onnxruntime`` and
``onnx`` (not in the project's requirements):

    pip install onnxruntime onnx
    python benchmarks/probe_onnxruntime.py --json benchmarks/results/onnxruntime_probe_cpu.json
    python benchmarks/probe_onnxruntime.py --quick     # tiny model, seconds

What it times: ``ClipSegNetwork.encode_pixels`` (patch embedding, CLIP's vision layers up to the
last of ``extract_layers``) on one 352x352 frame, median of the repeats, torch at its default
threads, onnxruntime in the node's own session (``clipseg_ros.core.model.onnx_vision.OnnxVisionPass``: the
same number of intra-op threads, no spinning). The ONNX graph is exported from that same method
and quantised by the node's own ``export_float32`` and ``quantize_int8`` (torch's TorchScript
exporter, opset 17, eager attention; ``quantize_dynamic``: int8 weights, activations quantised
per call).
The node's own int8 (torchao, eager) is timed beside them when torchao is installed.
Error: mean |difference| / mean |float32| of the last extracted layer's hidden state.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402
from results_file import cpu_name, write_results  # noqa: E402


def median_ms(run, repeats: int) -> float:
    return round(bench_engine.median_ms(run, repeats), 1)  # one warm-up call, then the median


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return round(float(np.abs(out.astype(np.float32) - ref).mean() / np.abs(ref).mean()), 4)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model, 2 repeats")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats (default 5, quick 2)")
    parser.add_argument("--json", help="write results to this path")
    args = parser.parse_args(argv)
    from clipseg_ros.core.model.onnx_vision import OnnxVisionPass, export_float32, onnxruntime_available, quantize_int8

    if not onnxruntime_available():
        print("probe_onnxruntime: needs onnxruntime and onnx (pip install onnxruntime onnx)")
        return 2
    import onnxruntime as ort
    from transformers import CLIPSegForImageSegmentation

    from clipseg_ros.core.model.network import ClipSegNetwork
    from clipseg_ros.core.model.precision import Precision, torchao_available
    from clipseg_ros.core.model.random_checkpoint import rd64_refined_config, tiny_config

    repeats = args.repeats or (2 if args.quick else 5)
    threads = torch.get_num_threads()
    size = 224 if args.quick else 352
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    def network(dtype: torch.dtype, vision_int8: str = "") -> ClipSegNetwork:
        torch.manual_seed(0)
        model = CLIPSegForImageSegmentation((tiny_config if args.quick else rd64_refined_config)()).eval()
        return ClipSegNetwork(model.requires_grad_(False), torch.device("cpu"),
                              Precision(str(dtype), dtype, dtype, vision_int8=vision_int8))

    fp32 = network(torch.float32)
    reference = fp32.encode_pixels(pixels)[-1].float().numpy()

    def torch_row(runtime: str, precision: str, net: ClipSegNetwork) -> dict:
        return {"runtime": runtime, "precision": precision, "ms": median_ms(lambda: net.encode_pixels(pixels), repeats),
                "relative_error": relative_error(net.encode_pixels(pixels)[-1].float().numpy(), reference)}

    rows = [torch_row("torch", "float32", fp32), torch_row("torch", "bfloat16", network(torch.bfloat16))]
    if torchao_available():  # the node's dtype int8 today
        rows.append(torch_row("torch + torchao", "int8 dynamic", network(torch.float32, vision_int8="torchao")))

    with tempfile.TemporaryDirectory(prefix="clipseg_probe_onnx_") as tmp:
        fp32_path, int8_path = Path(tmp) / "vision.onnx", Path(tmp) / "vision_int8.onnx"
        t0 = time.perf_counter()
        export_float32(fp32.model, fp32.encode_pixels, size, fp32_path)
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        quantize_int8(fp32_path, int8_path)
        quantize_s = time.perf_counter() - t0
        for name, path in (("float32", fp32_path), ("int8 dynamic", int8_path)):
            t0 = time.perf_counter()
            session = OnnxVisionPass(path, threads)  # the node's session options
            load_s = time.perf_counter() - t0
            rows.append({"runtime": "onnxruntime", "precision": name,
                         "ms": median_ms(lambda: session(pixels), repeats),
                         "relative_error": relative_error(session(pixels)[-1].numpy(), reference),
                         "session_load_s": round(load_s, 2)})
    base = rows[0]["ms"]
    bf16_ms = rows[1]["ms"]
    for row in rows:
        row["speedup_vs_torch_float32"] = round(base / row["ms"], 2)
        row["speedup_vs_torch_bfloat16"] = round(bf16_ms / row["ms"], 2)
        print(row, flush=True)
    result = {"cpu": cpu_name(), "threads": threads, "torch": torch.__version__, "onnxruntime": ort.__version__,
              "model": "random tiny" if args.quick else "random rd64-refined", "pixels": f"{size}x{size}",
              "vision_layers_run": fp32.vision_depth, "export_s": round(export_s, 1),
              "quantize_s": round(quantize_s, 1), "vision": rows}
    write_results(args.json, result)
    print("\n| runtime | precision | vision ms | vs torch float32 | vs torch bfloat16 | relative error |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['runtime']} | {r['precision']} | {r['ms']} | {r['speedup_vs_torch_float32']} | "
              f"{r['speedup_vs_torch_bfloat16']} | {r['relative_error']} |")
    print(f"export {export_s:.1f} s, quantisation {quantize_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
