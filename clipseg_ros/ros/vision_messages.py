"""A frame's objects as ``vision_msgs`` 4.x: Detection2DArray, Detection3DArray, LabelInfo.

numpy only (no torch). vision_msgs is a ``package.xml`` dependency (rosdep key ``vision_msgs``);
where it cannot be imported the node runs without these outputs and says why once
(:data:`UNAVAILABLE` holds the reason, '' when it is there).

Conventions (what Isaac ROS, FoundationPose and Nav2's semantic layer read):

- ``Detection2D``: header = the colour image's; ``results[0].hypothesis`` = (prompt, the object's
  max score); ``bbox`` centre and size in input-image pixels (centre of the pixel box: x + w / 2);
  ``id`` = the object's instance id as a string (the value of its pixels in ``~/instances`` and
  of its points' ``instance`` in ``~/objects_cloud``).
- ``Detection3D`` (objects with a 3D position): header = the depth image's (its optical frame);
  ``results[0].pose.pose.position`` = the robust position (median of the inliers), orientation =
  the oriented box's, covariance: the inlier points' spread (their 3x3 covariance) in the
  position block; the rotation block's diagonal (2 degrees)^2 for an oriented box (the bound the
  synthetic box tests hold: test/core/test_boxes.py) and the variance of a uniform angle
  (pi^2 / 3) for an axis-aligned one (orientation unknown);
  ``bbox`` = the oriented box (centre pose, size).
- ``LabelInfo``: ``class_map`` k -> ``prompts[k-1]`` (the ``~/label`` values; 0 = background is not
  a class), ``threshold`` = the default threshold; published reliable + transient local, whenever
  the prompts or the threshold change, so a subscriber that joins late has the current one.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

try:
    from vision_msgs.msg import (
        BoundingBox2D,
        BoundingBox3D,
        Detection2D,
        Detection2DArray,
        Detection3D,
        Detection3DArray,
        LabelInfo,
        ObjectHypothesisWithPose,
        VisionClass,
    )
    UNAVAILABLE = ""
except ImportError as exc:  # no vision_msgs on this machine
    UNAVAILABLE = f"vision_msgs cannot be imported ({exc}): install it (rosdep key vision_msgs)"

from geometry_msgs.msg import Point, Pose, Quaternion, Vector3

from clipseg_ros.core.results.consumer_views import instance_ids
from clipseg_ros.core.results.scene import Scene

UNKNOWN_ANGLE_VARIANCE = math.pi ** 2 / 3  # a uniform angle in [-pi, pi]: orientation unknown
ORIENTED_ANGLE_VARIANCE = math.radians(2.0) ** 2


def _hypothesis(prompt: str, score: float):
    result = ObjectHypothesisWithPose()
    result.hypothesis.class_id = prompt
    result.hypothesis.score = float(score)
    return result


def detections_2d(scene: Scene, header) -> "Detection2DArray":
    """Every object of the frame, best first per prompt (see the module doc)."""
    out = Detection2DArray(header=header)
    for objects, ids in zip(scene.objects, instance_ids(scene)):
        for placed, value in zip(objects, ids):
            obj = placed.object
            x, y, w, h = obj.bbox
            box = BoundingBox2D(size_x=float(w), size_y=float(h))
            box.center.position.x, box.center.position.y = x + w / 2.0, y + h / 2.0
            out.detections.append(Detection2D(header=header, results=[_hypothesis(obj.prompt, obj.max_score)],
                                              bbox=box, id=str(value)))
    return out


def detections_3d(scene: Scene, header) -> "Detection3DArray":
    """The objects that have a 3D position, in the depth image's frame (``header``)."""
    out = Detection3DArray(header=header)
    for objects, ids in zip(scene.objects, instance_ids(scene)):
        for placed, value in zip(objects, ids):
            where, box = placed.location, placed.location.box
            if not where.has_position or box is None:
                continue
            qx, qy, qz, qw = box.quaternion
            orientation = Quaternion(x=qx, y=qy, z=qz, w=qw)
            hypothesis = _hypothesis(placed.object.prompt, placed.object.max_score)
            hypothesis.pose.pose = Pose(position=Point(x=where.position[0], y=where.position[1], z=where.position[2]),
                                        orientation=orientation)
            hypothesis.pose.covariance = pose_covariance(where.spread, box.oriented)
            bbox = BoundingBox3D(center=Pose(position=Point(x=float(box.center[0]), y=float(box.center[1]),
                                                            z=float(box.center[2])), orientation=orientation),
                                 size=Vector3(x=float(box.size[0]), y=float(box.size[1]), z=float(box.size[2])))
            out.detections.append(Detection3D(header=header, results=[hypothesis], bbox=bbox, id=str(value)))
    return out


def pose_covariance(spread: np.ndarray | None, oriented: bool) -> list[float]:
    """Row-major 6x6: the position block = ``spread`` (3x3, m^2), the rotation block's diagonal
    by whether the box is ``oriented`` (see the module doc)."""
    cov = np.zeros((6, 6))
    if spread is not None and np.isfinite(spread).all():
        cov[:3, :3] = spread
    cov[3:, 3:] = np.eye(3) * (ORIENTED_ANGLE_VARIANCE if oriented else UNKNOWN_ANGLE_VARIANCE)
    return [float(v) for v in cov.ravel()]


def label_info(prompts: Sequence[str], threshold: float, header) -> "LabelInfo":
    return LabelInfo(header=header, threshold=float(threshold),
                     class_map=[VisionClass(class_id=k + 1, class_name=str(p)) for k, p in enumerate(prompts)])
