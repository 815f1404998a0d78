"""Shared by the benchmarks that run the real node: start it, play a camera at a fixed rate, end
the run."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time

from clipseg_ros.tools.child_node import interrupt


class NodeNeverAnswered(RuntimeError):
    """The node started but this process never received an output (DDS discovery failed: seen
    now and then on these machines; the run is retried once with a new node)."""


def retrying(run):
    """``run`` wrapped: called again once (a new node) when it raises NodeNeverAnswered."""
    def wrapped(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        except NodeNeverAnswered as exc:
            print(f"{exc}: trying once more with a new node", flush=True)
            return dict(run(*args, **kwargs), attempts=2)
    return wrapped


def isolate_dds() -> None:
    """A random ROS_DOMAIN_ID (once per process) and the LARGE_DATA transport, in this process and
    the nodes it starts; call before this process's rclpy.init."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"


def start_node(model: str, prompts, log_prefix: str, **params) -> tuple[subprocess.Popen, str]:
    """``python -m clipseg_ros`` named ``clipseg`` on ``/bench/image`` with ``prompts`` and
    ``params`` (name=value); its log goes to a file (a pipe nobody reads would block it). Sets
    the DDS environment (:func:`isolate_dds`) in this process too."""
    isolate_dds()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    names = ", ".join(f"'{p}'" for p in prompts)
    args = [sys.executable, "-m", "clipseg_ros", "--ros-args", "-r", "__node:=clipseg", "-p", f"model:={model}",
            "-p", f"prompts:=[{names}]", "-p", "image_topics:=[/bench/image]"]
    for name, value in params.items():
        args += ["-p", f"{name}:={str(value).lower() if isinstance(value, bool) else value}"]
    log = tempfile.NamedTemporaryFile("w", prefix=log_prefix, suffix=".log", delete=False)
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT), log.name


def play(pub, clock_node, messages, seconds: float, hz: float, start: int = 0) -> int:
    """Publish ``messages`` in turn (freshly stamped) at ``hz`` for ``seconds``; how many were sent."""
    sent = 0
    begin = next_t = time.monotonic()
    while time.monotonic() - begin < seconds:
        msg = messages[(start + sent) % len(messages)]
        msg.header.stamp = clock_node.get_clock().now().to_msg()
        pub.publish(msg)
        sent += 1
        next_t += 1 / hz
        time.sleep(max(0.0, next_t - time.monotonic()))
    return sent


def end_run(node: subprocess.Popen, spinner, camera_node, rclpy=None) -> None:
    """SIGINT the node process (kill it after 15 s), then close this side's node (and ROS, when
    ``rclpy`` is given)."""
    interrupt(node, 15)
    spinner.stop()
    camera_node.destroy_node()
    if rclpy is not None:
        rclpy.shutdown()
