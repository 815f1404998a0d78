"""Cost of objects + 3D + clouds per frame, as a share of the model time, measured in one run.

    python benchmarks/bench_3d.py --json benchmarks/results/spatial_cpu.json

Model time: the engine's ``segment`` (preprocess, vision, decoder, post-processing) of one frame
with 8 prompts, random weights with the real rd64-refined architecture. 3D time: what the node
adds per frame with an aligned depth image: ``build_scene`` (objects of 8 prompts, a 3D position
per object, the masked cloud of all prompts and an obstacle cloud of 2, the clearing cloud of every valid depth point) and the 3D messages
(objects, markers, per-prompt positions, the three PointCloud2). The masks are synthetic, since the
cost depends on their shapes and random weights give none worth the name: per prompt 3 elliptic
objects of 1-6% of the image; depth is a plane with boxes. Median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, write_results  # noqa: E402

from clipseg_ros.core.results.geometry import PinholeCamera  # noqa: E402
from clipseg_ros.core.results.postprocess import SegmentationResult, label_from_masks, mask_stats  # noqa: E402
from clipseg_ros.core.results.scene import DepthFrame, SceneOptions, build_scene  # noqa: E402
from clipseg_ros.ros.messages import build_outputs  # noqa: E402

PROMPTS = ["cup", "saucer", "spoon", "table", "chair", "person", "door handle", "bottle"]


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def synthetic_result(h: int, w: int, seed: int = 0) -> SegmentationResult:
    rng = np.random.default_rng(seed)
    masks = np.zeros((len(PROMPTS), h, w), np.uint8)
    for k in range(len(PROMPTS)):
        for _ in range(3):
            axes = (int(w * rng.uniform(0.05, 0.15)), int(h * rng.uniform(0.05, 0.15)))
            centre = (int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h))
            cv2.ellipse(masks[k], centre, axes, 0, 0, 360, int(rng.integers(110, 250)), -1)
        masks[k] = cv2.GaussianBlur(masks[k], (0, 0), 3)
    thresholds = (0.4,) * len(PROMPTS)
    return SegmentationResult(prompts=PROMPTS, masks=masks, label=label_from_masks(masks, thresholds),
                              stats=mask_stats(masks, PROMPTS, [0.9] * len(PROMPTS), (h, w), thresholds),
                              threshold=0.4, image_size=(h, w), thresholds=thresholds)


def depth_frame(h: int, w: int) -> DepthFrame:
    metres = np.full((h, w), 2.0, np.float32)
    metres[h // 4:h // 2, w // 4:w // 2] = 1.0
    metres[::7, ::5] = np.nan  # some invalid pixels, as real depth has
    camera = PinholeCamera(0.8 * w, 0.8 * w, (w - 1) / 2, (h - 1) / 2, w, h)
    return DepthFrame(metres, camera, "camera_depth_optical_frame", (0, 0))


def measured_frames(engine, prompt_set, repeats: int):
    """Per size (640x480, 1280x720): (w, h, the random image, the model's ms on it, the
    synthetic result and depth frame of that size)."""
    for h, w in [(480, 640), (720, 1280)]:
        image = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
        model_ms = median_ms(lambda: engine.segment(image, prompt_set), repeats)
        yield w, h, image, model_ms, synthetic_result(h, w), depth_frame(h, w)


def arguments(doc: str, argv=None) -> argparse.Namespace:
    """The options of the per-frame cost scripts (this one and bench_consumers.py)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model (seconds; shares meaningless)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write results to this path")
    return parser.parse_args(argv)


def random_engine(folder: str, quick: bool):
    """(float32 CPU engine of a random checkpoint written to ``folder``, the PROMPTS' prompt set,
    the checkpoint's size name): the tiny model with ``quick``, else the rd64-refined architecture."""
    from clipseg_ros.core.model.engine import SegmentationEngine
    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    size = "tiny" if quick else "rd64-refined"
    print(f"building a random {size} checkpoint ...", flush=True)
    engine = SegmentationEngine.from_pretrained(str(make_random_checkpoint(folder, size=size)), device="cpu",
                                                dtype="float32")
    return engine, engine.make_prompt_set(PROMPTS), size


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    with tempfile.TemporaryDirectory(prefix="clipseg_bench3d_") as tmp:
        engine, prompt_set, size = random_engine(tmp, args.quick)
        options = SceneOptions(cloud=True, obstacle_prompts=("chair", "person"), cloud_stride=4, clearing_cloud=True)
        rows = []
        for w, h, image, model_ms, result, depth in measured_frames(engine, prompt_set, args.repeats):
            scene = build_scene(result, depth, options)
            scene_ms = median_ms(lambda: build_scene(result, depth, options), args.repeats)
            objects_ms = median_ms(lambda: build_scene(result, None, options), args.repeats)

            def messages():
                return build_outputs(result, image, None, options=_no_2d(), scene=scene)
            messages_ms = median_ms(messages, args.repeats)
            total = scene_ms + messages_ms
            row = {"size": f"{w}x{h}", "prompts": len(PROMPTS), "model_ms": round(model_ms, 1),
                   "objects_only_ms": round(objects_ms, 2), "scene_ms": round(scene_ms, 2),
                   "messages_3d_ms": round(messages_ms, 2), "added_ms": round(total, 2),
                   "share_of_model": round(total / model_ms, 4),
                   "objects": sum(len(p) for p in scene.objects), "cloud_points": len(scene.cloud),
                   "obstacle_points": len(scene.obstacle_cloud), "clearing_points": len(scene.clearing_cloud)}
            rows.append(row)
            print(f"{w}x{h}: model {model_ms:.0f} ms; objects {objects_ms:.1f} ms, objects+3D+clouds "
                  f"{scene_ms:.1f} ms, 3D messages {messages_ms:.1f} ms -> {100 * total / model_ms:.1f}% of the "
                  f"model ({row['objects']} objects, {row['cloud_points']} + {row['obstacle_points']} points)",
                  flush=True)
    write_results(args.json, {"cpu": cpu_name(), "threads": torch.get_num_threads(), "model": size, "rows": rows})
    return 0


def _no_2d():
    """Build only what the 3D step adds (segmentation/confidences stay: objects go into them)."""
    from clipseg_ros.ros.messages import OutputOptions

    return OutputOptions(include_masks=False, label=False, overlay=False)


if __name__ == "__main__":
    sys.exit(main())
