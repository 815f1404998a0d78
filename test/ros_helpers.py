"""Helpers for tests that talk to a real node over real DDS (no mocks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from clipseg_ros.tools.child_node import READY_TEXT, interrupt


def wait_for(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


class NodeProcess:
    """``python -m clipseg_ros`` (the node process) in a subprocess, with its log kept for assertions."""

    def __init__(self, name: str, params: dict, log_dir: Path, remaps: dict | None = None,
                 params_file: str | None = None, env: dict | None = None, ready_text: str = READY_TEXT):
        self.name = name
        self.ready_text = ready_text
        self.log_path = Path(log_dir) / f"{name}.log"
        args = [sys.executable, "-m", "clipseg_ros", "--ros-args", "-r", f"__node:={name}"]
        # float32 unless a test asks otherwise: outputs are compared with a float32 engine, and
        # dtype auto picks by CPU, which changes between machines
        params = {"dtype": "float32", **params}
        if params_file:
            args += ["--params-file", str(params_file)]
        for key, value in params.items():
            args += ["-p", f"{key}:={_param_text(value)}"]
        for src, dst in (remaps or {}).items():
            args += ["-r", f"{src}:={dst}"]
        self._log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0", **(env or {}))
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            return self.ready_text in self.log()

        wait_for(ready, timeout, 0.1, f"node {self.name} to start")

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the process to end by itself; its exit status."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"node did not exit within {timeout} s:\n{self.log()}") from None
        finally:
            self._log.close()

    def stop(self, timeout: float = 10.0) -> int:
        status = interrupt(self.proc, timeout)
        self._log.close()
        return status


def start_answering_node(client, name: str, params: dict, log_dir: Path, answering=None, before_start=None,
                         **kwargs) -> NodeProcess:
    """A NodeProcess that is ready and answers ``client``: ``answering()`` (default: a parameter
    read over the node's service, a round trip) holds within 20 s. Fast DDS now and then never
    completes discovery between a new participant and one already running (clipseg_ros.tools.child_node);
    the node is then started once more, a new participant. ``before_start()``, if given, runs
    before each start (e.g. to undo what a first, unseen start left on disk)."""
    answering = answering or (lambda: client.get_param(name, "rate", timeout=20.0) is not None)
    for attempt in range(2):
        attempt_dir = Path(log_dir) / f"start{attempt}"
        attempt_dir.mkdir(parents=True, exist_ok=True)
        if before_start is not None:
            before_start()
        proc = NodeProcess(name, params, attempt_dir, **kwargs)
        proc.wait_ready()
        try:
            wait_for(answering, 20, 0.1, f"node {name} to answer this test's client")
            return proc
        except AssertionError:
            proc.stop()
            if attempt:
                raise


# The innermost Python frame of the main thread when Fast DDS deadlocks tearing down: a call into
# rclpy's C extension that destroys ROS entities or shuts the context down.
_DDS_TEARDOWN_FRAME = re.compile(r'File ".*/(rclpy/[\w/]+|clipseg_ros/ros/node)\.py", line \d+ in '
                                 r"(destroy_node|destroy_when_not_in_use|try_shutdown|shutdown|_cleanup)$")


def is_dds_teardown_deadlock(returncode: int, log: str) -> bool:
    """Whether the process was ended by its teardown watchdog (status 1, faulthandler's
    "Timeout (...)" dump) while its main thread was inside rclpy's destruction of ROS entities,
    where Fast DDS 3.2's TCP transport (LARGE_DATA) sometimes deadlocks. A hang anywhere else in
    teardown (e.g. joining one of our threads inside destroy_node) is not this case."""
    if returncode != 1 or "Timeout (" not in log:
        return False
    dump = log[log.index("Timeout ("):]
    for block in re.split(r"\n\s*\n", dump):  # one block per thread, innermost frame first
        frames = [line.strip() for line in block.splitlines() if line.strip().startswith("File ")]
        if any("clipseg_ros/ros/process.py" in f and f.endswith(" in main") for f in frames):
            return bool(_DDS_TEARDOWN_FRAME.search(frames[0]))
    return False


def assert_clean_exit(proc: NodeProcess, returncode: int) -> None:
    """Exit status 0 and no traceback. One exception, outside our code: the Fast DDS teardown
    deadlock (:func:`is_dds_teardown_deadlock`), which the node's watchdog ends in bounded time.
    Tests tolerate exactly that."""
    log = proc.log()
    assert returncode == 0 or is_dds_teardown_deadlock(returncode, log), f"exit status {returncode}:\n{log}"
    assert "Traceback" not in log, log


def _param_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"'{v}'" for v in value) + "]"
    return str(value)


class RosClient:
    """An rclpy node spun in a background thread, for publishing to and listening to the node."""

    def __init__(self, name: str = "test_client"):
        from rclpy.node import Node

        from clipseg_ros.ros.spinner import BackgroundSpinner

        self.node = Node(name)
        self._spinner = BackgroundSpinner(self.node)

    def collect(self, msg_type, topic: str, qos=10) -> list:
        """Subscribe and return the list that received messages are appended to."""
        received: list = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def call(self, client, request, timeout: float = 30.0):
        wait_for(lambda: client.wait_for_service(timeout_sec=0.1), timeout, what=f"service {client.srv_name}")
        future = client.call_async(request)
        wait_for(future.done, timeout, what=f"reply from {client.srv_name}")
        return future.result()

    def set_params(self, node: str, **values):
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        srv = self.node.create_client(SetParameters, f"/{node}/set_parameters")
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return self.call(srv, req).results

    def get_param(self, node: str, name: str, timeout: float = 30.0):
        from rcl_interfaces.msg import Parameter as ParameterMsg
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import Parameter

        srv = self.node.create_client(GetParameters, f"/{node}/get_parameters")
        value = self.call(srv, GetParameters.Request(names=[name]), timeout).values[0]
        return Parameter.from_parameter_msg(ParameterMsg(name=name, value=value)).value

    def close(self):
        self._spinner.stop()
        self.node.destroy_node()


class CameraPublisher:
    """Publishes numbered frames (frame_id 'seq:<n>') on a topic, stamped 1000 s + n
    ``stamp_period`` s (+ 12345 ns)."""

    def __init__(self, client, topic, h=48, w=64, compressed=False, stamp_period=1.0):
        from sensor_msgs.msg import CompressedImage, Image

        self.client, self.h, self.w, self.compressed = client, h, w, compressed
        self.stamp_period = stamp_period
        self.pub = client.node.create_publisher(CompressedImage if compressed else Image, topic, 10)
        self.seq = 0

    def publish(self, img=None):
        from clipseg_ros.ros.conversions import cv2_to_compressed_imgmsg, cv2_to_imgmsg

        img = make_image(self.h, self.w, self.seq) if img is None else img
        if self.compressed:
            msg = cv2_to_compressed_imgmsg(img[:, :, ::-1], "png")
        else:
            msg = cv2_to_imgmsg(img, "rgb8")
        msg.header.frame_id = f"seq:{self.seq}"
        ns = 1000 * 10**9 + round(self.seq * self.stamp_period * 1e9) + 12345
        msg.header.stamp.sec, msg.header.stamp.nanosec = ns // 10**9, ns % 10**9
        self.pub.publish(msg)
        self.seq += 1
        return msg

    def publish_until(self, received, count=1, timeout=30.0, period=0.05):
        start = len(received)

        def step():
            self.publish()
            time.sleep(period)  # the camera's frame period, not synchronisation
            return len(received) >= start + count

        wait_for(step, timeout, 0, f"{count} results")
        return received[start:]



def make_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


class RgbdCamera:
    """Publishes depth (and both CameraInfos) then colour with the same stamp, like a RealSense:
    ``topics`` = (colour, depth, depth info, colour info); stamps ``stamp_base`` + the next of
    ``sequence`` (shared by a module, so stamps never repeat: the node keeps recent depth images)."""

    def __init__(self, client, topics: tuple[str, str, str, str], size: tuple[int, int], focal: tuple[float, float],
                 depth_frame: str, sequence, stamp_base: int, default_depth_mm: np.ndarray | None = None):
        from sensor_msgs.msg import CameraInfo, Image

        colour, depth, info, colour_info = topics
        self.colour = client.node.create_publisher(Image, colour, 10)
        self.depth = client.node.create_publisher(Image, depth, 10)
        self.info = client.node.create_publisher(CameraInfo, info, 10)
        self.colour_info = client.node.create_publisher(CameraInfo, colour_info, 10)
        self.size, self.focal, self.depth_frame = size, focal, depth_frame
        self.sequence, self.stamp_base = sequence, stamp_base
        self.default_depth_mm = default_depth_mm  # None: 2 m everywhere

    def publish(self, depth_mm=None, encoding="16UC1", info=True, depth_offset_s=0.0, fx=None,
                colour_rgb=None) -> int:
        """One frame: depth ``depth_mm`` (default: the camera's default depth; False = none) offset by
        ``depth_offset_s``, its CameraInfo (``fx`` overrides its focal length) unless ``info``
        is false, then the colour image (``colour_rgb``, default a random one). Returns the stamp's seconds."""
        from sensor_msgs.msg import CameraInfo

        from clipseg_ros.ros.conversions import cv2_to_imgmsg

        (h, w), (FX, FY) = self.size, self.focal
        seq = next(self.sequence)
        stamp_sec = self.stamp_base + seq
        if depth_mm is not False:
            if depth_mm is None:
                depth_mm = self.default_depth_mm
            depth = np.full((h, w), 2000, np.uint16) if depth_mm is None else depth_mm
            msg = cv2_to_imgmsg(depth, encoding)
            msg.header.frame_id = self.depth_frame
            offset_ns = int(round(depth_offset_s * 1e9))
            msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_sec + offset_ns // 10**9, offset_ns % 10**9
            self.depth.publish(msg)
        if info:
            cam = CameraInfo(width=w, height=h, k=[FX if fx is None else fx, 0.0, (w - 1) / 2, 0.0, FY, (h - 1) / 2, 0.0, 0.0, 1.0])
            cam.header.frame_id = self.depth_frame
            self.info.publish(cam)
            colour_k = [FX, 0.0, (w - 1) / 2, 0.0, FY, (h - 1) / 2, 0.0, 0.0, 1.0]
            self.colour_info.publish(CameraInfo(width=w, height=h, k=colour_k))
        colour = cv2_to_imgmsg(make_image(h, w, seq) if colour_rgb is None else colour_rgb, "rgb8")
        colour.header.frame_id = f"seq:{seq}"
        colour.header.stamp.sec, colour.header.stamp.nanosec = stamp_sec, 0
        self.colour.publish(colour)
        return stamp_sec

    def publish_until(self, received, count=1, accept=None, timeout=30.0, period=0.05, **publish) -> list:
        """Publishes frames (``publish`` as for :meth:`publish`) until ``count`` outputs of those
        frames that ``accept`` takes have arrived in ``received``; returns them. Outputs of frames
        published before (an earlier test's, still queued in the node) are not counted: they carry
        their own frames' stamps."""
        stamps: set[int] = set()

        def ours():
            return [m for m in list(received) if m.header.stamp.sec in stamps and (accept is None or accept(m))]

        def step():
            stamps.add(self.publish(**publish))
            return len(ours()) >= count
        wait_for(step, timeout, period, "outputs of the published frames")
        return ours()
