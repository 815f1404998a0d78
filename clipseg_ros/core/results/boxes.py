"""Oriented 3D boxes of objects seen in one depth image, for grasping.

No ROS in here. An object's points (its inliers on the depth surface: :mod:`geometry`) and their
surface normals (from the depth image, :func:`surface_normals`) give the box:

- its **z axis** is the dominant surface normal (the normal shared by the most points, pointing
  towards the camera): for a box, its largest visible face; for a table or a wall, the plane's
  normal;
- its **x and y axes** are those of the minimum-area rectangle (OpenCV ``minAreaRect``) holding
  the points projected onto the plane of that face; x is the longer side. A box's face
  orthogonal to z projects to the whole of that rectangle, so its edges come out exactly; for
  other shapes it is the tightest rectangle in that plane;
- **size** is the points' extent along each axis. ``size.z`` is what one view can see: from the
  face along z to the farthest visible point behind it (the visible sides' depth). The hidden back
  of an object is not seen: a box seen face-on has ``size.z`` 0, and the centre is the centre of
  the seen extent, on the visible surface side;
- with fewer than :data:`MIN_ORIENTED_POINTS` points with a normal, the box is axis-aligned
  (camera axes) around the points and ``oriented`` is False.

Frames: the depth camera's optical frame (x right, y down, z forward). The rotation's columns are
the box axes; :attr:`OrientedBox.quaternion` is (x, y, z, w), right-handed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

MIN_ORIENTED_POINTS = 30  # points with a normal; fewer: an axis-aligned box, flagged
NORMAL_AGREEMENT_DEG = 12.0  # normals within this angle count as one face's
MAX_NORMAL_STEP = 0.05  # m: a neighbour further than this in depth is across an edge, not on the face
MAX_NORMAL_POINTS = 1024  # a larger object's normals are sampled for the dominant direction


@dataclass(frozen=True, eq=False)  # __eq__ below: arrays compared by value
class OrientedBox:
    """``center`` (3,) metres; ``rotation`` (3, 3), columns = the box's x, y, z axes in the
    camera frame; ``size`` (3,) metres along them; ``oriented`` False for the axis-aligned
    fallback (too few points with a normal)."""

    center: np.ndarray
    rotation: np.ndarray
    size: np.ndarray
    oriented: bool

    def __eq__(self, other) -> bool:
        if not isinstance(other, OrientedBox):
            return NotImplemented
        return self.oriented == other.oriented and all(
            np.array_equal(a, b, equal_nan=True) for a, b in ((self.center, other.center),
                                                               (self.rotation, other.rotation), (self.size, other.size)))

    __hash__ = None

    @property
    def quaternion(self) -> tuple[float, float, float, float]:
        """(x, y, z, w) of :attr:`rotation`."""
        return rotation_to_quaternion(self.rotation)


def rotation_to_quaternion(r: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w), w >= 0, of a proper rotation matrix (Shepperd's method: stable everywhere)."""
    r = np.asarray(r, dtype=np.float64)
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = ((r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s)
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = (0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s)
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = ((r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = ((r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s, (r[1, 0] - r[0, 1]) / s)
    q = np.array(q) / np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return tuple(float(v) for v in q)


def surface_normals(depth_m: np.ndarray, camera, vs: np.ndarray, us: np.ndarray) -> np.ndarray:
    """(N, 3) unit normals at pixels (``vs``, ``us``) of ``depth_m`` ((H, W) metres, NaN
    invalid), pointing towards the camera; NaN where the pixel or its right/lower (else
    left/upper) neighbours have no depth or lie across a depth step (an edge)."""
    h, w = depth_m.shape
    vs, us = np.asarray(vs), np.asarray(us)
    u2 = np.where(us + 1 < w, us + 1, us - 1)
    v2 = np.where(vs + 1 < h, vs + 1, vs - 1)
    z0, zu, zv = depth_m[vs, us], depth_m[vs, u2], depth_m[v2, us]
    p0 = camera.points(us, vs, z0)
    pu = camera.points(u2, vs, zu)
    pv = camera.points(us, v2, zv)
    du = (pu - p0) * np.where(u2 > us, 1.0, -1.0)[:, None]
    dv = (pv - p0) * np.where(v2 > vs, 1.0, -1.0)[:, None]
    n = np.stack([du[:, 1] * dv[:, 2] - du[:, 2] * dv[:, 1], du[:, 2] * dv[:, 0] - du[:, 0] * dv[:, 2],
                  du[:, 0] * dv[:, 1] - du[:, 1] * dv[:, 0]], axis=1)  # du x dv (np.cross is 3x slower)
    length = np.linalg.norm(n, axis=1)
    bad = ~np.isfinite(length) | (length == 0) | (np.abs(zu - z0) > MAX_NORMAL_STEP) | (np.abs(zv - z0) > MAX_NORMAL_STEP)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = n / length[:, None]
    towards = np.sum(n * p0, axis=1) > 0  # a normal points away from the camera: flip it
    n[towards] = -n[towards]
    n[bad] = np.nan
    return n


def _dominant(normals: np.ndarray) -> tuple[np.ndarray, int]:
    """The direction most normals share (within NORMAL_AGREEMENT_DEG), and how many do."""
    if len(normals) > MAX_NORMAL_POINTS:
        normals = normals[np.linspace(0, len(normals) - 1, MAX_NORMAL_POINTS).astype(int)]
    cos = math.cos(math.radians(NORMAL_AGREEMENT_DEG))
    candidates = normals[np.linspace(0, len(normals) - 1, min(32, len(normals))).astype(int)]
    support = (candidates @ normals.T > cos).sum(axis=1)
    best = candidates[int(np.argmax(support))]
    for _ in range(3):  # refine: the mean of the normals that agree with it
        agree = normals[normals @ best > cos]
        if len(agree) == 0:
            break
        best = agree.mean(axis=0)
        best = best / np.linalg.norm(best)
    return best, int((normals @ best > cos).sum())


def row_ends(vs: np.ndarray) -> np.ndarray:
    """Indices of the first and last point of each run of equal ``vs`` (pixel rows, sorted)."""
    if vs.size == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.diff(vs, prepend=vs[0] - 1))
    ends = np.append(starts[1:] - 1, vs.size - 1)
    return np.unique(np.concatenate([starts, ends]))


def axis_aligned_box(points: np.ndarray) -> OrientedBox:
    low, high = points.min(axis=0), points.max(axis=0)
    return OrientedBox((low + high) / 2, np.eye(3), high - low, False)


def fit_oriented_box(points: np.ndarray, normals: np.ndarray, outline: np.ndarray | None = None) -> OrientedBox:
    """The oriented box of ``points`` ((N, 3) metres) whose surface ``normals`` ((N, 3), NaN
    where unknown) are given; see the module doc. ``outline`` (indices into ``points``), if
    given, are the points the in-plane rectangle is fitted to: for points seen in a depth image,
    each pixel row's first and last (:func:`row_ends`) hold every vertex of the region's convex
    hull, and a plane's projection keeps the hull's vertices, so the rectangle is the same for a
    fraction of the work."""
    points = np.asarray(points, dtype=np.float64)
    known = np.isfinite(normals).all(axis=1)
    if len(points) == 0:
        nan = np.full(3, np.nan)
        return OrientedBox(nan, np.eye(3), nan, False)
    if known.sum() < MIN_ORIENTED_POINTS:
        return axis_aligned_box(points)
    z_axis, _ = _dominant(np.asarray(normals, dtype=np.float64)[known])
    # two in-plane axes of the face, any pair; then the min-area rectangle turns them
    helper = np.array([1.0, 0.0, 0.0]) if abs(z_axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    a = np.cross(z_axis, helper)
    a /= np.linalg.norm(a)
    b = np.cross(z_axis, a)
    rim = points if outline is None else points[outline]
    plane = np.stack([rim @ a, rim @ b], axis=1)
    (cx, cy), (w, h), angle = cv2.minAreaRect(plane.astype(np.float32))
    theta = math.radians(angle)
    x_dir = math.cos(theta) * a + math.sin(theta) * b
    y_dir = -math.sin(theta) * a + math.cos(theta) * b
    if h > w:  # x along the longer side
        x_dir, y_dir = y_dir, -x_dir
    x_dir /= np.linalg.norm(x_dir)
    y_dir = np.cross(z_axis, x_dir)  # right-handed: x, y, z
    rotation = np.stack([x_dir, y_dir, z_axis], axis=1)
    flat = rim @ rotation[:, :2]
    depth = points @ z_axis
    low = np.array([flat[:, 0].min(), flat[:, 1].min(), depth.min()])
    high = np.array([flat[:, 0].max(), flat[:, 1].max(), depth.max()])
    return OrientedBox(rotation @ ((low + high) / 2), rotation, high - low, True)
