#!/usr/bin/env python3
"""Precision benchmark: ms per stage, speed-up and agreement per precision, and the node end to
end with ``dtype auto``. One run, one machine; the JSON names the CPU and its flags.

    python benchmarks/bench_precision.py --json benchmarks/results/precision_cpu.json
    python benchmarks/bench_precision.py --quick        # tiny model, seconds

1. Engine, 640x480 (scikit-image's coffee photo), N = 1, 4, 8 prompts, per precision (float32,
   bfloat16, int8 (onnxruntime's where installed, else torchao's), and what ``auto`` picks here
   when that is none of them): median ms of preprocess, vision, decoder and
   post-processing (masks at 640x480, label, stats) over the repeats; speed-up against the
   float32 engine, and at N = 8 against the Hugging Face blog usage (processor + model forward,
   float32) measured in the same run.
2. Agreement with float32 on the four bundled photos with 8 prompts at threshold 0.4 (random
   weights with the real architecture: a proxy; ``benchmarks/agreement.py`` is the check with
   the real checkpoint on your own images).
3. The real node (a separate process) with 8 prompts under a 30 Hz 640x480 camera, ``dtype``
   auto and float32: outputs per second, latency, and the time from starting the process to its
   first output. ``auto`` runs twice where it picks onnxruntime's int8: first with an empty
   graph cache (the node's first start with a model: it exports the graph while segmenting in
   torch, so its rate covers both), then with the graph cached (every later start).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import median_ms, sample_image  # noqa: E402
from bench_node import latency  # noqa: E402
from results_file import cpu_name, write_results  # noqa: E402

from clipseg_ros.core.model.agreement import measure_agreement  # noqa: E402
from clipseg_ros.core.model.engine import SegmentationEngine  # noqa: E402
from clipseg_ros.core.model.precision import choose_precision, cpu_features  # noqa: E402

PROMPTS = ["cup", "saucer", "spoon", "table", "coffee", "a shadow", "the rim of a cup", "wooden surface"]
STAGES = ("preprocess", "vision", "decoder", "post")


def stage_times(engine, image, n: int, repeats: int) -> dict:
    prompt_set = engine.make_prompt_set(PROMPTS[:n])
    engine.segment(image, prompt_set)  # warm-up
    runs = [engine.segment(image, prompt_set).timings_ms for _ in range(repeats)]
    row = {f"{s}_ms": round(statistics.median(r[s] for r in runs), 1) for s in STAGES}
    row["total_ms"] = round(statistics.median(r["total"] for r in runs), 1)
    return row


def blog_usage_ms(model: str, image, n: int, repeats: int) -> float:
    """The Hugging Face blog's CLIPSeg usage, float32: one processor call and one forward."""
    from transformers import AutoProcessor, CLIPSegForImageSegmentation

    processor = AutoProcessor.from_pretrained(model)
    net = CLIPSegForImageSegmentation.from_pretrained(model).eval()
    prompts = PROMPTS[:n]

    def once():
        inputs = processor(text=prompts, images=[image] * n, padding="max_length", return_tensors="pt")
        with torch.inference_mode():
            torch.sigmoid(net(**inputs).logits)

    return round(median_ms(once, repeats), 1)


def photos():
    import cv2
    from skimage import data

    return [cv2.resize(getattr(data, n)()[:, :, :3], (640, 480), interpolation=cv2.INTER_AREA)
            for n in ("coffee", "chelsea", "astronaut", "rocket")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model, few repeats, short node runs")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats per case (default 5, quick 2)")
    parser.add_argument("--seconds", type=float, default=0, help="node run per dtype (default 30, quick 5)")
    parser.add_argument("--json", help="write results to this path")
    args = parser.parse_args(argv)
    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    repeats = args.repeats or (2 if args.quick else 5)
    auto = choose_precision("auto", torch.device("cpu"))
    names = ["float32", "bfloat16", "int8"]
    explicit = {n: choose_precision(n, torch.device("cpu")) for n in names}
    if all((p.encoders, p.decoder, p.vision_int8) != (auto.encoders, auto.decoder, auto.vision_int8)
           for p in explicit.values()):
        names.append("auto")  # a mix of its own here (e.g. int8 vision encoder, bfloat16 decoder)
    cpu = cpu_features()
    result = {"cpu": cpu_name(), "cpu_flags": sorted(f for f in cpu.flags if "avx" in f or "amx" in f or "vnni" in f),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "auto": auto.describe(),
              "model": "random tiny" if args.quick else "random rd64-refined", "image": "640x480"}
    print(f"{result['cpu']}, {result['threads']} threads; auto picks {auto.describe()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="clipseg_bench_precision_") as tmp:
        model = str(make_random_checkpoint(tmp, size="tiny" if args.quick else "rd64-refined"))
        image = sample_image()
        engines = {name: SegmentationEngine.from_pretrained(model, device="cpu", dtype=name) for name in names}
        rows = []
        for name, engine in engines.items():
            for n in (1, 4, 8):
                row = {"precision": name, "prompts": n, **stage_times(engine, image, n, repeats)}
                rows.append(row)
                print(row, flush=True)
        fp32 = {r["prompts"]: r["total_ms"] for r in rows if r["precision"] == "float32"}
        blog = blog_usage_ms(model, image, 8, max(1, repeats // 2))
        for row in rows:
            row["speedup_vs_float32"] = round(fp32[row["prompts"]] / row["total_ms"], 2)
            if row["prompts"] == 8:
                row["speedup_vs_blog"] = round(blog / row["total_ms"], 2)
        result["engine"] = rows
        result["blog_usage_ms_8_prompts"] = blog
        pictures = photos()
        result["agreement"] = []
        for name in names:
            if name == "float32":
                continue
            a = measure_agreement(engines["float32"], engines[name], pictures, PROMPTS)
            row = {"precision": name, "frames": a.frames, "prompts": a.prompts,
                   "mask_agreement": round(a.mask_agreement, 5), "worst_mask_agreement": round(a.worst_mask_agreement, 5),
                   "max_probability_difference": round(a.max_probability_difference, 4)}
            result["agreement"].append(row)
            print(row, flush=True)
        del engines
        seconds = args.seconds or (5.0 if args.quick else 30.0)
        result["node"] = []
        if auto.vision_int8 == "onnxruntime":
            with tempfile.TemporaryDirectory(prefix="clipseg_bench_empty_cache_") as empty:
                saved = os.environ.get("CLIPSEG_ROS_CACHE")
                os.environ["CLIPSEG_ROS_CACHE"] = empty  # the node process inherits it
                try:
                    result["node"].append(dict(latency(model, 8, seconds, 30.0, dtype="auto"), graph_cache="empty"))
                finally:
                    os.environ.pop("CLIPSEG_ROS_CACHE") if saved is None else os.environ.update(CLIPSEG_ROS_CACHE=saved)
        # the engines above exported the graph into the cache the node uses now
        result["node"] += [dict(latency(model, 8, seconds, 30.0, dtype=d), graph_cache="filled") for d in ("auto", "float32")]
    write_results(args.json, result)
    print("\n| precision | prompts | preprocess | vision | decoder | post | total (ms) | vs float32 | vs blog |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["engine"]:
        print(f"| {r['precision']} | {r['prompts']} | {r['preprocess_ms']} | {r['vision_ms']} | {r['decoder_ms']} | "
              f"{r['post_ms']} | {r['total_ms']} | {r['speedup_vs_float32']} | {r.get('speedup_vs_blog', '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
