"""One segmentation result -> the node's output messages; and back to plain records for files.

numpy and OpenCV only (no torch): the core's result is plain arrays. The node, the benchmarks and
the tools build their messages here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from clipseg_ros_interfaces.msg import Confidences, PromptConfidence, Segmentation
from sensor_msgs.msg import Image, PointCloud2, RegionOfInterest
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from clipseg_ros.core.results.consumer_views import (
    aligned_cloud,
    confidence_image,
    instance_image,
    objects_cloud,
    target_mask,
)
from clipseg_ros.core.results.overlay import render_overlay
from clipseg_ros.core.results.postprocess import PromptStats, SegmentationResult
from clipseg_ros.core.results.scene import Scene
from clipseg_ros.ros.conversions import cv2_to_imgmsg
from clipseg_ros.ros.spatial_messages import (
    best_position_msg,
    cloud_msg,
    depth_header,
    marker_array,
    object_msgs,
    objects_cloud_msg,
    organised_cloud_msg,
    xyz_cloud_msg,
)
from clipseg_ros.ros.vision_messages import UNAVAILABLE, detections_2d, detections_3d


@dataclass(frozen=True)
class OutputOptions:
    """Which optional outputs to build (the node's ``publish_*`` and ``overlay_alpha``)."""

    include_masks: bool = True
    label: bool = True
    overlay: bool = True
    overlay_alpha: float = 0.5
    markers: bool = True
    positions: bool = True
    marker_lifetime: float = 3.0  # s
    overlay_note: str = ""  # written across the overlay's bottom (the node: untrained weights)
    # for the consumers (clipseg_ros.core.results.consumer_views, clipseg_ros.ros.vision_messages)
    detections: bool = False  # ~/detections (+ ~/detections_3d with depth); needs vision_msgs
    confidence: bool = False  # ~/confidence
    instances: bool = False  # ~/instances
    target_prompt: str = ""  # ~/target_mask of this prompt ('' = none)
    target_all_objects: bool = False  # every object of the target prompt, not only its best
    objects_cloud: bool = False  # ~/objects_cloud (with depth)
    objects_cloud_prompts: tuple[str, ...] = ()  # empty: all
    cloud_stride: int = 4
    cloud_max_points: int = 50000
    aligned_cloud: bool = False  # ~/aligned_cloud (with depth)


@dataclass
class OutputMessages:
    """Everything published for one frame; ``label``/``overlay`` are None when not wanted."""

    segmentation: Segmentation
    confidences: Confidences
    label: Image | None
    overlay: Image | None
    # 3D, only with a paired depth image: markers, each prompt's best position, the clouds
    markers: MarkerArray | None = None
    positions: dict = field(default_factory=dict)  # prompt -> PointStamped (NaN: no 3D object this frame)
    cloud: PointCloud2 | None = None
    obstacle_cloud: PointCloud2 | None = None
    clearing_cloud: PointCloud2 | None = None
    prompts: tuple[str, ...] = ()  # the frame's prompts (which position topics are current)
    # for the consumers: None when not wanted (or without depth, for the 3D ones)
    detections: object = None  # vision_msgs/Detection2DArray
    detections_3d: object = None  # vision_msgs/Detection3DArray
    confidence: Image | None = None
    instances: Image | None = None
    target_mask: Image | None = None
    objects_cloud: PointCloud2 | None = None
    aligned_cloud: PointCloud2 | None = None


def build_outputs(result: SegmentationResult, image_rgb: np.ndarray, header,
                  options: OutputOptions = OutputOptions(), scene: Scene | None = None) -> OutputMessages:
    """The messages for one frame: ``header`` is the input image's, ``image_rgb`` (H, W, 3) uint8
    the frame the overlay is drawn on; ``scene`` its objects (and 3D, when it had depth)."""
    label = label_msg(result, header)
    overlay = None
    if options.overlay:
        bgr = render_overlay(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), result.label, result.prompts,
                             alpha=options.overlay_alpha, scores=[s.max_score for s in result.stats],
                             note=options.overlay_note)
        overlay = cv2_to_imgmsg(bgr, "bgr8", header)
    segmentation = segmentation_msg(result, header, include_masks=options.include_masks, label=label)
    confidences = confidences_msg(result, header)
    out = OutputMessages(segmentation=segmentation, confidences=confidences,
                         label=label if options.label else None, overlay=overlay, prompts=tuple(result.prompts))
    if options.confidence:
        out.confidence = cv2_to_imgmsg(confidence_image(result), "mono8", header)
    if scene is None:
        return out
    _consumer_2d(out, result, scene, header, options)
    objects, where = object_msgs(scene), depth_header(scene)
    for msg in (segmentation, confidences):
        msg.objects, msg.depth_header = objects, where
    # 3D outputs go out for every frame, also one without usable depth: its markers only clear the
    # last ones, its positions are NaN (stamped like the colour image), so nothing stale stays.
    where_3d = where if scene.depth is not None else header
    if options.markers:
        out.markers = marker_array(scene if scene.depth is not None else None, list(result.prompts), where_3d,
                                   options.marker_lifetime)
    if options.positions:
        out.positions = {result.prompts[k]: best_position_msg(scene.best(k) if scene.depth is not None else None,
                                                              where_3d) for k in range(len(result.prompts))}
    if scene.cloud is not None:
        out.cloud = cloud_msg(scene.cloud, where)
    if scene.obstacle_cloud is not None:
        out.obstacle_cloud = cloud_msg(scene.obstacle_cloud, where, xyz_only=True)
    if scene.clearing_cloud is not None:
        out.clearing_cloud = xyz_cloud_msg(scene.clearing_cloud, where)
    if scene.depth is not None:
        _consumer_3d(out, result, scene, header, where, options)
    return out


def _consumer_2d(out: OutputMessages, result: SegmentationResult, scene: Scene, header, options: OutputOptions) -> None:
    if options.detections and not UNAVAILABLE:
        out.detections = detections_2d(scene, header)
    if options.instances:
        out.instances = cv2_to_imgmsg(instance_image(result, scene), "mono16", header)
    if options.target_prompt:
        out.target_mask = cv2_to_imgmsg(target_mask(result, scene, options.target_prompt, options.target_all_objects),
                                        "mono8", header)


def _consumer_3d(out: OutputMessages, result: SegmentationResult, scene: Scene, header, where,
                 options: OutputOptions) -> None:
    if options.detections and not UNAVAILABLE:
        out.detections_3d = detections_3d(scene, where)
    if options.objects_cloud:
        cloud = objects_cloud(result, scene, options.objects_cloud_prompts, options.cloud_stride,
                              options.cloud_max_points)
        out.objects_cloud = objects_cloud_msg(cloud, where)
    if options.aligned_cloud:
        # Nav2's semantic segmentation layer pairs label, confidence and this cloud by exact
        # stamp: the colour frame's stamp, in the depth image's frame.
        aligned = Header(stamp=header.stamp, frame_id=where.frame_id)
        h, w = result.label.shape
        out.aligned_cloud = organised_cloud_msg(aligned_cloud(result, scene), h, w, aligned)


def prompt_confidence(stats: PromptStats) -> PromptConfidence:
    x, y, w, h = stats.bbox
    return PromptConfidence(
        prompt=stats.prompt, max_score=float(stats.max_score), mean_score=float(stats.mean_score),
        area_fraction=float(stats.area_fraction), detected=bool(stats.detected),
        bbox=RegionOfInterest(x_offset=int(x), y_offset=int(y), width=int(w), height=int(h), do_rectify=False),
        centroid_x=float(stats.centroid[0]), centroid_y=float(stats.centroid[1]), threshold=float(stats.threshold))


def segmentation_msg(result: SegmentationResult, header, *, include_masks: bool = True,
                     label: Image | None = None) -> Segmentation:
    """Segmentation message: header copied from the input image, masks as mono8 images,
    ``inference_ms`` from the result's total time."""
    msg = Segmentation()
    msg.header = header
    msg.prompts = list(result.prompts)
    msg.confidences = [prompt_confidence(s) for s in result.stats]
    if include_masks:
        msg.masks = [cv2_to_imgmsg(m, "mono8", header) for m in result.masks]
    msg.label = label if label is not None else label_msg(result, header)
    msg.threshold = float(result.threshold)
    msg.inference_ms = float(result.timings_ms.get("total", 0.0))
    msg.refinement = result.refinement
    return msg


def label_msg(result: SegmentationResult, header) -> Image:
    return cv2_to_imgmsg(result.label, "mono8", header)


def confidences_msg(result: SegmentationResult, header) -> Confidences:
    return Confidences(header=header, confidences=[prompt_confidence(s) for s in result.stats])


def confidence_record(conf: PromptConfidence, digits: int = 4) -> dict:
    """A received PromptConfidence as a JSON-ready dict (NaN centroid -> None)."""
    def coord(v: float):
        return None if math.isnan(v) else round(v, 1)

    return {"prompt": conf.prompt, "max_score": round(conf.max_score, digits),
            "mean_score": round(conf.mean_score, digits), "area_fraction": round(conf.area_fraction, digits),
            "detected": bool(conf.detected),
            "bbox": [conf.bbox.x_offset, conf.bbox.y_offset, conf.bbox.width, conf.bbox.height],
            "centroid": [coord(conf.centroid_x), coord(conf.centroid_y)],
            "threshold": round(conf.threshold, digits)}
