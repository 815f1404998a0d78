#!/usr/bin/env python3
"""Node benchmark: per-frame overhead of the ROS layer vs. model time, and end-to-end latency.

1. Overhead per frame at 640x480 and 1920x1080 with N prompts, in one process: conversion in
   (Image -> RGB), post-processing (masks, label, stats), message filling (the node's own
   ``scene.build_scene`` for the objects and ``messages.build_outputs``: segmentation with masks
   and objects, confidences, label, overlay drawing) and
   publishing with the node's ``OutputPublishers`` to a live subscriber, against the engine's
   model time (preprocess + vision + decoder) for the same frame.
2. End-to-end latency: the real node in a subprocess, a 30 Hz 640x480 camera, latency from the
   image's stamp (set at publish) to the segmentation's arrival, p50/p95 per time slice (it must
   not grow: the node always takes the newest frame and drops the rest).

    python benchmarks/bench_node.py              # full-size random rd64-refined (~3 min)
    python benchmarks/bench_node.py --quick      # tiny model, seconds
    python benchmarks/bench_node.py --json out.json
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from camera_run import NodeNeverAnswered, end_run, play, retrying  # noqa: E402
from results_file import cpu_name, write_results

from clipseg_ros.ros.spinner import BackgroundSpinner


def timed(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return out, statistics.median(times)


def overhead(model: str, prompts: int, repeats: int) -> list[dict]:
    import rclpy
    from rclpy.node import Node

    from clipseg_ros.core.model.engine import SegmentationEngine
    from clipseg_ros.core.results.scene import SceneOptions, build_scene
    from clipseg_ros.ros.conversions import cv2_to_imgmsg, imgmsg_to_rgb8
    from clipseg_ros.ros.messages import build_outputs
    from clipseg_ros.ros.outputs import OUTPUT_QOS, OutputPublishers

    engine = SegmentationEngine.from_pretrained(model, device="cpu", dtype="float32")
    prompt_set = engine.make_prompt_set([f"thing {k}" for k in range(prompts)])
    rclpy.init()
    pub_node, sub_node = Node("bench_pub"), Node("bench_sub")
    pubs = OutputPublishers(pub_node, "/bench/")  # what the node publishes with
    received = []
    for pub in pubs.all():
        sub_node.create_subscription(pub.msg_type, pub.topic_name, received.append, OUTPUT_QOS)
    spinner = BackgroundSpinner(sub_node)
    deadline = time.monotonic() + 10
    while any(p.get_subscription_count() == 0 for p in pubs.all()) and time.monotonic() < deadline:
        time.sleep(0.05)

    rows = []
    rng = np.random.default_rng(0)
    for w, h in [(640, 480), (1920, 1080)]:
        msg = cv2_to_imgmsg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "rgb8")
        rgb, convert_ms = timed(lambda: imgmsg_to_rgb8(msg), repeats)
        engine.segment(rgb, prompt_set)  # warm-up (position embedding cache, allocator)
        model_ms, post_ms = [], []
        for _ in range(repeats):
            r = engine.segment(rgb, prompt_set)
            model_ms.append(r.timings_ms["preprocess"] + r.timings_ms["vision"] + r.timings_ms["decoder"])
            post_ms.append(r.timings_ms["post"])

        # the node's defaults, objects included (a camera without depth)
        built, fill_ms = timed(lambda: build_outputs(r, rgb, msg.header, scene=build_scene(r, None, SceneOptions())),
                               repeats)
        _, publish_ms = timed(lambda: pubs.publish(built), repeats)
        model = statistics.median(model_ms)
        node_ms = convert_ms + statistics.median(post_ms) + fill_ms + publish_ms
        rows.append({"size": f"{w}x{h}", "prompts": prompts, "model_ms": round(model, 1),
                     "convert_ms": round(convert_ms, 2), "post_ms": round(statistics.median(post_ms), 2),
                     "fill_ms": round(fill_ms, 2), "publish_ms": round(publish_ms, 2),
                     "overhead_ms": round(node_ms, 1), "overhead_ratio": round(node_ms / model, 3)})
        print(f"{w}x{h}: model {model:.1f} ms, node overhead {node_ms:.1f} ms ({node_ms / model:.1%}): convert "
              f"{convert_ms:.1f}, post {statistics.median(post_ms):.1f}, fill {fill_ms:.1f}, "
              f"publish {publish_ms:.1f}", flush=True)
    spinner.stop()
    pub_node.destroy_node()
    sub_node.destroy_node()
    rclpy.shutdown()
    return rows


@retrying
def latency(model: str, prompts: int, seconds: float, camera_hz: float, dtype: str = "auto") -> dict:
    """Real node subprocess + 30 Hz camera; latency = arrival time - image stamp. Also the time
    from starting the process to its first output (the camera runs from the start)."""
    domain = str(random.randint(1, 100))
    env = dict(os.environ, ROS_DOMAIN_ID=domain, FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA", PYTHONUNBUFFERED="1")
    os.environ.update(ROS_DOMAIN_ID=domain, FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
    names = ", ".join(f"'thing {k}'" for k in range(prompts))
    # The node's log goes to a file: a pipe nobody reads would block the node once it is full.
    node_log = tempfile.NamedTemporaryFile("w", prefix="clipseg_bench_node_", suffix=".log", delete=False)
    node = subprocess.Popen([sys.executable, "-m", "clipseg_ros", "--ros-args", "-r", "__node:=clipseg",
                             "-p", f"model:={model}", "-p", f"prompts:=[{names}]", "-p", "rate:=0.0",
                             "-p", "image_topics:=[/bench/image]", "-p", "device:=cpu", "-p", f"dtype:={dtype}"],
                            env=env, stdout=node_log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    import rclpy
    from clipseg_ros_interfaces.msg import Segmentation
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from clipseg_ros.ros.conversions import cv2_to_imgmsg

    rclpy.init()
    cam = Node("bench_camera")
    pub = cam.create_publisher(Image, "/bench/image", qos_profile_sensor_data)
    arrivals: list[tuple[float, float]] = []  # (arrival, latency s)

    def on_seg(m):
        now = time.time()
        arrivals.append((now, now - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)))

    cam.create_subscription(Segmentation, "/clipseg/segmentation", on_seg, 10)
    spinner = BackgroundSpinner(cam)
    img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    msg = cv2_to_imgmsg(img, "rgb8")
    sent = 0
    try:
        deadline = time.monotonic() + 90
        while not arrivals:  # wait for the model to load and discovery to finish
            if node.poll() is not None:
                raise SystemExit(f"the node exited; its log: {node_log.name}")
            if time.monotonic() > deadline:
                raise NodeNeverAnswered(f"node did not produce output within 90 s; its log: {node_log.name}")
            msg.header.stamp = cam.get_clock().now().to_msg()
            pub.publish(msg)
            time.sleep(1 / camera_hz)
        first_output_s = time.monotonic() - started
        arrivals.clear()
        sent = play(pub, cam, [msg], seconds, camera_hz)
    finally:
        end_run(node, spinner, cam, rclpy)
    lat = [l * 1e3 for _, l in arrivals]
    thirds = [lat[i * len(lat) // 3:(i + 1) * len(lat) // 3] for i in range(3)]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    result = {"dtype": dtype, "seconds": seconds, "camera_hz": camera_hz, "first_output_s": round(first_output_s, 2),
              "frames_sent": sent, "outputs": len(lat),
              "output_hz": round(len(lat) / seconds, 2), "dropped_by_design": sent - len(lat),
              "latency_ms_p50": round(pct(lat, 50), 1), "latency_ms_p95": round(pct(lat, 95), 1),
              "latency_ms_p50_by_third": [round(pct(t, 50), 1) for t in thirds],
              "latency_ms_p95_by_third": [round(pct(t, 95), 1) for t in thirds]}
    print(f"latency: {len(lat)} outputs in {seconds:.0f} s ({result['output_hz']} Hz) from {sent} frames; "
          f"p50 {result['latency_ms_p50']} ms, p95 {result['latency_ms_p95']} ms; p50 by third "
          f"{result['latency_ms_p50_by_third']}", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, short run")
    parser.add_argument("--model", help="checkpoint directory (default: random rd64-refined)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0, help="latency run length (default 60, quick 5)")
    parser.add_argument("--dtype", default="float32", help="the node's dtype in the latency run (default float32, "
                                                           "as the overhead run's engine)")
    parser.add_argument("--json", help="write results to this path")
    args = parser.parse_args(argv)

    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    tmp = None
    model = args.model
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="clipseg_bench_")
        model = str(make_random_checkpoint(tmp.name, size="tiny" if args.quick else "rd64-refined"))
    repeats = 3 if args.quick else 5
    rows = overhead(model, args.prompts, repeats)
    lat = latency(model, args.prompts, args.seconds or (5.0 if args.quick else 60.0), 30.0, dtype=args.dtype)
    result = {"model": "random tiny" if args.quick else (args.model or "random rd64-refined"), "cpu": cpu_name(),
              "overhead": rows, "latency": lat}
    print()
    print("| input | prompts | model (ms) | node overhead (ms) | overhead / model | convert | post | fill | publish |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['prompts']} | {r['model_ms']} | {r['overhead_ms']} | {r['overhead_ratio']:.1%} | "
              f"{r['convert_ms']} | {r['post_ms']} | {r['fill_ms']} | {r['publish_ms']} |")
    write_results(args.json, result)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
