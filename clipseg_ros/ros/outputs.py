"""One camera's output publishers, and the gate that stops publishing before the node goes away."""

from __future__ import annotations

import threading

from clipseg_ros_interfaces.msg import Confidences, Segmentation
from geometry_msgs.msg import PointStamped
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from clipseg_ros.ros.messages import OutputMessages
from clipseg_ros.ros.spatial_messages import marker_array, topic_slug

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

    def run(self, publish):
        """Call ``publish()`` if still open: what it returned (None when it returns nothing),
        or False when the gate is closed."""
        with self._lock:
            if not self._open:
                return False
            return publish()


class OutputPublishers:
    """``<prefix>segmentation``, ``confidences``, ``label`` and ``overlay`` of one camera; with
    depth also ``markers``, ``cloud``, ``obstacle_cloud``, ``clearing_cloud`` and
    ``position/<topic_slug(prompt)>`` (one per current prompt: created when the prompt first comes,
    destroyed when it goes)."""

    def __init__(self, node, prefix: str, qos: QoSProfile = OUTPUT_QOS, spatial: bool = False):
        self._node, self._prefix, self._qos = node, prefix, qos
        self.spatial = spatial
        self.segmentation = node.create_publisher(Segmentation, prefix + "segmentation", qos)
        self.confidences = node.create_publisher(Confidences, prefix + "confidences", qos)
        self.label = node.create_publisher(Image, prefix + "label", qos)
        self.overlay = node.create_publisher(Image, prefix + "overlay", qos)
        self.markers = self.cloud = self.obstacle_cloud = self.clearing_cloud = None
        if spatial:
            self.markers = node.create_publisher(MarkerArray, prefix + "markers", qos)
            self.cloud = node.create_publisher(PointCloud2, prefix + "cloud", qos)
            self.obstacle_cloud = node.create_publisher(PointCloud2, prefix + "obstacle_cloud", qos)
            self.clearing_cloud = node.create_publisher(PointCloud2, prefix + "clearing_cloud", qos)
        self.positions: dict[str, object] = {}  # topic slug -> PointStamped publisher

    def all(self) -> list:
        return [p for p in (self.segmentation, self.confidences, self.label, self.overlay, self.markers, self.cloud,
                            self.obstacle_cloud, self.clearing_cloud) if p is not None] + list(self.positions.values())

    def publish(self, out: OutputMessages) -> None:
        self.segmentation.publish(out.segmentation)
        self.confidences.publish(out.confidences)
        if out.label is not None:
            self.label.publish(out.label)
        if out.overlay is not None:
            self.overlay.publish(out.overlay)
        if not self.spatial:
            return
        for publisher, msg in ((self.markers, out.markers), (self.cloud, out.cloud),
                               (self.obstacle_cloud, out.obstacle_cloud), (self.clearing_cloud, out.clearing_cloud)):
            if msg is not None:
                publisher.publish(msg)
        current = {topic_slug(p) for p in out.prompts}
        for slug in [s for s in self.positions if s not in current]:  # prompts that went
            self._node.destroy_publisher(self.positions.pop(slug))
        for prompt, point in out.positions.items():
            slug = topic_slug(prompt)
            if slug not in self.positions:
                self.positions[slug] = self._node.create_publisher(PointStamped, f"{self._prefix}position/{slug}",
                                                                   self._qos)
            self.positions[slug].publish(point)

    def clear_markers(self, header) -> None:
        """Remove this camera's markers from RViz (the node stops publishing)."""
        if self.markers is not None:
            self.markers.publish(marker_array(None, [], header, 0.0))

    def destroy(self) -> None:
        for pub in self.all():
            self._node.destroy_publisher(pub)
        self.positions = {}
