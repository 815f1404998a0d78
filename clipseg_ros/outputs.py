"""One camera's output publishers, and the gate that stops publishing before the node goes away."""

from __future__ import annotations

import threading

from clipseg_ros_interfaces.msg import Confidences, Segmentation
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from clipseg_ros.messages import OutputMessages

# Reliable, depth 1: consumers want the newest result; RViz's best-effort subscriptions are
# compatible with a reliable publisher.
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)


class PublishGate:
    """Lets publishing happen until :meth:`close`; after that, never. The inference thread can
    finish a frame after shutdown began; publishing it then would use handles whose context is
    gone. ``close`` waits for a publish in progress, so no publish overlaps teardown."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open = True

    def close(self) -> None:
        with self._lock:
            self._open = False

    def reopen(self) -> None:
        with self._lock:
            self._open = True

    def run(self, publish) -> bool:
        """Call ``publish()`` if still open; whether it ran."""
        with self._lock:
            if not self._open:
                return False
            publish()
            return True


class OutputPublishers:
    """``<prefix>segmentation``, ``confidences``, ``label`` and ``overlay`` of one camera."""

    def __init__(self, node, prefix: str, qos: QoSProfile = OUTPUT_QOS):
        self._node = node
        self.segmentation = node.create_publisher(Segmentation, prefix + "segmentation", qos)
        self.confidences = node.create_publisher(Confidences, prefix + "confidences", qos)
        self.label = node.create_publisher(Image, prefix + "label", qos)
        self.overlay = node.create_publisher(Image, prefix + "overlay", qos)

    def all(self) -> list:
        return [self.segmentation, self.confidences, self.label, self.overlay]

    def publish(self, out: OutputMessages) -> None:
        self.segmentation.publish(out.segmentation)
        self.confidences.publish(out.confidences)
        if out.label is not None:
            self.label.publish(out.label)
        if out.overlay is not None:
            self.overlay.publish(out.overlay)

    def destroy(self) -> None:
        for pub in self.all():
            self._node.destroy_publisher(pub)
