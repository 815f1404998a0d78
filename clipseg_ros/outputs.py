"""One camera's output publishers, and the gate that stops publishing before the node goes away."""

from __future__ import annotations

import threading

from clipseg_ros_interfaces.msg import Confidences, Segmentation
from geometry_msgs.msg import PointStamped
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from clipseg_ros.messages import OutputMessages
from clipseg_ros.spatial_messages import topic_slug

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
    """``<prefix>segmentation``, ``confidences``, ``label`` and ``overlay`` of one camera; with
    depth also ``markers``, ``cloud``, ``obstacle_cloud`` and ``position/<prompt>`` (one per
    prompt, created when the prompt first has a position)."""

    def __init__(self, node, prefix: str, qos: QoSProfile = OUTPUT_QOS, spatial: bool = False):
        self._node, self._prefix, self._qos = node, prefix, qos
        self.segmentation = node.create_publisher(Segmentation, prefix + "segmentation", qos)
        self.confidences = node.create_publisher(Confidences, prefix + "confidences", qos)
        self.label = node.create_publisher(Image, prefix + "label", qos)
        self.overlay = node.create_publisher(Image, prefix + "overlay", qos)
        self.markers = self.cloud = self.obstacle_cloud = None
        if spatial:
            self.markers = node.create_publisher(MarkerArray, prefix + "markers", qos)
            self.cloud = node.create_publisher(PointCloud2, prefix + "cloud", qos)
            self.obstacle_cloud = node.create_publisher(PointCloud2, prefix + "obstacle_cloud", qos)
        self.positions: dict[str, object] = {}  # topic slug -> PointStamped publisher

    def all(self) -> list:
        return [p for p in (self.segmentation, self.confidences, self.label, self.overlay, self.markers, self.cloud,
                            self.obstacle_cloud) if p is not None] + list(self.positions.values())

    def publish(self, out: OutputMessages) -> None:
        self.segmentation.publish(out.segmentation)
        self.confidences.publish(out.confidences)
        if out.label is not None:
            self.label.publish(out.label)
        if out.overlay is not None:
            self.overlay.publish(out.overlay)
        for publisher, msg in ((self.markers, out.markers), (self.cloud, out.cloud),
                               (self.obstacle_cloud, out.obstacle_cloud)):
            if publisher is not None and msg is not None:
                publisher.publish(msg)
        for prompt, point in out.positions.items():
            slug = topic_slug(prompt)
            if slug not in self.positions:
                self.positions[slug] = self._node.create_publisher(PointStamped, f"{self._prefix}position/{slug}",
                                                                   self._qos)
            self.positions[slug].publish(point)

    def destroy(self) -> None:
        for pub in self.all():
            self._node.destroy_publisher(pub)
        self.positions = {}
