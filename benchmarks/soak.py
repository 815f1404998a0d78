#!/usr/bin/env python3
"""Soak test: the real node for minutes under two cameras and changing prompts.

The node runs in a subprocess (default parameters, rate 5 Hz, full-size random rd64-refined model
on the CPU). This process publishes 640x480 rgb8 at 30 Hz on one camera and 15 Hz on a second,
sends 4 new text prompts every 2 s on ~/prompts (always new words, so the embedding cache is
exercised up to its bound), and records per time window:

- output rate per camera, end-to-end latency p50/p95 (image stamp -> segmentation arrival),
- the node's RSS (sampled from /proc once per second),
- how long a prompt change takes to show up in the outputs,
- dropped frames, from the node's own /diagnostics (superseded by design, unreadable, failed).

Latency and RSS must be flat after warm-up (the node keeps one pending frame per camera, no queue).

    python benchmarks/soak.py --minutes 10                    # the README figures
    python benchmarks/soak.py --tiny --seconds 20 --window 5  # seconds, as in the tests
    python benchmarks/soak.py --json out.json
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from results_file import cpu_name, write_results

NODE = "clipseg_soak"
CAMERAS = {"front": ("/soak/front/image_raw", 30.0), "rear": ("/soak/rear/image_raw", 15.0)}


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def pct(values, q):
    return round(float(np.percentile(values, q)), 1) if len(values) else None


class Soak:
    def __init__(self, model: str, log_path: Path, rate: float, prompts_every: float):
        import rclpy
        from clipseg_ros_interfaces.msg import Segmentation
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.node import Node
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from clipseg_ros.ros.conversions import cv2_to_imgmsg
        from clipseg_ros.ros.spinner import BackgroundSpinner

        self.prompts_every = prompts_every
        domain = str(random.randint(1, 100))
        os.environ.update(ROS_DOMAIN_ID=domain, FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
        topics = "[" + ", ".join(t for t, _ in CAMERAS.values()) + "]"
        names = "[" + ", ".join(CAMERAS) + "]"
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clipseg_ros", "--ros-args", "-r", f"__node:={NODE}",
             "-p", f"model:={model}", "-p", f"image_topics:={topics}", "-p", f"camera_names:={names}",
             "-p", f"rate:={rate}", "-p", "prompts:=[cup, door handle]"],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        rclpy.init()
        self.rclpy = rclpy
        self.node = Node("soak_driver")
        self.image = cv2_to_imgmsg(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8), "rgb8")
        self.pubs = {c: self.node.create_publisher(Image, t, qos_profile_sensor_data) for c, (t, _) in CAMERAS.items()}
        self.prompt_pub = self.node.create_publisher(String, f"/{NODE}/prompts", 10)
        self.String = String
        self.outputs: list[tuple[float, str, float, tuple]] = []  # (arrival, camera, latency ms, prompts)
        self.sent = {c: 0 for c in CAMERAS}
        self.rss: list[tuple[float, float]] = []
        self.prompt_changes: list[tuple[float, tuple]] = []
        self.diagnostics = None
        self.model_ms: list[tuple[float, float]] = []  # (time, the node's model latency p50 per camera)
        self._stop = threading.Event()
        for cam in CAMERAS:
            self.node.create_subscription(Segmentation, f"/{NODE}/{cam}/segmentation",
                                          lambda m, c=cam: self._on_output(c, m), 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.spinner = BackgroundSpinner(self.node)

    def _on_output(self, cam, msg):
        now = time.time()
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.outputs.append((time.monotonic(), cam, (now - stamp) * 1e3, tuple(msg.prompts)))

    def _on_diagnostics(self, msg):
        if any(s.name.startswith(f"{NODE}:") for s in msg.status):
            self.diagnostics = msg
            now = time.monotonic()
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                if values.get("model latency p50 (ms)", "n/a") != "n/a":
                    self.model_ms.append((now, float(values["model latency p50 (ms)"])))

    def _camera(self, cam, hz):
        period, next_t = 1.0 / hz, time.monotonic()
        while not self._stop.is_set():
            msg = self.image
            msg.header.stamp = self.node.get_clock().now().to_msg()
            msg.header.frame_id = cam
            self.pubs[cam].publish(msg)
            self.sent[cam] += 1
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _prompts(self):
        k = 0
        while not self._stop.wait(self.prompts_every):
            names = tuple(f"thing {k + i}" for i in range(4))  # always new: exercises the bounded cache
            k += 4
            self.prompt_changes.append((time.monotonic(), names))
            self.prompt_pub.publish(self.String(data=";".join(names)))

    def _rss(self):
        while not self._stop.wait(1.0):
            value = rss_mib(self.proc.pid)
            if value is not None:
                self.rss.append((time.monotonic(), value))

    def run(self, seconds: float, startup_timeout: float = 180.0) -> float:
        threads = [threading.Thread(target=self._camera, args=(c, hz), daemon=True) for c, (_, hz) in CAMERAS.items()]
        for t in threads:
            t.start()
        deadline = time.monotonic() + startup_timeout
        while {c for _, c, _, _ in self.outputs} != set(CAMERAS):  # model loaded, discovery done
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"node produced no output for both cameras; see {self.log.name}")
            time.sleep(0.1)
        self.outputs.clear()
        self.sent = {c: 0 for c in CAMERAS}
        start = time.monotonic()
        extra = [threading.Thread(target=f, daemon=True) for f in (self._prompts, self._rss)]
        for t in extra:
            t.start()
        time.sleep(seconds)  # the soak's duration: the measurement itself
        self._stop.set()
        for t in threads + extra:
            t.join(5)
        return start

    def stop(self) -> float | None:
        """SIGINT the node; seconds it took to exit."""
        self._stop.set()
        exit_s = None
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
                exit_s = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.spinner.stop()
        self.node.destroy_node()
        self.rclpy.shutdown()
        self.log.close()
        return exit_s


def analyse(soak: Soak, start: float, seconds: float, window: float) -> dict:
    windows = []
    n = max(1, int(round(seconds / window)))
    for i in range(n):
        lo, hi = start + i * window, start + (i + 1) * window
        outs = [o for o in soak.outputs if lo <= o[0] < hi]
        lat = [o[2] for o in outs]
        rss = [r for t, r in soak.rss if lo <= t < hi]
        model = [m for t, m in soak.model_ms if lo <= t < hi]
        windows.append({
            "t_s": round((i + 1) * window, 1),
            "outputs_hz": {c: round(sum(1 for o in outs if o[1] == c) / window, 2) for c in CAMERAS},
            "latency_ms_p50": pct(lat, 50), "latency_ms_p95": pct(lat, 95),
            # The node's own model time (its diagnostics): latency rising with it is a slower
            # machine; latency rising without it would be queueing.
            "model_ms_p50": pct(model, 50),
            "rss_mib": round(max(rss), 1) if rss else None,
        })
    # Prompt switch time: from publishing a set to the first output carrying it.
    switch = []
    for t, names in soak.prompt_changes:
        first = next((o[0] for o in soak.outputs if o[0] >= t and o[3] == names), None)
        if first is not None:
            switch.append((first - t) * 1e3)
    counters = {}
    if soak.diagnostics is not None:
        for status in soak.diagnostics.status:
            values = {kv.key: kv.value for kv in status.values}
            if "dropped: superseded" in values:
                counters[status.name.split(": ", 1)[1]] = {k: int(values[k]) for k in (
                    "frames received", "frames processed", "dropped: superseded", "dropped: unreadable",
                    "dropped: failed")}
    lat_all = [o[2] for o in soak.outputs]
    warm = windows[1:] if len(windows) > 1 else windows
    p50s = [w["latency_ms_p50"] for w in warm if w["latency_ms_p50"] is not None]
    rss = [w["rss_mib"] for w in warm if w["rss_mib"] is not None]
    return {
        "seconds": seconds, "window_s": window, "frames_sent": dict(soak.sent),
        "outputs": {c: sum(1 for o in soak.outputs if o[1] == c) for c in CAMERAS},
        "latency_ms_p50": pct(lat_all, 50), "latency_ms_p95": pct(lat_all, 95),
        "prompt_changes": len(soak.prompt_changes), "prompt_changes_seen": len(switch),
        "prompt_switch_ms_p50": pct(switch, 50), "prompt_switch_ms_max": round(max(switch), 1) if switch else None,
        "node_counters": counters, "windows": windows,
        "after_warmup": {
            "latency_p50_last_over_first": round(p50s[-1] / p50s[0], 3) if len(p50s) > 1 else None,
            # Waiting time (latency minus model time) is what a queue would grow.
            "wait_ms_p50_by_window": [round(w["latency_ms_p50"] - w["model_ms_p50"], 1) for w in warm
                                      if w["latency_ms_p50"] is not None and w["model_ms_p50"] is not None],
            "rss_growth_mib": round(rss[-1] - rss[0], 1) if len(rss) > 1 else None,
            "rss_range_mib": [min(rss), max(rss)] if rss else None,
        },
    }


def print_report(r: dict) -> None:
    print(f"\nsoak {r['seconds']:.0f} s: sent {r['frames_sent']}, outputs {r['outputs']}, latency p50 "
          f"{r['latency_ms_p50']} ms p95 {r['latency_ms_p95']} ms; prompt changes {r['prompt_changes']} "
          f"(seen {r['prompt_changes_seen']}, switch p50 {r['prompt_switch_ms_p50']} ms, "
          f"max {r['prompt_switch_ms_max']} ms)")
    print("| t (s) | " + " | ".join(f"{c} out (Hz)" for c in CAMERAS)
          + " | latency p50 (ms) | p95 (ms) | model time p50 (ms) | RSS (MiB) |")
    print("|---:|" + "---:|" * len(CAMERAS) + "---:|---:|---:|---:|")
    for w in r["windows"]:
        print(f"| {w['t_s']} | " + " | ".join(str(w["outputs_hz"][c]) for c in CAMERAS)
              + f" | {w['latency_ms_p50']} | {w['latency_ms_p95']} | {w['model_ms_p50']} | {w['rss_mib']} |")
    for cam, c in r["node_counters"].items():
        print(f"{cam}: received {c['frames received']}, processed {c['frames processed']}, dropped "
              f"{c['dropped: superseded']} superseded (by design), {c['dropped: unreadable']} unreadable, "
              f"{c['dropped: failed']} failed")
    print(f"after warm-up: {r['after_warmup']}; node exit after SIGINT {r.get('exit_s')} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=0.0, help="instead of --minutes")
    parser.add_argument("--window", type=float, default=60.0, help="report window in seconds")
    parser.add_argument("--tiny", action="store_true", help="tiny random model instead of full-size rd64-refined")
    parser.add_argument("--model", help="checkpoint directory (default: a random one)")
    parser.add_argument("--rate", type=float, default=5.0, help="node rate parameter (Hz)")
    parser.add_argument("--prompts-every", type=float, default=2.0, help="seconds between prompt changes")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    seconds = args.seconds or args.minutes * 60 or 600.0

    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    with tempfile.TemporaryDirectory(prefix="clipseg_soak_") as tmp:
        model = args.model or str(make_random_checkpoint(tmp, size="tiny" if args.tiny else "rd64-refined"))
        soak = Soak(model, Path(tmp) / "node.log", args.rate, args.prompts_every)
        try:
            start = soak.run(seconds)
        finally:
            exit_s = soak.stop()
        result = analyse(soak, start, seconds, min(args.window, seconds))
        result["exit_s"] = round(exit_s, 2) if exit_s is not None else None
        result["model"] = "random tiny" if args.tiny else (args.model or "random rd64-refined")
        result["cpu"] = cpu_name()
        log = (Path(tmp) / "node.log").read_text()
        result["node_log_errors"] = [line for line in log.splitlines() if "[ERROR]" in line or "Traceback" in line]
        if result["node_log_errors"]:  # keep the whole log for whoever reads the errors
            kept = Path(args.json).with_suffix(".node.log") if args.json else Path("soak_node.log")
            kept.write_text(log)
            result["node_log"] = str(kept)
    print_report(result)
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
