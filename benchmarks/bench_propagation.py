"""Camera-rate masks: how well propagation follows motion, what it costs, whether it slows the
model, and how much smoothing reduces flicker. One run, one machine.

    python benchmarks/bench_propagation.py --json benchmarks/results/propagation_cpu.json

1. IoU of propagated vs true masks on synthetic motion with exact ground truth: a real photo
   (scikit-image's coffee) at 640x480 and an elliptic object mask, moved per frame by a known
   shift (5 and 15 px/frame), rotation or zoom; IoU after 5, 15 and 30 frames (the node's
   default flow: DIS "fast" on 320 px wide grey frames). Then the same shifts with the model's
   result 6 frames late (the model saw frame 0; frames 1-6 were shown, carried from an earlier
   model frame, before its result came): IoU after 7, 15 and 30 frames since the model frame.
2. Cost per propagated frame at 640x480 with 8 prompts: the node's path (carry the masks, label,
   stats, objects, tracks, all output messages with the overlay).
3. The real node under a 30 Hz 640x480 camera panning over the photo, random rd64-refined
   weights, 8 prompts, dtype auto: model outputs and propagated outputs per second, with
   propagation off and on, at rate 0 (the model as fast as it goes: no spare CPU time on 2
   cores) at propagate_rate 5 and 15 Hz with the default propagation_budget (0.1) and at 15 Hz
   with no budget (1.0); then off and on (15 Hz) at rate 1 Hz (the model throttled below what
   the CPU can do, leaving spare time).
4. Flicker on a static scene (the photo plus sensor noise, sigma 2 grey levels): the share of
   mask pixels (in either of two consecutive frames' thresholded masks) that change, with the
   engine alone and with smoothing 0.5, over 12 model frames.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from camera_run import NodeNeverAnswered, end_run, play, retrying, start_node  # noqa: E402
from results_file import cpu_name, write_results  # noqa: E402

from clipseg_ros.core.motion.propagation import FlowOptions, MaskPropagator, TemporalSmoother  # noqa: E402
from clipseg_ros.core.motion.temporal import CameraTimeline, TemporalOptions  # noqa: E402
from clipseg_ros.core.prompts.prompt_book import PromptSet  # noqa: E402
from clipseg_ros.core.results.postprocess import result_from_masks  # noqa: E402
from clipseg_ros.core.results.scene import SceneOptions, build_scene  # noqa: E402
from clipseg_ros.ros.messages import build_outputs  # noqa: E402
from clipseg_ros.ros.spinner import BackgroundSpinner  # noqa: E402
from clipseg_ros.tools.synthetic_motion import iou, moving_scene, panning_camera, sample_picture  # noqa: E402

H, W = 480, 640
PROMPTS = [f"thing {k}" for k in range(8)]


def object_mask(centre=(200, 240)) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    cv2.ellipse(m, centre, (90, 70), 15, 0, 360, 255, -1)
    return m


def motion_ious(picture) -> list[dict]:
    cases = [("shift 5 px/frame", dict(shift=(5.0, 0.0)), (140, 240)),
             ("shift 15 px/frame", dict(shift=(15.0, 0.0)), (110, 240)),
             ("rotation 1 deg/frame", dict(rotation_deg=1.0), (320, 200)),
             ("zoom 1%/frame", dict(zoom=1.01), (300, 220))]
    rows = []
    for name, move, centre in cases:
        mask = object_mask(centre)
        scene = list(moving_scene(picture, mask, 30, **move))
        propagator = MaskPropagator(FlowOptions())
        key = object()
        propagator.reset(scene[0][0], mask[None], key, 0.0)
        ious = [iou(propagator.propagate(frame, key, float(t)).masks[0], true)
                for t, (frame, true) in enumerate(scene[1:], start=1)]
        in_view = [float((true > 0).mean()) for _, true in scene[1:]]
        rows.append({"motion": name, "iou_after_5": round(ious[4], 3), "iou_after_15": round(ious[14], 3),
                     "iou_after_30": round(ious[29], 3), "object_share_of_frame_at_30": round(in_view[29], 3)})
        print(f"{name}: IoU after 5/15/30 frames {ious[4]:.3f} / {ious[14]:.3f} / {ious[29]:.3f}", flush=True)
    for name, move, centre in cases[:2]:
        mask = object_mask(centre)
        scene = list(moving_scene(picture, mask, 30, **move))
        propagator = MaskPropagator(FlowOptions())
        key = object()
        propagator.reset(scene[0][0], scene[0][1][None], key, -1.0)  # an earlier model frame
        for t in range(1, 7):  # shown while the model works on frame 0
            propagator.propagate(scene[t][0], key, float(t))
        propagator.reset(scene[0][0], scene[0][1][None], key, 0.0)  # its result, 6 frames late
        ious = {t: iou(propagator.propagate(scene[t][0], key, float(t)).masks[0], scene[t][1])
                for t in range(7, 31)}
        rows.append({"motion": f"{name}, model result 6 frames late", "iou_after_7": round(ious[7], 3),
                     "iou_after_15": round(ious[15], 3), "iou_after_30": round(ious[30], 3)})
        print(f"{name}, result 6 frames late: IoU after 7/15/30 frames {ious[7]:.3f} / {ious[15]:.3f} / "
              f"{ious[30]:.3f}", flush=True)
    return rows


def propagation_cost(picture, repeats: int = 30) -> dict:
    """ms per propagated frame, the node's path, 8 prompts at 640x480."""
    from clipseg_ros.core.results.postprocess import SegmentationResult, label_from_masks, mask_stats

    rng = np.random.default_rng(0)
    masks = np.stack([cv2.GaussianBlur((rng.random((H, W)) * 255).astype(np.uint8), (0, 0), 25) for _ in PROMPTS])
    masks = cv2.normalize(masks, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    thresholds = (0.4,) * len(PROMPTS)
    result = SegmentationResult(prompts=PROMPTS, masks=masks, label=label_from_masks(masks, thresholds),
                                stats=mask_stats(masks, PROMPTS, [0.9] * 8, (H, W), thresholds), threshold=0.4,
                                image_size=(H, W), thresholds=thresholds)
    frames = [f for f, _ in moving_scene(picture, object_mask(), repeats + 1, shift=(3.0, 1.0))]
    timeline = CameraTimeline(TemporalOptions(propagate=True, max_model_age=1e9))
    key = PromptSet(names=tuple(PROMPTS), embeddings=torch.zeros(len(PROMPTS), 4))
    timeline.model_frame(frames[0], result, key, 0.0)
    stages = {"carry": [], "scene+tracks": [], "messages": []}
    for t, frame in enumerate(frames[1:], start=1):
        t0 = time.perf_counter()
        carried, _ = timeline.propagate(frame, key, float(t), thresholds)
        t1 = time.perf_counter()
        scene = timeline.track(build_scene(carried, None, SceneOptions()), (H, W), key)
        t2 = time.perf_counter()
        build_outputs(carried, frame, None, scene=scene)
        t3 = time.perf_counter()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
            stages[name].append(dt * 1e3)
    row = {f"{k}_ms": round(statistics.median(v), 2) for k, v in stages.items()}
    row["total_ms"] = round(sum(row.values()), 2)
    row["max_hz_one_core"] = round(1000.0 / row["total_ms"], 1)
    print(f"cost per propagated frame (8 prompts, 640x480): {row}", flush=True)
    return row


@retrying
def node_rates(model: str, picture, propagate: bool, seconds: float, camera_hz: float = 30.0,
                    propagate_rate: float = 15.0, model_rate: float = 0.0, budget: float = 0.1) -> dict:
    """The real node: model and propagated outputs per second under a panning 30 Hz camera."""
    # One ROS context and domain for all runs of this process (a fresh context per run lost
    # discovery with the third node now and then); the node processes run one after another.
    node, log = start_node(model, PROMPTS, "clipseg_bench_prop_", rate=model_rate, propagate=propagate,
                           propagate_rate=propagate_rate, propagation_budget=budget)
    import rclpy
    from clipseg_ros_interfaces.msg import Confidences
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from clipseg_ros.ros.conversions import cv2_to_imgmsg

    messages = [cv2_to_imgmsg(f, "rgb8") for f in panning_camera(picture)]
    if not rclpy.ok():
        rclpy.init()
    cam = Node(f"bench_camera_{'on' if propagate else 'off'}_{int(propagate_rate)}_{int(model_rate * 10)}_"
               f"{int(budget * 100)}")
    pub = cam.create_publisher(Image, "/bench/image", qos_profile_sensor_data)
    outputs: list[tuple[float, bool, float]] = []  # arrival, propagated, the stamp of its model frame

    def received(m):
        stamp = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
        outputs.append((time.monotonic(), m.propagated, round(stamp - m.model_frame_age, 3)))
    # the light topic: a subscriber decoding 8 masks per output would take CPU from the node here
    cam.create_subscription(Confidences, "/clipseg/confidences", received, 10)
    spinner = BackgroundSpinner(cam)
    k = 0
    try:
        deadline = time.monotonic() + 90
        while not outputs:
            if node.poll() is not None:
                raise SystemExit(f"the node exited; its log: {log}")
            if time.monotonic() > deadline:
                raise NodeNeverAnswered(f"node produced no output in 90 s; its log: {log}")
            msg = messages[k % len(messages)]
            msg.header.stamp = cam.get_clock().now().to_msg()
            pub.publish(msg)
            k += 1
            time.sleep(1 / camera_hz)
        time.sleep(3.0)  # the measurement starts after warm-up
        outputs.clear()
        play(pub, cam, messages, seconds, camera_hz, start=k)
    finally:
        end_run(node, spinner, cam)
    # A model result overtaken during its inference by newer propagated frames is not published
    # itself but carried to the newest frame: count the model frames whose masks reached the
    # subscriber, whichever way.
    model_n = len({source for _, _, source in outputs})
    direct_n = sum(1 for _, p, _ in outputs if not p)
    carried_n = sum(1 for _, p, _ in outputs if p)
    row = {"rate": model_rate, "propagate": propagate, "propagate_rate": propagate_rate if propagate else 0.0,
           "propagation_budget": budget if propagate else None, "seconds": seconds,
           "model_hz": round(model_n / seconds, 3), "model_outputs_hz": round(direct_n / seconds, 3),
           "propagated_hz": round(carried_n / seconds, 2), "outputs_hz": round(len(outputs) / seconds, 2)}
    print(f"node, propagate={propagate}: {row}", flush=True)
    return row


def flicker(model: str, picture, frames: int = 12) -> dict:
    from clipseg_ros.core.model.engine import SegmentationEngine

    engine = SegmentationEngine.from_pretrained(model, device="cpu", dtype="float32")
    prompt_set = engine.make_prompt_set(PROMPTS)
    smoother = TemporalSmoother(0.5)
    rng = np.random.default_rng(0)
    key = object()
    raw, smooth = [], []
    for _ in range(frames):
        noisy = np.clip(picture.astype(np.int16) + rng.normal(0, 2, picture.shape).round().astype(np.int16),
                        0, 255).astype(np.uint8)
        result = engine.segment(noisy, prompt_set)
        raw.append(result.masks)
        smooth.append(result_from_masks(smoother.update(noisy, result.masks, key), result).masks)

    def share_changing(seq):
        level = 102  # threshold 0.4
        changed = either = 0
        for a, b in zip(seq, seq[1:]):
            a, b = a >= level, b >= level
            changed += int((a != b).sum())
            either += int((a | b).sum())
        return changed / either if either else 0.0
    row = {"frames": frames, "flicker_raw": round(share_changing(raw), 5),
           "flicker_smoothed": round(share_changing(smooth), 5)}
    print(f"flicker on a static scene: {row}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model, short node runs")
    parser.add_argument("--seconds", type=float, default=0, help="node run per setting (default 30, quick 8)")
    parser.add_argument("--json", help="write results to this path")
    args = parser.parse_args(argv)
    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    picture = sample_picture(H, W)
    result = {"cpu": cpu_name(), "motion": motion_ious(picture), "cost_640x480_8_prompts": propagation_cost(picture)}
    with tempfile.TemporaryDirectory(prefix="clipseg_bench_prop_") as tmp:
        size = "tiny" if args.quick else "rd64-refined"
        model = str(make_random_checkpoint(tmp, size=size))
        seconds = args.seconds or (8.0 if args.quick else 30.0)

        def ratio(on, off):
            on["model_rate_ratio"] = round(on["model_hz"] / off["model_hz"], 3) if off["model_hz"] else None
            print(f"rate {on['rate']:g}, propagate_rate {on['propagate_rate']:g}, budget {on['propagation_budget']}: "
                  f"model rate with / without propagation {on['model_rate_ratio']}", flush=True)
            return on

        # The model as fast as it goes (rate 0): no spare CPU time on 2 cores; propagation at
        # 5 Hz, at 15 Hz within the default budget, and at 15 Hz with no budget (1 core).
        off = node_rates(model, picture, False, seconds)
        rows = [off] + [ratio(node_rates(model, picture, True, seconds, propagate_rate=r, budget=b), off)
                        for r, b in ((5.0, 0.1), (15.0, 0.1), (15.0, 1.0))]
        # The model throttled below what the CPU can do (rate 1 Hz): the rest of each second is
        # the spare time propagation is meant to use.
        throttled_off = node_rates(model, picture, False, seconds, model_rate=1.0)
        rows += [throttled_off, ratio(node_rates(model, picture, True, seconds, propagate_rate=15.0, model_rate=1.0),
                                      throttled_off)]
        import rclpy

        if rclpy.ok():
            rclpy.shutdown()
        result["node"] = {"model": size, "camera_hz": 30.0, "rows": rows}
        result["flicker"] = flicker(model, picture)
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
