"""Shared by the benchmarks that run the real node: play a camera at a fixed rate, end the run."""

from __future__ import annotations

import signal
import subprocess
import time


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
    node.send_signal(signal.SIGINT)
    try:
        node.wait(15)
    except subprocess.TimeoutExpired:
        node.kill()
    spinner.stop()
    camera_node.destroy_node()
    if rclpy is not None:
        rclpy.shutdown()
