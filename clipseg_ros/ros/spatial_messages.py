"""A scene (objects in 3D, clouds) -> ROS messages: Object, PointCloud2, MarkerArray, PointStamped.

numpy only (no torch). Everything 3D is stamped with the depth image's header: positions are in
its optical frame.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
from builtin_interfaces.msg import Duration
from clipseg_ros_interfaces.msg import Object
from geometry_msgs.msg import Point, PointStamped, Pose, Quaternion, Vector3
from sensor_msgs.msg import PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from clipseg_ros.core.results.consumer_views import ObjectsCloud
from clipseg_ros.core.results.geometry import MaskedCloud
from clipseg_ros.core.results.overlay import palette
from clipseg_ros.core.results.scene import Scene, SceneObject


def depth_header(scene: Scene) -> Header:
    """The depth image's header (empty frame_id when the scene had no depth)."""
    header = Header()
    if scene.depth is not None:
        header.frame_id = scene.depth.frame_id
        header.stamp.sec, header.stamp.nanosec = scene.depth.stamp
    return header


def object_msgs(scene: Scene) -> list[Object]:
    return [object_msg(o) for prompt_objects in scene.objects for o in prompt_objects]


def box_pose(placed: SceneObject) -> tuple[Pose, Vector3, bool]:
    """The object's oriented box as (centre pose, size, oriented); NaN centre and size and the
    identity orientation without a 3D position."""
    box = placed.location.box
    if box is None:
        return (Pose(position=Point(x=math.nan, y=math.nan, z=math.nan), orientation=Quaternion(w=1.0)),
                Vector3(x=math.nan, y=math.nan, z=math.nan), False)
    qx, qy, qz, qw = box.quaternion
    pose = Pose(position=Point(x=float(box.center[0]), y=float(box.center[1]), z=float(box.center[2])),
                orientation=Quaternion(x=qx, y=qy, z=qz, w=qw))
    return pose, Vector3(x=float(box.size[0]), y=float(box.size[1]), z=float(box.size[2])), bool(box.oriented)


def object_msg(placed: SceneObject) -> Object:
    obj, where = placed.object, placed.location
    x, y, w, h = obj.bbox
    pose, size, oriented = box_pose(placed)
    return Object(
        prompt=obj.prompt, prompt_index=int(obj.prompt_index),
        bbox=RegionOfInterest(x_offset=int(x), y_offset=int(y), width=int(w), height=int(h), do_rectify=False),
        centroid_x=float(obj.centroid[0]), centroid_y=float(obj.centroid[1]), area=float(obj.area),
        max_score=float(obj.max_score), mean_score=float(obj.mean_score), has_position=where.has_position,
        position=Point(x=where.position[0], y=where.position[1], z=where.position[2]),
        box_center=Point(x=where.box_center[0], y=where.box_center[1], z=where.box_center[2]),
        extent=Vector3(x=where.extent[0], y=where.extent[1], z=where.extent[2]),
        box_pose=pose, box_size=size, box_oriented=oriented,
        valid_depth_fraction=float(where.valid_fraction),
        track_id=placed.track.id if placed.track is not None else 0,
        track_age=placed.track.age if placed.track is not None else 0)


# x, y, z float32, then label uint16 and score float32: 18 bytes a point, padded to 20 for alignment.
_CLOUD_FIELDS = [PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
                 PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
                 PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
                 PointField(name="score", offset=12, datatype=PointField.FLOAT32, count=1),
                 PointField(name="label", offset=16, datatype=PointField.UINT16, count=1)]
_CLOUD_DTYPE = np.dtype({"names": ["x", "y", "z", "score", "label"],
                         "formats": ["<f4", "<f4", "<f4", "<f4", "<u2"],
                         "offsets": [0, 4, 8, 12, 16], "itemsize": 20})
_XYZ_FIELDS = _CLOUD_FIELDS[:3]


def cloud_msg(cloud: MaskedCloud, header: Header, xyz_only: bool = False) -> PointCloud2:
    """An unorganised (height 1), dense PointCloud2: x, y, z (+ score, label unless ``xyz_only``,
    the form Nav2's obstacle and voxel layers read), little-endian."""
    if xyz_only:
        return xyz_cloud_msg(cloud.xyz, header)
    n = len(cloud)
    data = np.empty(n, _CLOUD_DTYPE)
    data["x"], data["y"], data["z"] = cloud.xyz[:, 0], cloud.xyz[:, 1], cloud.xyz[:, 2]
    data["score"], data["label"] = cloud.score, cloud.label
    return _cloud(data, _CLOUD_FIELDS, _CLOUD_DTYPE.itemsize, n, header)


def xyz_cloud_msg(xyz: np.ndarray, header: Header) -> PointCloud2:
    """(K, 3) points as an unorganised, dense x, y, z float32 PointCloud2."""
    return _cloud(np.ascontiguousarray(xyz, "<f4"), _XYZ_FIELDS, 12, int(xyz.shape[0]), header)


# the objects cloud: x, y, z, score float32, label uint16, (pad), instance uint32: 24 bytes a point
_OBJECTS_FIELDS = _CLOUD_FIELDS + [PointField(name="instance", offset=20, datatype=PointField.UINT32, count=1)]
_OBJECTS_DTYPE = np.dtype({"names": ["x", "y", "z", "score", "label", "instance"],
                           "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<u4"],
                           "offsets": [0, 4, 8, 12, 16, 20], "itemsize": 24})


def objects_cloud_msg(cloud: ObjectsCloud, header: Header) -> PointCloud2:
    """An unorganised, dense PointCloud2 of the objects' surface points: x, y, z, score, label
    (prompt index + 1) and instance (the object's id, as in ~/instances and ~/detections)."""
    n = len(cloud)
    data = np.empty(n, _OBJECTS_DTYPE)
    data["x"], data["y"], data["z"] = cloud.xyz[:, 0], cloud.xyz[:, 1], cloud.xyz[:, 2]
    data["score"], data["label"], data["instance"] = cloud.score, cloud.label, cloud.instance
    return _cloud(data, _OBJECTS_FIELDS, _OBJECTS_DTYPE.itemsize, n, header)


def organised_cloud_msg(xyz: np.ndarray, height: int, width: int, header: Header) -> PointCloud2:
    """An organised PointCloud2 (``height`` x ``width``, row-major: pixel (v, u) is point
    v * width + u) of x, y, z float32, NaN where there is no point (``is_dense`` false)."""
    data = np.ascontiguousarray(xyz, "<f4")
    msg = PointCloud2(header=header, height=int(height), width=int(width), fields=_XYZ_FIELDS, is_bigendian=False,
                      point_step=12, row_step=12 * int(width), is_dense=False)
    if data.size:
        msg.data.frombytes(memoryview(data).cast("B"))
    return msg


def _cloud(data: np.ndarray, fields: list, step: int, n: int, header: Header) -> PointCloud2:
    msg = PointCloud2(header=header, height=1, width=n, fields=fields, is_bigendian=False, point_step=step,
                      row_step=step * n, is_dense=True)
    if n:
        msg.data.frombytes(memoryview(data).cast("B"))
    return msg


def cloud_points(msg: PointCloud2) -> np.ndarray:
    """The points of a cloud made here (:func:`cloud_msg`, :func:`objects_cloud_msg`,
    :func:`organised_cloud_msg`) as a structured array (for tests and tools)."""
    dtype = {_CLOUD_DTYPE.itemsize: _CLOUD_DTYPE, _OBJECTS_DTYPE.itemsize: _OBJECTS_DTYPE}.get(
        msg.point_step, np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4")]))
    return np.frombuffer(bytes(msg.data), dtype)


def marker_array(scene: Scene | None, prompts: list[str], header: Header, lifetime_s: float) -> MarkerArray:
    """A DELETEALL, then per object with a 3D position a box (its oriented box: pose and size,
    at least 1 cm a side) and a label above it, coloured like the overlay, that RViz removes after
    ``lifetime_s`` unless a newer array replaces them. ``scene`` None: only the DELETEALL (a
    frame without usable depth, or the node stopping)."""
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    if scene is None:
        return MarkerArray(markers=markers)
    colours = palette(max(1, len(prompts)))
    lifetime = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1) * 1e9))
    for k, prompt_objects in enumerate(scene.objects):
        b, g, r = (int(c) for c in colours[k % len(colours)])
        colour = ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=0.5)
        for i, placed in enumerate(prompt_objects):
            where = placed.location
            if not where.has_position:
                continue
            pose, box_size, _ = box_pose(placed)
            if placed.location.box is None:  # (a position always comes with a box; kept for safety)
                pose = Pose(position=Point(x=where.box_center[0], y=where.box_center[1], z=where.box_center[2]),
                            orientation=Quaternion(w=1.0))
                box_size = Vector3(x=where.extent[0], y=where.extent[1], z=where.extent[2])
            x, y, z = where.box_center
            size = Vector3(x=max(box_size.x, 0.01), y=max(box_size.y, 0.01), z=max(box_size.z, 0.01))
            box = Marker(header=header, ns=prompts[k], id=2 * i, type=Marker.CUBE, action=Marker.ADD,
                         scale=size, color=colour, lifetime=lifetime, pose=pose)
            text = Marker(header=header, ns=prompts[k], id=2 * i + 1, type=Marker.TEXT_VIEW_FACING,
                          action=Marker.ADD, scale=Vector3(z=0.05), color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
                          text=f"{prompts[k]} {placed.object.max_score:.2f}", lifetime=lifetime)
            text.pose.position, text.pose.orientation.w = Point(x=x, y=y - where.extent[1] / 2 - 0.03, z=z), 1.0
            markers += [box, text]
    return MarkerArray(markers=markers)


def best_position_msg(placed: SceneObject | None, header: Header) -> PointStamped:
    """The best object's position; NaN x, y, z when the prompt has no object with a 3D position
    in this frame (a lost object: the last position is not current)."""
    x, y, z = placed.location.position if placed is not None else (math.nan,) * 3
    return PointStamped(header=header, point=Point(x=x, y=y, z=z))


_PLAIN_PROMPT = re.compile(r"[a-z0-9]+( [a-z0-9]+)*")
_DIGEST_WORD = re.compile(r"h[0-9a-f]{8}")


def topic_slug(prompt: str) -> str:
    """A prompt as one topic-name token, different for different prompts.

    A plain prompt (lower-case ASCII letters and digits, words separated by single spaces) reads
    as itself: 'door handle' -> 'door_handle', '3 cups' -> 'p_3_cups'. Any other prompt gets
    its letters and digits, lower case, then ``_h`` and 8 hex digits of the SHA-1 of its UTF-8
    text: 'Cup' -> 'cup_h<8>', 'door-handle' -> 'door_handle_h<8>', 'café' -> 'caf_h<8>', a
    CJK prompt -> 'prompt_h<8>'. A plain prompt whose last word looks like such a digest is
    hashed too, so the two forms never meet."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_") or "prompt"
    if slug[0].isdigit():
        slug = f"p_{slug}"
    if _PLAIN_PROMPT.fullmatch(prompt) and not _DIGEST_WORD.fullmatch(prompt.rsplit(" ", 1)[-1]):
        return slug
    return f"{slug}_h{hashlib.sha1(prompt.encode('utf-8')).hexdigest()[:8]}"


