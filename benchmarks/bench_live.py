#!/usr/bin/env python3
"""The node under a live camera on the robot's own CPU: what #23 asks, in one run on one machine.

    python benchmarks/bench_live.py --json benchmarks/results/live_cpu.json   # full size (~15 min)
    python benchmarks/bench_live.py --quick                                    # tiny model, ~2 min

Random weights in the real rd64-refined architecture (speed does not depend on weights), a
640x480 photo, ``dtype auto``, and N = 1, 4, 8 prompts. In one run:

1. The Hugging Face blog usage (processor + forward, float32) at N = 1, 4, 8, and the engine's
   ms per stage (preprocess, vision, decoder, post) with what ``auto`` picks.
2. The real node (a separate process, rate 0), once with ``pipeline`` true and once false. For
   each N (prompts set by parameter, as a user would):
   - end to end: one frame at a time, published and waited for (publish -> segmentation
     received), the model otherwise idle;
   - under a 30 Hz camera publishing from this process on the same cores: outputs per second,
     latency (stamp -> received) p50/p95, the CPU each of the node's threads used (cores, read
     from /proc: the threads are named), and the node's own report of its model and outputs
     threads (/diagnostics).
3. The first start: a node started with the 30 Hz camera already running, with an empty graph
   cache and with one filled by ``clipseg-prepare``: time to the first output, and outputs in
   the first 30 s after it. Where ``auto`` uses no exported graph on this CPU, this runs with
   ``dtype int8`` (the precision that has one), and says so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import sample_image  # noqa: E402
from bench_precision import PROMPTS, blog_usage_ms, stage_times  # noqa: E402
from camera_run import NodeNeverAnswered, isolate_dds, play, start_node  # noqa: E402
from results_file import cpu_name, write_results  # noqa: E402

from clipseg_ros.tools.child_node import interrupt  # noqa: E402

PROMPT_COUNTS = (1, 4, 8)
CAMERA_HZ = 30.0


def thread_cpu(pid: int) -> dict[int, tuple[str, float, int]]:
    """{tid: (name, CPU seconds, minor page faults)} of every thread of process ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick, int(fields[7]))
    return out


def cores_by_thread(pid: int, before: dict, after: dict, seconds: float) -> dict[str, float]:
    """Cores used per thread name over a window (the main thread, which spins the executor, as
    'executor'; threads with one name together)."""
    used: dict[str, float] = {}
    for tid, (name, cpu, _) in after.items():
        label = "executor" if tid == pid else name
        used[label] = used.get(label, 0.0) + cpu - before.get(tid, (name, 0.0, 0))[1]
    return {k: round(v / seconds, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v / seconds >= 0.005}


def faults_per_output(before: dict, after: dict, outputs: int) -> dict[str, float]:
    """Minor page faults per output of the node's own threads (``clipseg_*``) over a window: the
    memory a frame maps in afresh (0 when its buffers stay mapped)."""
    faults: dict[str, int] = {}
    for tid, (name, _, count) in after.items():
        if name.startswith("clipseg_"):
            faults[name] = faults.get(name, 0) + count - before.get(tid, (name, 0.0, 0))[2]
    return {k: round(v / max(1, outputs)) for k, v in sorted(faults.items())}


class Bench:
    """This process's side: a camera publisher, the node's segmentation and diagnostics."""

    def __init__(self):
        import rclpy
        from clipseg_ros_interfaces.msg import Segmentation
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.node import Node
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from clipseg_ros.ros.conversions import cv2_to_imgmsg
        from clipseg_ros.ros.spinner import BackgroundSpinner

        rclpy.init()
        self.rclpy = rclpy
        self.node = Node("bench_live")
        self.pub = self.node.create_publisher(Image, "/bench/image", qos_profile_sensor_data)
        self.arrivals: list[tuple[float, float, int]] = []  # (arrival wall s, latency s, prompts)
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.node.create_subscription(Segmentation, "/clipseg/segmentation", self._on_seg, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.spinner = BackgroundSpinner(self.node)
        self.msg = cv2_to_imgmsg(sample_image(), "rgb8")

    def _on_seg(self, m) -> None:
        now = time.time()
        self.arrivals.append((now, now - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9), len(m.prompts)))

    def _on_diag(self, m) -> None:
        for status in m.status:
            self.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

    def stamp_and_publish(self) -> float:
        self.msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pub.publish(self.msg)
        return self.msg.header.stamp.sec + self.msg.header.stamp.nanosec * 1e-9

    def wait_for_output(self, node: subprocess.Popen, log: str, timeout: float, prompts: int | None = None) -> float:
        """Publish at 30 Hz until an output (with ``prompts`` prompts) arrives; seconds waited."""
        started = time.monotonic()
        self.arrivals.clear()
        while not any(prompts is None or n == prompts for _, _, n in self.arrivals):
            if node.poll() is not None:
                raise SystemExit(f"the node exited; its log: {log}")
            if time.monotonic() - started > timeout:
                raise NodeNeverAnswered(f"no output within {timeout:g} s; the node's log: {log}")
            self.stamp_and_publish()
            time.sleep(1 / CAMERA_HZ)
        return time.monotonic() - started

    def set_prompts(self, prompts: list[str]) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        client = self.node.create_client(SetParameters, "/clipseg/set_parameters")
        if not client.wait_for_service(timeout_sec=30):
            raise NodeNeverAnswered("the node's parameter service never appeared")
        future = client.call_async(SetParameters.Request(
            parameters=[Parameter("prompts", value=prompts).to_parameter_msg()]))
        deadline = time.monotonic() + 30
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not future.done() or not future.result().results[0].successful:
            raise SystemExit(f"setting the prompts failed: {future.result() if future.done() else 'no reply'}")
        self.node.destroy_client(client)

    def end_to_end_ms(self, frames: int, timeout: float = 60.0) -> list[float]:
        """One frame at a time: publish, wait for the segmentation of that stamp."""
        times = []
        for _ in range(frames):
            self.arrivals.clear()
            sent_at = time.time()
            stamp = self.stamp_and_publish()
            deadline = time.monotonic() + timeout
            while not any(abs((a - lat) - stamp) < 1e-6 for a, lat, _ in self.arrivals):
                if time.monotonic() > deadline:
                    raise NodeNeverAnswered(f"no output of a frame within {timeout:g} s")
                time.sleep(0.002)
            arrival = next(a for a, lat, _ in self.arrivals if abs((a - lat) - stamp) < 1e-6)
            times.append((arrival - sent_at) * 1e3)
        return times

    def close(self) -> None:
        self.spinner.stop()
        self.node.destroy_node()
        self.rclpy.shutdown()


def node_variants_setup(quick: bool, prefix: str) -> tuple[tempfile.TemporaryDirectory, str, dict]:
    """For scripts that run the node in several variants: this process on a random ROS domain with
    LARGE_DATA, a random checkpoint (tiny with ``quick``) in a temporary folder with auto's graph
    cache filled first (when auto uses one, so that every variant starts alike); (the folder, the
    checkpoint, the result's header)."""
    isolate_dds()
    from clipseg_ros.core.model.engine import SegmentationEngine
    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    model = str(make_random_checkpoint(tmp.name, size="tiny" if quick else "rd64-refined"))
    auto = SegmentationEngine.from_pretrained(model, device="cpu", dtype="auto", export_in_background=False)
    header = {"cpu": cpu_name(), "cores": os.cpu_count(), "model": "random tiny" if quick else "random rd64-refined",
              "auto": auto.precision.describe()}
    return tmp, model, header


def pct(values, q):
    return round(float(np.percentile(values, q)), 1) if values else None


def camera_window(bench: Bench, pid: int, seconds: float) -> dict:
    """The 30 Hz camera for ``seconds``: rate, latency, CPU per thread, the node's thread report."""
    bench.arrivals.clear()
    before, t0 = thread_cpu(pid), time.monotonic()
    sent = play(bench.pub, bench.node, [bench.msg], seconds, CAMERA_HZ)
    wall = time.monotonic() - t0
    after = thread_cpu(pid)
    lat = [lat * 1e3 for _, lat, _ in bench.arrivals]
    model = bench.diagnostics.get("clipseg: model", {})
    return {"frames_sent": sent, "outputs": len(lat), "outputs_per_s": round(len(lat) / wall, 2),
            "latency_ms_p50": pct(lat, 50), "latency_ms_p95": pct(lat, 95),
            "cores_by_thread": cores_by_thread(pid, before, after, wall),
            "page_faults_per_output": faults_per_output(before, after, len(lat)),
            "model_thread": model.get("model thread"), "outputs_thread": model.get("outputs thread")}


def started_node(bench: Bench, model: str, prompts, prefix: str, attempts: int = 3, **params):
    """A node process whose outputs reach this one: DDS discovery between two processes fails now
    and then on these machines (a new node fixes it). (process, log, seconds to its first output)."""
    for attempt in range(attempts):
        started = time.monotonic()
        node, log = start_node(model, prompts, prefix, **params)
        try:
            bench.wait_for_output(node, log, 120)
            return node, log, time.monotonic() - started
        except NodeNeverAnswered as exc:
            print(f"{exc}: starting a new node", flush=True)
            interrupt(node, 15)
    raise NodeNeverAnswered(f"no node answered in {attempts} attempts")


def node_runs(bench: Bench, model: str, pipeline: bool, seconds: float, e2e_frames: int,
              counts=PROMPT_COUNTS, **params) -> list[dict]:
    node, log, _ = started_node(bench, model, PROMPTS[:1], "clipseg_bench_live_", rate=0.0, device="cpu",
                                dtype="auto", pipeline=pipeline, publish_overlay=True, **params)
    rows = []
    try:
        for n in counts:
            bench.set_prompts(PROMPTS[:n])
            bench.wait_for_output(node, log, 60, prompts=n)
            e2e = bench.end_to_end_ms(e2e_frames)
            window = camera_window(bench, node.pid, seconds)
            rows.append({"pipeline": pipeline, "prompts": n, "end_to_end_ms_p50": pct(e2e, 50),
                         "end_to_end_ms": [round(t, 1) for t in e2e], **window})
            print(f"pipeline {pipeline}, N = {n}: end to end p50 {rows[-1]['end_to_end_ms_p50']} ms; under "
                  f"{CAMERA_HZ:g} Hz {window['outputs_per_s']} outputs/s, p50 {window['latency_ms_p50']} ms; "
                  f"cores {window['cores_by_thread']}", flush=True)
    finally:
        interrupt(node, 15)
    return rows


def first_start(bench: Bench, model: str, dtype: str, cache: str, seconds: float, which: str) -> dict:
    """A node started while the camera runs: time to the first output and outputs in the first
    ``seconds`` after it."""
    os.environ["CLIPSEG_ROS_CACHE"] = cache
    node, log, first = started_node(bench, model, PROMPTS, "clipseg_bench_first_", rate=0.0, device="cpu",
                                    dtype=dtype)
    try:
        window = camera_window(bench, node.pid, seconds)
    finally:
        interrupt(node, 15)
        del os.environ["CLIPSEG_ROS_CACHE"]
    row = {"first_output_s": round(first, 2), **window}
    print(f"first start ({dtype}, {which} cache): first output after "
          f"{first:.1f} s, then {window['outputs_per_s']} outputs/s over {seconds:g} s", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, short windows")
    parser.add_argument("--model", help="checkpoint directory (default: random rd64-refined)")
    parser.add_argument("--seconds", type=float, default=0, help="each 30 Hz window (default 30, quick 5)")
    parser.add_argument("--json", help="write results to this path")
    args = parser.parse_args(argv)
    isolate_dds()
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    from clipseg_ros.ros.glibc import keep_frame_buffers_mapped

    keep_frame_buffers_mapped()  # the engine's stages measured under the node's own heap setting
    import torch

    from clipseg_ros.core.model.engine import SegmentationEngine
    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    tmp = tempfile.TemporaryDirectory(prefix="clipseg_bench_live_")
    model = args.model or str(make_random_checkpoint(tmp.name, size="tiny" if args.quick else "rd64-refined"))
    repeats = 2 if args.quick else 3
    image = sample_image()
    engine = SegmentationEngine.from_pretrained(model, device="cpu", dtype="auto", export_in_background=False)
    auto = engine.precision.describe()
    result = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "model": "random tiny" if args.quick else (args.model or "random rd64-refined"), "image": "640x480",
              "auto": auto, "camera_hz": CAMERA_HZ, "window_s": seconds,
              "blog_usage_ms": {str(n): blog_usage_ms(model, image, n, repeats) for n in PROMPT_COUNTS},
              "engine": [{"prompts": n, **stage_times(engine, image, n, repeats + 2)} for n in PROMPT_COUNTS]}
    graph = engine.network.onnx_vision_path is not None
    del engine
    print(f"auto: {auto}; blog usage {result['blog_usage_ms']} ms", flush=True)
    bench = Bench()
    try:
        result["node"] = []
        for pipeline in (True, False):
            result["node"] += node_runs(bench, model, pipeline, seconds, 3 if args.quick else 6)
        for row in result["node"]:
            row["end_to_end_vs_blog"] = round(result["blog_usage_ms"][str(row["prompts"])] / row["end_to_end_ms_p50"], 2)
        first_dtype = "auto" if graph else "int8"
        result["first_start"] = {"dtype": first_dtype, "prompts": len(PROMPTS)}
        with tempfile.TemporaryDirectory(prefix="clipseg_cache_empty_") as empty:
            result["first_start"]["empty_cache"] = first_start(bench, model, first_dtype, empty, seconds, "empty")
        with tempfile.TemporaryDirectory(prefix="clipseg_cache_prepared_") as prepared:
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "clipseg_ros.prepare", "--model", model, "--dtype", first_dtype,
                            "--cache", prepared], check=True)
            result["first_start"]["prepare_s"] = round(time.monotonic() - t0, 1)
            result["first_start"]["prepared_cache"] = first_start(bench, model, first_dtype, prepared, seconds,
                                                                  "prepared")
    finally:
        bench.close()
        tmp.cleanup()
    print()
    print("| pipeline | prompts | end to end p50 (ms) | vs blog | outputs/s at 30 Hz | latency p50 (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in result["node"]:
        print(f"| {r['pipeline']} | {r['prompts']} | {r['end_to_end_ms_p50']} | {r['end_to_end_vs_blog']} | "
              f"{r['outputs_per_s']} | {r['latency_ms_p50']} |")
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
