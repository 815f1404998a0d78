"""3D from an aligned depth image: depth in metres, a pinhole camera, object positions, clouds.

No ROS in here. Coordinates are the depth image's optical frame (REP 103: x right, y down,
z forward), in metres. A depth pixel (u, v) with depth z is the point
((u - cx) z / fx, (v - cy) z / fy, z). Invalid depth (0, NaN, inf, negative) is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

from clipseg_ros.core.results.boxes import MAX_NORMAL_POINTS, OrientedBox, fit_oriented_box, row_ends, surface_normals
from clipseg_ros.core.results.grids import centre_indices, resample_nearest

NAN3 = (math.nan, math.nan, math.nan)


class DepthError(ValueError):
    """Depth or camera data that cannot be used; the message says why."""


# CameraInfo distortion models this node can undo (sensor_msgs/distortion_models.hpp).
RADTAN_MODELS = ("plumb_bob", "rational_polynomial")
FISHEYE_MODELS = ("equidistant",)
CAMERA_MODELS = ("auto", "rectified", "raw")


@dataclass(frozen=True)
class PinholeCamera:
    """How the depth image's pixels map to rays: focal lengths and principal point in pixels,
    its size, and (for a raw, distorted image) the distortion coefficients to undo.

    A pixel (u, v) (centres at integers) with depth z is the point (x z, y z, z), where (x, y)
    is the undistorted normalised ray: ((u - cx) / fx, (v - cy) / fy) without distortion."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: tuple[float, ...] = ()  # D, only when the image is raw (not rectified)
    distortion_model: str = ""

    @classmethod
    def from_k(cls, k: Sequence[float], width: int, height: int) -> "PinholeCamera":
        """From a row-major 3x3 K (CameraInfo.k), no distortion; DepthError for a
        zero/negative/non-finite focal length or an empty size."""
        fx, fy, cx, cy = float(k[0]), float(k[4]), float(k[2]), float(k[5])
        if not (math.isfinite(fx) and math.isfinite(fy) and fx > 0 and fy > 0):
            raise DepthError(f"camera info has focal lengths fx={fx:g}, fy={fy:g}: both must be > 0")
        if not (math.isfinite(cx) and math.isfinite(cy)):
            raise DepthError(f"camera info has principal point cx={cx:g}, cy={cy:g}: both must be finite")
        if width <= 0 or height <= 0:
            raise DepthError(f"camera info has size {width}x{height}")
        return cls(fx, fy, cx, cy, int(width), int(height))

    @classmethod
    def from_camera_info(cls, k: Sequence[float], d: Sequence[float], p: Sequence[float], distortion_model: str,
                         width: int, height: int, mode: str = "auto") -> "PinholeCamera":
        """The camera of an image described by a CameraInfo (image_geometry's conventions).

        ``mode`` says whether the image is rectified: ``rectified`` uses P (the projection of the
        rectified image; K when P is all zero), ``raw`` uses K and undoes D, ``auto`` decides from
        the CameraInfo: raw when D has a non-zero coefficient (the driver publishes the image as
        the lens made it), else rectified. A rectified image whose CameraInfo still carries the
        raw camera's D (image_proc's image_rect) needs ``rectified``."""
        if mode not in CAMERA_MODELS:
            raise DepthError(f"camera model '{mode}' is not one of {', '.join(CAMERA_MODELS)}")
        coefficients = tuple(float(c) for c in d)
        raw = mode == "raw" or (mode == "auto" and any(c != 0.0 for c in coefficients))
        if not raw:
            if len(p) == 12 and any(float(v) != 0.0 for v in p):
                return cls.from_k([p[0], p[1], p[2], p[4], p[5], p[6], p[8], p[9], p[10]], width, height)
            return cls.from_k(k, width, height)
        camera = cls.from_k(k, width, height)
        if not any(c != 0.0 for c in coefficients):
            return camera
        model = distortion_model.strip().lower()
        if model not in RADTAN_MODELS + FISHEYE_MODELS:
            raise DepthError(f"camera info has distortion model '{distortion_model}': only "
                             f"{', '.join(RADTAN_MODELS + FISHEYE_MODELS)} can be undone (or set the camera model "
                             "to rectified if the image already is)")
        if model in FISHEYE_MODELS and len(coefficients) != 4:
            raise DepthError(f"camera info has {len(coefficients)} equidistant coefficients: 4 are needed")
        if model in RADTAN_MODELS and len(coefficients) not in (4, 5, 8, 12, 14):
            raise DepthError(f"camera info has {len(coefficients)} {model} coefficients: 4, 5, 8, 12 or 14 are needed")
        return replace(camera, distortion=coefficients, distortion_model=model)

    @property
    def k(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def rays(self, us: np.ndarray, vs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) float32 normalised rays (z = 1) of pixel columns ``us`` and rows ``vs``
        (integers or sub-pixel positions)."""
        us = np.asarray(us)
        vs = np.asarray(vs)
        if not self.distortion:
            return ((us.astype(np.float32) - np.float32(self.cx)) / np.float32(self.fx),
                    (vs.astype(np.float32) - np.float32(self.cy)) / np.float32(self.fy))
        if us.dtype.kind in "iu" and vs.dtype.kind in "iu":
            table = _ray_table(self)  # every pixel's ray, once per camera
            ray = table[vs, us]
            return ray[..., 0], ray[..., 1]
        ray = _undistort(self, np.stack([us.ravel(), vs.ravel()], axis=1).astype(np.float64))
        return ray[:, 0].reshape(us.shape).astype(np.float32), ray[:, 1].reshape(us.shape).astype(np.float32)

    def points(self, us: np.ndarray, vs: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """(K, 3) float32 points for pixel columns ``us``, rows ``vs`` and depths ``zs``."""
        zs = np.asarray(zs).astype(np.float32)
        x, y = self.rays(us, vs)
        return np.stack([x * zs, y * zs, zs], axis=1)


def _undistort(camera: PinholeCamera, pixels: np.ndarray) -> np.ndarray:
    """(K, 2) pixels -> (K, 2) undistorted normalised rays (OpenCV's models, iterated to 1e-10)."""
    if pixels.shape[0] == 0:
        return np.zeros((0, 2))
    d = np.asarray(camera.distortion, np.float64)
    src = pixels.reshape(-1, 1, 2)
    if camera.distortion_model in FISHEYE_MODELS:
        out = cv2.fisheye.undistortPoints(src, camera.k, d, criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS,
                                                                      100, 1e-12))
    else:
        out = cv2.undistortPoints(src, camera.k, d, criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS,
                                                              100, 1e-12))
    return out.reshape(-1, 2)


@lru_cache(maxsize=4)
def _ray_table(camera: PinholeCamera) -> np.ndarray:
    """(H, W, 2) float32 rays of every pixel of a distorted camera (computed once: ~0.2 s at 720p)."""
    vs, us = np.mgrid[0:camera.height, 0:camera.width]
    rays = _undistort(camera, np.stack([us.ravel(), vs.ravel()], axis=1).astype(np.float64))
    return rays.reshape(camera.height, camera.width, 2).astype(np.float32)


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
    """A bool mask on any grid resampled (nearest, by pixel centres) to the depth image's (H, W)."""
    return resample_nearest(mask.astype(np.uint8), depth_size) > 0


# Registration check: the depth camera's focal lengths within this share, its principal point
# within this many depth pixels, of the colour camera's scaled to the depth image's size.
SAME_VIEW_FOCAL_TOLERANCE = 0.01
SAME_VIEW_CENTRE_TOLERANCE_PX = 1.5


def check_same_view(colour: PinholeCamera, depth: PinholeCamera) -> None:
    """DepthError unless the depth image is the colour image's view, at the same or another
    resolution (depth registered to colour, possibly decimated): its intrinsics are the colour
    camera's scaled by the ratio of the image sizes (pixel centres kept). A depth image with its
    own intrinsics (e.g. a RealSense's raw 848x480 depth beside 1280x720 colour) needs a
    registration this node does not do."""
    sx, sy = depth.width / colour.width, depth.height / colour.height
    expected = (colour.fx * sx, colour.fy * sy, (colour.cx + 0.5) * sx - 0.5, (colour.cy + 0.5) * sy - 0.5)
    focal_ok = all(abs(got / want - 1.0) <= SAME_VIEW_FOCAL_TOLERANCE
                   for got, want in ((depth.fx, expected[0]), (depth.fy, expected[1])))
    centre_ok = all(abs(got - want) <= SAME_VIEW_CENTRE_TOLERANCE_PX
                    for got, want in ((depth.cx, expected[2]), (depth.cy, expected[3])))
    if not (focal_ok and centre_ok):
        raise DepthError(
            f"depth {depth.width}x{depth.height} (fx {depth.fx:.1f}, fy {depth.fy:.1f}, cx {depth.cx:.1f}, "
            f"cy {depth.cy:.1f}) is not the {colour.width}x{colour.height} colour image's view (scaled, that would "
            f"be fx {expected[0]:.1f}, fy {expected[1]:.1f}, cx {expected[2]:.1f}, cy {expected[3]:.1f}): register "
            "depth to colour (e.g. RealSense aligned_depth_to_color)")


@dataclass(frozen=True)
class DepthSurface:
    """Where an object's surface is: its inverse depth is ``a (u - u0) + b (v - v0) + c`` over
    depth-image pixels (u, v) (any plane in 3D is such a function; a = b = 0 is one depth), and
    a point is on it when its depth is within ``band`` of the surface's there."""

    a: float
    b: float
    c: float
    u0: float
    v0: float
    band: float

    def depth_at(self, us: np.ndarray, vs: np.ndarray) -> np.ndarray:
        inverse = self.a * (us - self.u0) + self.b * (vs - self.v0) + self.c
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(inverse > 0, 1.0 / inverse, np.inf)

    def inliers(self, us: np.ndarray, vs: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """(K,) bool: which points are on the surface (NaN depth never is)."""
        with np.errstate(invalid="ignore"):
            return np.abs(zs - self.depth_at(us.astype(np.float64), vs.astype(np.float64))) <= self.band


def fit_surface(us: np.ndarray, vs: np.ndarray, zs: np.ndarray, band: float) -> DepthSurface:
    """The surface of the object whose valid depth pixels are ``us``, ``vs``, ``zs`` (K >= 1).

    Seed: the densest depth interval of width 2 ``band`` (the larger of two surfaces on either
    side of a depth edge; the nearer one on a tie), its median depth. Then an inverse-depth plane
    is fitted to the inliers and refitted (at most 3 times), kept while it keeps at least as many
    points: an oblique table is kept whole where a band around one depth cut it."""
    zs = zs.astype(np.float64)
    ordered = np.sort(zs)
    ends = np.searchsorted(ordered, ordered + 2.0 * band, side="right")
    first = int(np.argmax(ends - np.arange(ordered.size)))  # first maximum: the nearest densest interval
    low, high = ordered[first], ordered[first] + 2.0 * band
    seed = (zs >= low) & (zs <= high)
    u0, v0 = float(us.mean()), float(vs.mean())
    surface = DepthSurface(0.0, 0.0, 1.0 / float(np.median(zs[seed])), u0, v0, band)
    inside = surface.inliers(us, vs, zs)
    count = int(inside.sum())
    du, dv = us.astype(np.float64) - u0, vs.astype(np.float64) - v0
    for _ in range(3):
        if count < 3:
            break
        design = np.stack([du[inside], dv[inside], np.ones(count)], axis=1)
        if np.linalg.matrix_rank(design) < 3:
            break
        (a, b, c), *_ = np.linalg.lstsq(design, 1.0 / zs[inside], rcond=None)
        candidate = DepthSurface(float(a), float(b), float(c), u0, v0, band)
        candidate_inside = candidate.inliers(us, vs, zs)
        candidate_count = int(candidate_inside.sum())
        if candidate_count < count:
            break
        grew = candidate_count > count
        surface, inside, count = candidate, candidate_inside, candidate_count
        if not grew:
            break
    return surface


@dataclass(frozen=True)
class Position3D:
    """Where an object is, from its inlier points (on its :class:`DepthSurface`):
    ``position`` their per-axis median (robust to a few stray points), ``box_center`` and
    ``extent`` the axis-aligned box that holds every inlier pixel's footprint (centre = middle of
    the box, so position +- extent / 2 need not hold them all), ``valid_fraction`` the share of
    its pixels with valid depth, ``inliers`` how many points. NaN when no depth is valid."""

    position: tuple[float, float, float]
    extent: tuple[float, float, float]
    valid_fraction: float
    inliers: int
    box_center: tuple[float, float, float] = NAN3
    surface: DepthSurface | None = None
    box: OrientedBox | None = None  # the oriented box of the inlier points (clipseg_ros.core.results.boxes)
    spread: np.ndarray | None = field(default=None, compare=False)  # (3, 3) covariance of the inlier points, m^2

    @property
    def has_position(self) -> bool:
        return self.inliers > 0


NO_POSITION = Position3D(NAN3, NAN3, 0.0, 0)


def locate(depth_m: np.ndarray, pixels: np.ndarray, camera: PinholeCamera, depth_band: float) -> Position3D:
    """The 3D position of the object at ``pixels`` ((H, W) bool on the depth grid) from
    ``depth_m`` ((H, W) metres, NaN invalid): its points on the object's surface
    (:func:`fit_surface`), rejecting background seen through or beside the object."""
    vs, us = np.nonzero(pixels)
    return locate_pixels(depth_m, vs, us, camera, depth_band)


def locate_pixels(depth_m: np.ndarray, vs: np.ndarray, us: np.ndarray, camera: PinholeCamera,
                  depth_band: float, step: int = 1, window_end: tuple[int, int] | None = None) -> Position3D:
    """:func:`locate` for the object's pixel rows ``vs`` and columns ``us``. With ``step`` > 1
    they are samples on a grid of that step, each standing for the ``step`` x ``step`` pixels
    right of and below it (up to ``window_end`` (row, column), exclusive): the box covers those."""
    if vs.size == 0:
        return NO_POSITION
    zs = depth_m[vs, us]
    valid = np.isfinite(zs)
    if not valid.any():
        return NO_POSITION
    fraction = float(valid.sum()) / vs.size
    vs, us, zs = vs[valid], us[valid], zs[valid]
    surface = fit_surface(us, vs, zs, depth_band)
    keep = surface.inliers(us, vs, zs)
    vs, us, zs = vs[keep], us[keep], zs[keep]
    points = camera.points(us, vs, zs)
    position = tuple(float(v) for v in np.median(points, axis=0))
    # Each sample's footprint: from its pixel's top-left edge to the far edge of the pixels it stands for.
    end_v, end_u = window_end if window_end is not None else (depth_m.shape[0], depth_m.shape[1])
    right = np.minimum(us + step, end_u) - 0.5
    bottom = np.minimum(vs + step, end_v) - 0.5
    left_x, top_y = camera.rays(us - 0.5, vs - 0.5)
    right_x, bottom_y = camera.rays(right, bottom)
    z32 = zs.astype(np.float32)
    low = np.array([float((left_x * z32).min()), float((top_y * z32).min()), float(z32.min())])
    high = np.array([float((right_x * z32).max()), float((bottom_y * z32).max()), float(z32.max())])
    # the dominant normal needs no more than MAX_NORMAL_POINTS samples of the normals
    sample = np.linspace(0, vs.size - 1, min(vs.size, MAX_NORMAL_POINTS)).astype(np.int64)
    normals = np.full(points.shape, np.nan)
    normals[sample] = surface_normals(depth_m, camera, vs[sample], us[sample])
    sorted_rows = vs.size < 2 or bool((np.diff(vs) >= 0).all())  # np.nonzero's order: row by row
    box = fit_oriented_box(points, normals, row_ends(vs) if sorted_rows else None)
    spread = None
    if len(points) >= 2:
        centred = points - points.mean(axis=0)
        spread = (centred.T @ centred).astype(np.float64) / (len(points) - 1)
    return Position3D(position, tuple(float(v) for v in high - low), fraction, int(keep.sum()),
                      tuple(float(v) for v in (low + high) / 2), surface, box, spread)


@dataclass(frozen=True, eq=False)
class MaskedCloud:
    """Points of the chosen prompts: ``xyz`` (K, 3) float32 metres, ``label`` (K,) uint16 (k =
    prompts[k-1], as in the label image), ``score`` (K,) float32 probability."""

    xyz: np.ndarray
    label: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def strided_grid(depth_shape: tuple[int, int], stride: int) -> tuple[np.ndarray, np.ndarray]:
    """The depth rows and columns a cloud of ``stride`` samples: every ``stride``-th from 0."""
    step = max(1, int(stride))
    return np.arange(0, depth_shape[0], step), np.arange(0, depth_shape[1], step)


def masked_cloud(depth_m: np.ndarray, label: np.ndarray, masks: np.ndarray, camera: PinholeCamera,
                 labels: Sequence[int], stride: int = 1, max_points: int = 0,
                 keep: np.ndarray | None = None) -> MaskedCloud:
    """The points of depth pixels whose label is one of ``labels``, with valid depth, on every
    ``stride``-th row and column of the depth image (:func:`strided_grid`). ``label`` (h, w) and
    ``masks`` (N, h, w) uint8 are on the mask grid (the same view as the depth image, any
    resolution: each depth pixel takes the grid pixel under its centre); a point's score is its
    prompt's probability there. ``keep`` (rows, columns of the strided grid) bool, if given,
    also has to be true (e.g. the point is on its object's surface). More than ``max_points``
    (0 = no cap) are thinned evenly (every n-th)."""
    gh, gw = label.shape
    rows, cols = strided_grid(depth_m.shape, stride)
    grid_rows = centre_indices(depth_m.shape[0], gh)[rows]
    grid_cols = centre_indices(depth_m.shape[1], gw)[cols]
    sub_label = label[np.ix_(grid_rows, grid_cols)]
    wanted = np.isin(sub_label, np.asarray(list(labels), np.int64))
    if keep is not None:
        wanted &= keep
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


def depth_cloud(depth_m: np.ndarray, camera: PinholeCamera, stride: int = 1, max_points: int = 0,
                max_range: float = math.inf) -> np.ndarray:
    """(K, 3) float32: every valid depth point on the strided grid up to ``max_range`` m, thinned
    evenly beyond ``max_points``: what a costmap raytraces free space along (Nav2's clearing)."""
    rows, cols = strided_grid(depth_m.shape, stride)
    sub = depth_m[np.ix_(rows, cols)]
    with np.errstate(invalid="ignore"):
        vs, us = np.nonzero(np.isfinite(sub) & (sub <= max_range))
    if max_points and vs.size > max_points:
        pick = np.linspace(0, vs.size - 1, max_points).round().astype(np.int64)
        vs, us = vs[pick], us[pick]
    return camera.points(cols[us], rows[vs], sub[vs, us])


def nearest_stamp(stamps: Sequence[float], target: float, slop: float) -> int | None:
    """Index of the stamp equal to ``target``, else of the nearest one within ``slop`` seconds
    (the later one on a tie); None when none is that close."""
    best, best_gap = None, math.inf
    for i, stamp in enumerate(stamps):
        gap = abs(stamp - target)
        if gap <= slop and gap <= best_gap:
            best, best_gap = i, gap
    return best
