#!/usr/bin/env python3
"""Do reduced precisions give the same masks as float32 with YOUR checkpoint on YOUR images?

    python benchmarks/agreement.py --model /opt/models/clipseg --images ~/robot_frames \\
        --prompts "cup;door handle;person" [--dtypes bfloat16,int8,float16] [--threshold 0.4] [--json out.json]

Segments every image (a folder, recursively; or one file) with float32 and with each precision,
and prints per precision: mask pixel agreement at the threshold (each prompt thresholded, all
pixels of all images and prompts; and the worst single image-and-prompt), the worst IoU of one
image-and-prompt's thresholded masks, the reference's objects the precision lost, and the largest
probability difference. The goal: >= 99% agreement, every IoU >= 0.8 and no object lost (pixel
agreement alone cannot see a small object vanish); where a precision fails it, set the node's
``dtype`` to float32 (or a precision that passes). The test suite runs the same comparison on random weights,
which is only a proxy: this script is the check that counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--images", required=True, help="a folder of images (recursively) or one image")
    parser.add_argument("--prompts", default="cup;door handle;person;floor;table;chair;bottle;box",
                        help="prompts separated by ';'")
    parser.add_argument("--dtypes", default="", help="precisions to compare (default: bfloat16, int8 where "
                                                     "torchao is installed, and float16 on CUDA)")
    parser.add_argument("--threshold", type=float, default=0.4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=50, help="at most this many images (default 50)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    from clipseg_ros.core.model.agreement import GOAL, IOU_GOAL, measure_agreement
    from clipseg_ros.core.model.engine import SegmentationEngine
    from clipseg_ros.core.model.precision import torchao_available
    from clipseg_ros.core.prompts.prompt_book import parse_prompt_text
    from clipseg_ros.tools.label_sources import LabelInputError, Selection, open_source

    try:
        source = open_source(args.images, selection=Selection(limit=args.limit))
    except LabelInputError as exc:
        print(f"agreement: {exc}", file=sys.stderr)
        return 2
    frames = [f for f in source if f.rgb is not None]
    if not frames:
        print(f"agreement: no readable image in {args.images}", file=sys.stderr)
        return 2
    prompts = parse_prompt_text(args.prompts)
    reference = SegmentationEngine.from_pretrained(args.model, device=args.device, dtype="float32")
    on_cuda = reference.device.type == "cuda"
    names = [d.strip() for d in args.dtypes.split(",") if d.strip()] or (
        ["bfloat16"] + (["int8"] if torchao_available() else []) + (["float16"] if on_cuda else []))
    rows = []
    print(f"{len(frames)} images, {len(prompts)} prompts, threshold {args.threshold:g}, on {reference.device}")
    print("| precision | mask agreement | worst image-and-prompt | worst IoU | objects lost | max probability "
          "difference | meets the goal |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        engine = SegmentationEngine.from_pretrained(args.model, device=args.device, dtype=name)
        a = measure_agreement(reference, engine, [f.rgb for f in frames], prompts, args.threshold)
        rows.append({"precision": engine.precision.describe(), "mask_agreement": a.mask_agreement,
                     "worst_mask_agreement": a.worst_mask_agreement,
                     "max_probability_difference": a.max_probability_difference, "worst_iou": a.worst_iou,
                     "objects": a.objects, "lost_objects": a.lost_objects, "meets_goal": a.meets_goal})
        print(f"| {name} | {a.mask_agreement:.4%} | {a.worst_mask_agreement:.4%} | {a.worst_iou:.3f} | "
              f"{a.lost_objects} of {a.objects} | {a.max_probability_difference:.3f} | "
              f"{'yes' if a.meets_goal else 'NO'} |", flush=True)
        del engine
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "images": len(frames), "prompts": prompts,
                                               "threshold": args.threshold, "goal": GOAL, "iou_goal": IOU_GOAL,
                                               "results": rows}, indent=1))
    return 0 if all(r["meets_goal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
