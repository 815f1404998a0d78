"""3D from an aligned depth image: depth in metres, a pinhole camera, object positions, clouds.

No ROS in here. Coordinates are the depth image's optical frame (REP 103: x right, y down,
z forward), in metres. A depth pixel (u, v) with depth z is the point
((u - cx) z / fx, (v - cy) z / fy, z). Invalid depth (0, NaN, inf, negative) is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

NAN3 = (math.nan, math.nan, math.nan)


class DepthError(ValueError):
    """Depth or camera data that cannot be used; the message says why."""


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics of the depth image: focal lengths and principal point in pixels, its size."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_k(cls, k: Sequence[float], width: int, height: int) -> "PinholeCamera":
        """From a row-major 3x3 K (CameraInfo.k); DepthError for a zero/negative/non-finite
        focal length or an empty size."""
        fx, fy, cx, cy = float(k[0]), float(k[4]), float(k[2]), float(k[5])
        if not (math.isfinite(fx) and math.isfinite(fy) and fx > 0 and fy > 0):
            raise DepthError(f"camera info has focal lengths fx={fx:g}, fy={fy:g}: both must be > 0")
        if width <= 0 or height <= 0:
            raise DepthError(f"camera info has size {width}x{height}")
        return cls(fx, fy, cx, cy, int(width), int(height))

    def points(self, us: np.ndarray, vs: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """(K, 3) float32 points for pixel columns ``us``, rows ``vs`` and depths ``zs``."""
        zs = zs.astype(np.float32)
        x = (us.astype(np.float32) - np.float32(self.cx)) * zs / np.float32(self.fx)
        y = (vs.astype(np.float32) - np.float32(self.cy)) * zs / np.float32(self.fy)
        return np.stack([x, y, zs], axis=1)


def depth_in_metres(depth: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W) float32 metres, NaN where invalid: 16UC1/mono16 in millimetres, 32FC1 in metres
    (REP 118). DepthError for another encoding."""
    enc = encoding.lower()
    if enc in ("16uc1", "mono16"):
        metres = depth.astype(np.float32) / np.float32(1000.0)  # correctly rounded: 1500 mm is 1.5 m exactly as a float32 1.5
    elif enc == "32fc1":
        metres = np.array(depth, np.float32)
    else:
        raise DepthError(f"depth encoding '{encoding}' is not 16UC1 (mm) or 32FC1 (m)")
    metres[~(np.isfinite(metres) & (metres > 0))] = np.nan
    return metres


def mask_to_depth_grid(mask: np.ndarray, depth_size: tuple[int, int]) -> np.ndarray:
    """A bool mask on any grid resampled (nearest) to the depth image's (H, W)."""
    if mask.shape == tuple(depth_size):
        return mask
    return cv2.resize(mask.astype(np.uint8), (depth_size[1], depth_size[0]), interpolation=cv2.INTER_NEAREST) > 0


def check_same_view(colour_size: tuple[int, int], depth_size: tuple[int, int], tolerance: float = 0.01) -> None:
    """DepthError unless the depth image is the colour image's view at the same or another
    resolution (equal aspect ratio within ``tolerance``): depth registered to colour, possibly
    decimated. Anything else needs a registration this node does not do."""
    ch, cw = colour_size
    dh, dw = depth_size
    if (ch, cw) == (dh, dw):
        return
    if abs((cw / ch) / (dw / dh) - 1.0) > tolerance:
        raise DepthError(f"depth {dw}x{dh} is not the {cw}x{ch} colour image's view at another scale: register "
                         "depth to colour (e.g. RealSense aligned_depth_to_color)")


@dataclass(frozen=True)
class Position3D:
    """Where an object is: ``position`` (median of its inlier points), ``extent`` (their size
    per axis, max - min), ``valid_fraction`` (share of its pixels with valid depth) and
    ``inliers`` (points within ``depth_band`` of the median depth). NaN when no depth is valid."""

    position: tuple[float, float, float]
    extent: tuple[float, float, float]
    valid_fraction: float
    inliers: int

    @property
    def has_position(self) -> bool:
        return self.inliers > 0


NO_POSITION = Position3D(NAN3, NAN3, 0.0, 0)


def locate(depth_m: np.ndarray, pixels: np.ndarray, camera: PinholeCamera, depth_band: float) -> Position3D:
    """The 3D position of the object at ``pixels`` ((H, W) bool on the depth grid) from
    ``depth_m`` ((H, W) metres, NaN invalid): the points whose depth is within ``depth_band``
    of the median valid depth (rejecting background seen through or beside the object)."""
    vs, us = np.nonzero(pixels)
    return locate_pixels(depth_m, vs, us, camera, depth_band)


def locate_pixels(depth_m: np.ndarray, vs: np.ndarray, us: np.ndarray, camera: PinholeCamera,
                  depth_band: float) -> Position3D:
    """:func:`locate` for the object's pixel rows ``vs`` and columns ``us``."""
    if vs.size == 0:
        return NO_POSITION
    zs = depth_m[vs, us]
    valid = np.isfinite(zs)
    if not valid.any():
        return NO_POSITION
    fraction = float(valid.sum()) / vs.size
    median = float(np.median(zs[valid]))
    keep = valid & (np.abs(zs - median) <= depth_band)
    points = camera.points(us[keep], vs[keep], zs[keep])
    position = tuple(float(v) for v in np.median(points, axis=0))
    extent = tuple(float(v) for v in points.max(axis=0) - points.min(axis=0))
    return Position3D(position, extent, fraction, int(keep.sum()))


@dataclass(frozen=True, eq=False)
class MaskedCloud:
    """Points of the chosen prompts: ``xyz`` (K, 3) float32 metres, ``label`` (K,) uint16 (k =
    prompts[k-1], as in the label image), ``score`` (K,) float32 probability."""

    xyz: np.ndarray
    label: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def masked_cloud(depth_m: np.ndarray, label: np.ndarray, masks: np.ndarray, camera: PinholeCamera,
                 labels: Sequence[int], stride: int = 1, max_points: int = 0) -> MaskedCloud:
    """The points of depth pixels whose label is one of ``labels``, with valid depth, on every
    ``stride``-th row and column of the depth image. ``label`` (h, w) and ``masks`` (N, h, w)
    uint8 are on the mask grid (the same view as the depth image, any resolution: each depth
    pixel takes the nearest grid pixel); a point's score is its prompt's probability there. More
    than ``max_points`` (0 = no cap) are thinned evenly (every n-th)."""
    dh, dw = depth_m.shape
    gh, gw = label.shape
    step = max(1, int(stride))
    rows, cols = np.arange(0, dh, step), np.arange(0, dw, step)
    grid_rows = np.minimum(((rows + 0.5) * gh / dh).astype(np.int64), gh - 1)
    grid_cols = np.minimum(((cols + 0.5) * gw / dw).astype(np.int64), gw - 1)
    sub_label = label[np.ix_(grid_rows, grid_cols)]
    wanted = np.isin(sub_label, np.asarray(list(labels), np.int64))
    vs, us = np.nonzero(wanted)
    zs = depth_m[rows[vs], cols[us]]
    valid = np.isfinite(zs)
    vs, us, zs = vs[valid], us[valid], zs[valid]
    if max_points and vs.size > max_points:
        pick = np.linspace(0, vs.size - 1, max_points).round().astype(np.int64)
        vs, us, zs = vs[pick], us[pick], zs[pick]
    point_label = sub_label[vs, us].astype(np.uint16)
    score = masks[point_label.astype(np.int64) - 1, grid_rows[vs], grid_cols[us]].astype(np.float32) / np.float32(255)
    return MaskedCloud(camera.points(cols[us], rows[vs], zs), point_label, score)


def nearest_stamp(stamps: Sequence[float], target: float, slop: float) -> int | None:
    """Index of the stamp equal to ``target``, else of the nearest one within ``slop`` seconds
    (the later one on a tie); None when none is that close."""
    best, best_gap = None, math.inf
    for i, stamp in enumerate(stamps):
        gap = abs(stamp - target)
        if gap <= slop and gap <= best_gap:
            best, best_gap = i, gap
    return best
