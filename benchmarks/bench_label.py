"""The labeller vs the live node on the same frames: frames per second. One run, one machine.

    python benchmarks/bench_label.py --json benchmarks/results/label_cpu.json

200 frames of 640x480 (a camera panning over scikit-image's coffee photo, back and forth), 8 prompts, random
weights with the real rd64-refined architecture (speed does not depend on weight values), the
same ``--dtype`` for both (default auto):

1. the live node (a separate process, rate 0): each frame is published on its image topic and
   the next one only after the node's output for it came back, so it segments all 200;
   frames/s = 200 / the time from the first publish to the last output;
2. ``clipseg-label`` on the same frames as a folder of PNGs, with ``--batch 1`` and
   ``--batch 4``: the frames/s it reports (its labelling loop: reading, segmenting, writing
   labels, records and objects), and its wall time including start-up and the COCO export.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from camera_run import NodeNeverAnswered, end_run, retrying, start_node  # noqa: E402
from results_file import cpu_name, write_results  # noqa: E402

from clipseg_ros.tools.synthetic_motion import panning_camera, sample_picture  # noqa: E402

H, W = 480, 640
PROMPTS = [f"thing {k}" for k in range(8)]


def frames(count: int):
    pan = panning_camera(sample_picture(H, W))
    return [pan[t % len(pan)] for t in range(count)]


@retrying
def live_node(model: str, images, dtype: str) -> dict:
    node, log = start_node(model, PROMPTS, "clipseg_bench_label_", rate=0.0, dtype=dtype)
    import threading

    import rclpy
    from clipseg_ros_interfaces.msg import Confidences
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from clipseg_ros.ros.conversions import cv2_to_imgmsg
    from clipseg_ros.ros.spinner import BackgroundSpinner

    rclpy.init()
    cam = Node("bench_label_camera")
    pub = cam.create_publisher(Image, "/bench/image", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    done = threading.Event()
    answered: set[int] = set()

    def on_output(msg):
        answered.add(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        done.set()

    cam.create_subscription(Confidences, "/clipseg/confidences", on_output, 10)
    spinner = BackgroundSpinner(cam)
    messages = [cv2_to_imgmsg(f, "rgb8") for f in images]
    try:
        # warm-up: until the node answers at all (model load, first frame)
        deadline = time.monotonic() + 90
        warm = messages[0]
        k = 0
        while not answered:
            if node.poll() is not None:
                raise SystemExit(f"the node exited; its log: {log}")
            if time.monotonic() > deadline:
                raise NodeNeverAnswered(f"node produced no output in 90 s; its log: {log}")
            warm.header.stamp.sec, warm.header.stamp.nanosec = 1, k
            pub.publish(warm)
            k += 1
            done.wait(1.0)
        start = time.monotonic()
        for i, msg in enumerate(messages):
            stamp = 10 * 1_000_000_000 + i
            msg.header.stamp.sec, msg.header.stamp.nanosec = 10, i
            done.clear()
            sent_at = time.monotonic()
            pub.publish(msg)
            while stamp not in answered:
                if not done.wait(1.0) and time.monotonic() - sent_at > 5.0:
                    pub.publish(msg)  # lost on the way: send it again
                    sent_at = time.monotonic()
                done.clear()
        seconds = time.monotonic() - start
    finally:
        end_run(node, spinner, cam, rclpy)
    row = {"frames": len(messages), "seconds": round(seconds, 2), "frames_per_s": round(len(messages) / seconds, 3)}
    print(f"live node: {row}", flush=True)
    return row


def labeller(model: str, folder: Path, out: Path, batch: int, dtype: str) -> dict:
    cmd = [sys.executable, "-m", "clipseg_ros.tools.label", str(folder), "-o", str(out), "--prompts", ";".join(PROMPTS),
           "--model", model, "--batch", str(batch), "--dtype", dtype, "--no-progress"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.monotonic() - t0
    m = re.search(r"(\d+) frames labelled in ([\d.]+) s \(([\d.]+) frames/s\)", done.stdout)
    row = {"batch": batch, "frames": int(m.group(1)), "loop_seconds": float(m.group(2)),
           "frames_per_s": float(m.group(3)), "wall_seconds_with_startup": round(wall, 2)}
    print(f"labeller: {row}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", default="rd64-refined", help="random checkpoint size (tiny for a quick check)")
    parser.add_argument("--dtype", default="auto", help="for both the node and the labeller (default auto)")
    parser.add_argument("--json", help="write results to this path")
    args = parser.parse_args(argv)
    import torch

    from clipseg_ros.core.model.precision import choose_precision
    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    images = frames(args.frames)
    with tempfile.TemporaryDirectory(prefix="clipseg_bench_label_") as tmp:
        tmp = Path(tmp)
        model = str(make_random_checkpoint(tmp / "model", size=args.size))
        folder = tmp / "frames"
        folder.mkdir()
        for i, f in enumerate(images):
            cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        node = live_node(model, images, args.dtype)
        rows = [labeller(model, folder, tmp / f"out{b}", b, args.dtype) for b in (1, 4)]
    for r in rows:
        r["vs_live_node"] = round(r["frames_per_s"] / node["frames_per_s"], 2)
    write_results(args.json, {"cpu": cpu_name(), "model": args.size, "image": f"{W}x{H}", "prompts": len(PROMPTS),
                              "precision": choose_precision(args.dtype, torch.device("cpu")).describe(),
                              "live_node": node, "labeller": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
