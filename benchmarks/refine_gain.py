"""How much edge-aware refinement gains, and what it costs per frame.

Synthetic set (the default): the known-answer checkpoint (every prompt's mask is the red 16 px
patches of the input: the block masks of the real model's worst case) on the synthetic RGB-D
scenes (clipseg_ros/tools/synthetic_scenes.py), whose truth is known to a pixel. Per scene and
``refine`` mode: IoU and boundary F-score (2 px) against the truth, at 640x480 and 1280x720; the
mean IoU for other refinement radii (how the default was chosen); and the cost of refining 8
prompts as a share of the model time of one frame with 8 prompts (the rd64-refined architecture,
random weights, float32), both measured in this run.

    python benchmarks/refine_gain.py --json benchmarks/results/refine_cpu.json

Real weights: images with ground truth, as ``visual_prompt_gain.py`` does for prompts:

    python benchmarks/refine_gain.py --model DIR --images DIR [--prompt TEXT]

``DIR`` holds ``<stem>.png`` / ``.jpg`` images, ``<stem>.mask.png`` ground truth (non-zero =
object), optionally ``<stem>.depth.png`` (16-bit, millimetres, registered to the image) and
``<stem>.txt`` (the prompt; default ``--prompt``). Prints IoU and boundary F-score per mode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_3d import median_ms  # noqa: E402
from results_file import cpu_name, write_results  # noqa: E402

from clipseg_ros.core.model.engine import SegmentationEngine  # noqa: E402
from clipseg_ros.core.results.postprocess import mask_level  # noqa: E402
from clipseg_ros.core.results.refinement import REFINE_MODES, RefineOptions, refine_masks  # noqa: E402
from clipseg_ros.tools.mask_scores import boundary_f_score, iou  # noqa: E402

THRESHOLD = 0.4
SIZES = [(480, 640), (720, 1280)]
RADII = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
PROMPTS = ["cup", "saucer", "spoon", "table", "chair", "person", "door handle", "bottle"]


def scores(masks: np.ndarray, image: np.ndarray, depth: np.ndarray | None, truth: np.ndarray,
           options: RefineOptions) -> tuple[float, float]:
    refined = refine_masks(masks, image, depth, options, [THRESHOLD]).masks[0] >= mask_level(THRESHOLD)
    return iou(refined, truth), boundary_f_score(refined, truth)


def synthetic(args) -> dict:
    from clipseg_ros.core.model.known_answer_checkpoint import make_known_answer_checkpoint
    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint
    from clipseg_ros.tools.synthetic_scenes import scenes

    with tempfile.TemporaryDirectory(prefix="clipseg_refine_") as tmp:
        known = SegmentationEngine.from_pretrained(str(make_known_answer_checkpoint(Path(tmp) / "known")),
                                                   device="cpu", dtype="float32")
        size_name = "tiny" if args.quick else "rd64-refined"
        print(f"building a random {size_name} checkpoint for the model time ...", flush=True)
        model = SegmentationEngine.from_pretrained(str(make_random_checkpoint(Path(tmp) / "model", size=size_name)),
                                                   device="cpu", dtype="float32")
        one = known.make_prompt_set(["red thing"])
        eight_known, eight_model = known.make_prompt_set(PROMPTS), model.make_prompt_set(PROMPTS)
        scene_rows, radius_rows, cost_rows = [], [], []
        for h, w in SIZES:
            size = f"{w}x{h}"
            by_radius = {(mode, r): [] for mode in REFINE_MODES[1:] for r in RADII}
            for scene in scenes((h, w)):
                masks = known.segment(scene.image, one, threshold=THRESHOLD).masks
                row = {"size": size, "scene": scene.name, "note": scene.note}
                for mode in REFINE_MODES:
                    row[mode] = [round(v, 4) for v in scores(masks, scene.image, scene.depth, scene.truth,
                                                             RefineOptions(mode=mode))]
                for mode, radius in by_radius:
                    by_radius[mode, radius].append((scene.name, scores(masks, scene.image, scene.depth, scene.truth,
                                                                       RefineOptions(mode=mode, radius=radius))[0]))
                scene_rows.append(row)
                print(f"{size} {scene.name:36s} " + "  ".join(f"{m} {row[m][0]:.3f}/{row[m][1]:.3f}"
                                                              for m in REFINE_MODES), flush=True)
            for (mode, radius), values in by_radius.items():
                radius_rows.append({"size": size, "mode": mode, "radius": radius,
                                    "mean_iou": round(statistics.mean(v for _, v in values), 4),
                                    "iou": {name: round(v, 4) for name, v in values}})
            # cost: 8 prompts of the known-answer model on the first scene, against the model's frame
            scene = scenes((h, w))[0]
            masks = known.segment(scene.image, eight_known, threshold=THRESHOLD).masks
            model_ms = median_ms(lambda: model.segment(scene.image, eight_model, threshold=THRESHOLD), args.repeats)
            row = {"size": size, "prompts": len(PROMPTS), "model_ms": round(model_ms, 1)}
            for mode in REFINE_MODES[1:]:
                ms = median_ms(lambda: refine_masks(masks, scene.image, scene.depth, RefineOptions(mode=mode),
                                                    [THRESHOLD] * len(PROMPTS)), args.repeats)
                row[f"{mode}_ms"] = round(ms, 1)
                row[f"{mode}_share"] = round(ms / model_ms, 4)
            cost_rows.append(row)
            print(f"{size}: model {model_ms:.0f} ms; refinement of 8 prompts " + ", ".join(
                f"{m} {row[f'{m}_ms']:.0f} ms ({100 * row[f'{m}_share']:.1f}%)" for m in REFINE_MODES[1:]), flush=True)
    means = {size: {mode: round(statistics.mean(r[mode][0] for r in scene_rows if r["size"] == size), 4)
                    for mode in REFINE_MODES} for size in {r["size"] for r in scene_rows}}
    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "model": size_name, "threshold": THRESHOLD,
            "default": RefineOptions().mode, "default_radius": RefineOptions().radius,
            "scenes": scene_rows, "mean_iou": means, "radii": radius_rows, "cost": cost_rows}


def real(args) -> dict:
    engine = SegmentationEngine.from_pretrained(args.model, device=args.device, dtype="float32")
    folder = Path(args.images)
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")
                    and not p.name.endswith((".mask.png", ".depth.png")))
    totals = {mode: [] for mode in REFINE_MODES}
    rows = []
    for path in images:
        truth_path = path.with_name(path.stem + ".mask.png")
        if not truth_path.exists():
            print(f"{path.name}: no {truth_path.name}, skipped")
            continue
        image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        truth = cv2.imread(str(truth_path), cv2.IMREAD_GRAYSCALE) > 0
        depth_path = path.with_name(path.stem + ".depth.png")
        depth = None
        if depth_path.exists():
            depth = cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
            depth[depth == 0] = np.nan
        prompt_path = path.with_name(path.stem + ".txt")
        prompt = prompt_path.read_text().strip() if prompt_path.exists() else args.prompt
        masks = engine.segment(image, engine.make_prompt_set([prompt]), threshold=THRESHOLD).masks
        line = []
        row = {"image": path.name, "prompt": prompt, "has_depth": depth is not None}
        for mode in REFINE_MODES:
            i, f = scores(masks, image, depth, truth, RefineOptions(mode=mode))
            totals[mode].append((i, f))
            row[mode] = [round(i, 4), round(f, 4)]
            line.append(f"{mode} {i:.3f}/{f:.3f}")
        rows.append(row)
        print(f"{path.name} ('{prompt}'{', depth' if depth is not None else ''}): IoU/boundary F " + "  ".join(line))
    if totals["none"]:
        print("mean: " + "  ".join(f"{m} {statistics.mean(v[0] for v in totals[m]):.3f}/"
                                   f"{statistics.mean(v[1] for v in totals[m]):.3f}" for m in REFINE_MODES))
    return {"model": args.model, "threshold": THRESHOLD, "images": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a checkpoint with real weights (with --images)")
    parser.add_argument("--images", help="a folder of images with <stem>.mask.png ground truth")
    parser.add_argument("--prompt", default="object", help="prompt for images without <stem>.txt")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny random model for the model time (shares meaningless)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results to this path")
    args = parser.parse_args(argv)
    if args.model or args.images:
        if not (args.model and args.images):
            parser.error("--model and --images go together")
        write_results(args.json, real(args))
        return 0
    write_results(args.json, synthetic(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
