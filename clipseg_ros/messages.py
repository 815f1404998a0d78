"""SegmentationResult -> ROS messages. numpy only (no torch): the core's result is plain arrays."""

from __future__ import annotations

from clipseg_ros_interfaces.msg import Confidences, PromptConfidence, Segmentation
from sensor_msgs.msg import RegionOfInterest

from clipseg_ros.conversions import cv2_to_imgmsg
from clipseg_ros.postprocess import PromptStats, SegmentationResult


def prompt_confidence(stats: PromptStats) -> PromptConfidence:
    x, y, w, h = stats.bbox
    return PromptConfidence(
        prompt=stats.prompt, max_score=float(stats.max_score), mean_score=float(stats.mean_score),
        area_fraction=float(stats.area_fraction), detected=bool(stats.detected),
        bbox=RegionOfInterest(x_offset=int(x), y_offset=int(y), width=int(w), height=int(h), do_rectify=False),
        centroid_x=float(stats.centroid[0]), centroid_y=float(stats.centroid[1]))


def segmentation_msg(result: SegmentationResult, header, *, include_masks: bool = True,
                     inference_ms: float = 0.0) -> Segmentation:
    """Segmentation message: header copied from the input image, masks as mono8 images."""
    msg = Segmentation()
    msg.header = header
    msg.prompts = list(result.prompts)
    msg.confidences = [prompt_confidence(s) for s in result.stats]
    if include_masks:
        msg.masks = [cv2_to_imgmsg(m, "mono8", header) for m in result.masks]
    msg.label = label_msg(result, header)
    msg.threshold = float(result.threshold)
    msg.inference_ms = float(inference_ms)
    return msg


def label_msg(result: SegmentationResult, header):
    return cv2_to_imgmsg(result.label, "mono8", header)


def confidences_msg(result: SegmentationResult, header) -> Confidences:
    return Confidences(header=header, confidences=[prompt_confidence(s) for s in result.stats])
