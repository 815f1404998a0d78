"""One camera's output publishers, and the gate that stops publishing before the node goes away."""

from __future__ import annotations

import threading

from clipseg_ros_interfaces.msg import Confidences, Segmentation
from geometry_msgs.msg import PointStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from clipseg_ros.ros import vision_messages
from clipseg_ros.ros.messages import OutputMessages, OutputOptions
from clipseg_ros.ros.spatial_messages import marker_array, topic_slug

# Reliable, depth 1: consumers want the newest result; RViz's best-effort subscriptions are
# compatible with a reliable publisher.
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
# LabelInfo is latched (what vision_msgs and Nav2's semantic layer expect): a late subscriber gets it.
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


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
    """``<prefix>segmentation``, ``confidences``, ``label``, ``overlay`` and ``target_mask`` of
    one camera; as ``options`` ask, ``confidence``, ``instances``, and with vision_msgs
    ``detections`` and the latched ``label_info``; with depth also ``markers``, ``cloud``,
    ``obstacle_cloud``, ``clearing_cloud``, ``position/<topic_slug(prompt)>`` (one per current
    prompt: created when the prompt first comes, destroyed when it goes) and, as asked,
    ``detections_3d``, ``objects_cloud`` and ``aligned_cloud``."""

    def __init__(self, node, prefix: str, qos: QoSProfile = OUTPUT_QOS, spatial: bool = False,
                 options: OutputOptions = OutputOptions()):
        self._node, self._prefix, self._qos = node, prefix, qos
        self.spatial = spatial
        vision = options.detections and not vision_messages.UNAVAILABLE

        def optional(wanted, kind, name, profile=qos):
            return node.create_publisher(kind, prefix + name, profile) if wanted else None
        self.target_mask = node.create_publisher(Image, prefix + "target_mask", qos)  # target_prompt may change
        self.confidence = optional(options.confidence, Image, "confidence")
        self.instances = optional(options.instances, Image, "instances")
        self.detections = optional(vision, getattr(vision_messages, "Detection2DArray", None), "detections")
        self.label_info = optional(not vision_messages.UNAVAILABLE, getattr(vision_messages, "LabelInfo", None),
                                   "label_info", LATCHED_QOS)
        self.detections_3d = optional(vision and spatial, getattr(vision_messages, "Detection3DArray", None),
                                      "detections_3d")
        self.objects_cloud = optional(options.objects_cloud and spatial, PointCloud2, "objects_cloud")
        self.aligned_cloud = optional(options.aligned_cloud and spatial, PointCloud2, "aligned_cloud")
        self._label_info_sent: tuple | None = None
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
                            self.obstacle_cloud, self.clearing_cloud, self.target_mask, self.confidence,
                            self.instances, self.detections, self.label_info, self.detections_3d, self.objects_cloud,
                            self.aligned_cloud) if p is not None] + list(self.positions.values())

    def publish_label_info(self, prompts, threshold: float, header) -> None:
        """``label_info`` for ``prompts``, when they or ``threshold`` differ from the last sent."""
        key = (tuple(prompts), float(threshold))
        if self.label_info is None or key == self._label_info_sent:
            return
        self.label_info.publish(vision_messages.label_info(prompts, threshold, header))
        self._label_info_sent = key

    def publish(self, out: OutputMessages) -> None:
        # the class map first: a consumer that pairs label values with names has it before the label
        self.publish_label_info(out.prompts, out.segmentation.threshold, out.segmentation.header)
        self.segmentation.publish(out.segmentation)
        self.confidences.publish(out.confidences)
        if out.label is not None:
            self.label.publish(out.label)
        if out.overlay is not None:
            self.overlay.publish(out.overlay)
        for publisher, msg in ((self.confidence, out.confidence), (self.instances, out.instances),
                               (self.target_mask, out.target_mask), (self.detections, out.detections)):
            if publisher is not None and msg is not None:
                publisher.publish(msg)
        if not self.spatial:
            return
        for publisher, msg in ((self.detections_3d, out.detections_3d), (self.objects_cloud, out.objects_cloud),
                               (self.aligned_cloud, out.aligned_cloud)):
            if publisher is not None and msg is not None:
                publisher.publish(msg)
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
