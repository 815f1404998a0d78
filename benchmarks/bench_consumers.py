"""Cost of the consumer outputs per frame (oriented boxes, vision_msgs detections, instance,
confidence and target images, the objects cloud and the pixel-aligned cloud), as a share of the
model time, measured in one run.

    python benchmarks/bench_consumers.py --json benchmarks/results/consumers_cpu.json

Model time: the engine's ``segment`` of one frame with 8 prompts (random weights with the real
rd64-refined architecture). The consumer outputs' time is measured as differences on the same
frame: ``build_scene`` with oriented boxes minus with axis-aligned ones (what the boxes add), and
``build_outputs`` with every consumer output on minus with them off (the images, the detections,
the clouds and their messages; publishing not included). Masks and depth are bench_3d.py's
synthetic ones (3 objects per prompt; a plane with a box). Median of ``--repeats`` runs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_3d import PROMPTS, arguments, measured_frames, median_ms, random_engine  # noqa: E402
from results_file import cpu_name, write_results  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from clipseg_ros.core.results import geometry  # noqa: E402
from clipseg_ros.core.results.boxes import axis_aligned_box  # noqa: E402
from clipseg_ros.core.results.scene import SceneOptions, build_scene  # noqa: E402
from clipseg_ros.ros import vision_messages  # noqa: E402
from clipseg_ros.ros.messages import OutputOptions, build_outputs  # noqa: E402

CONSUMERS = dict(detections=True, confidence=True, instances=True, target_prompt="cup", objects_cloud=True,
                 aligned_cloud=True, cloud_stride=4)


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    if vision_messages.UNAVAILABLE:
        print(f"bench_consumers: {vision_messages.UNAVAILABLE}; the detections are not measured", flush=True)

    base = OutputOptions(include_masks=True, label=True, overlay=False)
    full = OutputOptions(include_masks=True, label=True, overlay=False, **CONSUMERS)
    with tempfile.TemporaryDirectory(prefix="clipseg_benchcons_") as tmp:
        engine, prompt_set, size = random_engine(tmp, args.quick)
        options = SceneOptions(cloud_stride=4)
        rows = []
        for w, h, image, model_ms, result, depth in measured_frames(engine, prompt_set, args.repeats):
            scene = build_scene(result, depth, options)
            with_boxes = median_ms(lambda: build_scene(result, depth, options), args.repeats)
            with mock.patch.object(geometry, "fit_oriented_box",
                                   lambda points, normals, outline=None: axis_aligned_box(points)):
                without_boxes = median_ms(lambda: build_scene(result, depth, options), args.repeats)
            header = Header(frame_id="camera")
            plain = median_ms(lambda: build_outputs(result, image, header, base, scene), args.repeats)
            consumers = median_ms(lambda: build_outputs(result, image, header, full, scene), args.repeats)
            out = build_outputs(result, image, header, full, scene)
            boxes_ms, outputs_ms = max(0.0, with_boxes - without_boxes), max(0.0, consumers - plain)
            total = boxes_ms + outputs_ms
            row = {"size": f"{w}x{h}", "prompts": len(PROMPTS), "model_ms": round(model_ms, 1),
                   "boxes_ms": round(boxes_ms, 2), "outputs_ms": round(outputs_ms, 2), "added_ms": round(total, 2),
                   "share_of_model": round(total / model_ms, 4), "objects": sum(len(p) for p in scene.objects),
                   "detections": len(out.detections.detections) if out.detections is not None else None,
                   "objects_cloud_points": out.objects_cloud.width, "aligned_cloud_points":
                       out.aligned_cloud.width * out.aligned_cloud.height}
            rows.append(row)
            print(f"{w}x{h}: model {model_ms:.0f} ms; oriented boxes {boxes_ms:.1f} ms, consumer outputs "
                  f"{outputs_ms:.1f} ms -> {100 * total / model_ms:.1f}% of the model ({row['objects']} objects)",
                  flush=True)
    write_results(args.json, {"cpu": cpu_name(), "threads": torch.get_num_threads(), "model": size,
                              "vision_msgs": not vision_messages.UNAVAILABLE, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
