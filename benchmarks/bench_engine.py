#!/usr/bin/env python3
"""Engine benchmark: Hugging Face blog usage vs. the engine, in one run, on one machine.

Builds a randomly initialised CLIPSeg with the exact CIDAS/clipseg-rd64-refined architecture
(speed does not depend on weight values) unless --model names a checkpoint, and measures on a
640x480 image for N = 1, 4, 8 prompts:

  (a) baseline: processor(text=prompts, images=[image] * N, padding="max_length") + model(**inputs)
  (b) engine:   SegmentationEngine.segment(image, prompt_set) (prompt embeddings cached, as in the
      node; includes post-processing to 640x480 masks, label and stats)

Also: the engine's stage breakdown, the cost of embedding a new prompt set, and the vision pass's
FLOP count with the rate it ran at (GFLOP/s achieved; no "floor" is claimed: a floor would need
every GEMM shape of the pass timed alone at the same thread count).

    python benchmarks/bench_engine.py            # full-size model (~2 min on 2 cores)
    python benchmarks/bench_engine.py --quick    # tiny model, seconds (CI runs this)
    python benchmarks/bench_engine.py --json out.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from results_file import cpu_name, write_results


def median_ms(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def vision_flop(engine, pixels: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        engine.network.encode_pixels(pixels)
    return float(counter.get_total_flops())


def sample_image() -> np.ndarray:
    """A 640x480 RGB photo (scikit-image's bundled coffee cup) or, without it, a synthetic one."""
    try:
        import cv2
        from skimage import data

        return cv2.resize(data.coffee(), (640, 480), interpolation=cv2.INTER_AREA)
    except Exception:  # noqa: BLE001 - benchmark speed does not depend on content
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model, few repeats (seconds)")
    parser.add_argument("--model", help="checkpoint directory or hub id (default: random rd64-refined)")
    parser.add_argument("--prompts", default="1,4,8", help="prompt counts, comma separated")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats per case (default 3, quick 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="write results to this path")
    args = parser.parse_args(argv)

    from transformers import AutoProcessor

    from clipseg_ros.core.model.engine import SegmentationEngine
    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    model = args.model
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="clipseg_bench_")
        size = "tiny" if args.quick else "rd64-refined"
        print(f"building a random {size} checkpoint ...", flush=True)
        model = str(make_random_checkpoint(tmp.name, size=size))
    engine = SegmentationEngine.from_pretrained(model, device=args.device, dtype=args.dtype)
    processor = AutoProcessor.from_pretrained(model)
    net = engine.model
    image = sample_image()
    repeats = args.repeats or 3
    words = ["cup", "saucer", "spoon", "table", "coffee", "a shadow", "the rim of a cup", "wooden surface"]
    counts = [int(c) for c in args.prompts.split(",")]

    rows = []
    for n in counts:
        prompts = [words[k % len(words)] + ("" if k < len(words) else f" {k}") for k in range(n)]

        def baseline():
            inputs = processor(text=prompts, images=[image] * n, padding="max_length", return_tensors="pt")
            with torch.no_grad():
                return net(**{k: v.to(engine.device) for k, v in inputs.items()}).logits

        prompt_set = engine.make_prompt_set(prompts)

        def optimised():
            return engine.segment(image, prompt_set)

        base_ms = median_ms(baseline, repeats)
        eng_ms = median_ms(optimised, repeats)
        inputs = processor(text=prompts, images=[image] * n, padding="max_length", return_tensors="pt")
        with torch.no_grad():
            ref = net(**{k: v.to(engine.device) for k, v in inputs.items()}).logits.float()
        ref = ref if ref.ndim == 3 else ref[None]
        pixels = engine.preprocess([image])
        mine = engine.predict_logits(pixels, prompt_set.embeddings)[0].float()
        logit_diff = (mine.cpu() - ref.cpu()).abs().max().item()
        pre_diff = (pixels[0].float().cpu() - inputs["pixel_values"][0]).abs().max().item()
        rows.append({"prompts": n, "baseline_ms": round(base_ms, 1), "engine_ms": round(eng_ms, 1),
                     "speedup": round(base_ms / eng_ms, 2), "max_abs_logit_diff": logit_diff,
                     "max_abs_preprocess_diff": pre_diff, "logit_range": round(ref.abs().max().item(), 2)})
        print(f"N={n}: baseline {base_ms:.1f} ms, engine {eng_ms:.1f} ms, x{base_ms / eng_ms:.2f}, "
              f"max|logit diff| {logit_diff:.2e}", flush=True)

    # Stage breakdown at the largest N (median over repeats of each stage).
    n = counts[-1]
    prompt_set = engine.make_prompt_set([f"stage prompt {k}" for k in range(n)])
    stage_runs = [engine.segment(image, prompt_set).timings_ms for _ in range(repeats)]
    stages = {k: round(statistics.median(r[k] for r in stage_runs), 2) for k in stage_runs[0]}
    stages["prompts"] = n

    def new_prompts():
        engine.clear_text_cache()  # measure the cache-miss cost
        engine.make_prompt_set([f"fresh prompt {k}" for k in range(n)])

    stages["text_embed_uncached"] = round(median_ms(new_prompts, repeats), 2)

    flop = vision_flop(engine, engine.preprocess([image]))
    result = {
        "model": "random tiny" if (args.quick and args.model is None) else (args.model or "random rd64-refined"),
        "device": str(engine.device), "dtype": str(engine.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "image": [image.shape[1], image.shape[0]],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "cpu": cpu_name(), "rows": rows, "stages_ms": stages,
        "vision_gflop": round(flop / 1e9, 2),
        "vision_gflops_achieved": round(flop / 1e9 / (stages["vision"] / 1e3), 1),
    }

    print()
    print(f"model: {result['model']}, {result['device']} {result['dtype']}, {result['threads']} threads, "
          f"640x480 input")
    print("| prompts | HF blog usage (ms) | engine (ms) | speed-up | max abs logit diff | preprocess diff |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['prompts']} | {r['baseline_ms']:.1f} | {r['engine_ms']:.1f} | {r['speedup']:.2f}x | "
              f"{r['max_abs_logit_diff']:.1e} | {r['max_abs_preprocess_diff']:.1e} |")
    print()
    print("engine stages (ms, N = {prompts}): ".format(**stages)
          + ", ".join(f"{k} {v}" for k, v in stages.items() if k != "prompts"))
    print(f"vision pass {flop / 1e9:.1f} GFLOP in {stages['vision']:.1f} ms = "
          f"{result['vision_gflops_achieved']} GFLOP/s")
    write_results(args.json, result)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
