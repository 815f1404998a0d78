"""Edge-aware refinement of CLIPSeg's probability maps with the camera image and the depth image.

No ROS in here. CLIPSeg sees 16 px patches of a 352x352 input: its masks are blobs that cross
object edges by up to a patch. The camera image and the aligned depth image have the edges the
model lacks. Each prompt's probability map is refined at the output resolution by a guided filter
(He, Sun, Tang, "Guided Image Filtering", TPAMI 2013; subsampled as in He and Sun, "Fast Guided
Filter", 2015): in every window the refined probability is a linear function of the guide, fitted
to the model's probabilities. Where a window holds two colours (or two depths), a pixel of each
gets the share of that colour's pixels the model marked there, so a mask that crosses an edge by
less than half the window's pixels of that side falls back to the edge, and a mask that stops
short of one grows to it. Where the guide is flat (no edge), the model's map is kept as it is.

Modes (``mode``): ``none``; ``guided`` (guide: the camera image, RGB); ``depth`` (guide: the
depth image, one channel); ``guided+depth`` (both, a 4-channel guide). A depth change of
``depth_step`` metres counts like a black-to-white edge in one colour channel. Invalid depth
(0, NaN, inf) takes the frame's farthest valid depth. Depth modes then apply one hard rule: a
mask pixel that is cut off from its region's interior by a depth step larger than ``depth_step``
is removed (see :meth:`DepthSteps.cut`), so a mask does not leak across a depth step.

Arrays: masks (N, H, W) uint8 (probability * 255, as published), the image (Hi, Wi, 3) uint8
RGB and depth (Hd, Wd) float32 metres, each at any resolution of the same view (resampled to the
mask grid). Probabilities stay probabilities: the filter is linear in them, so thresholds keep
their meaning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Sequence

import cv2
import numpy as np

from clipseg_ros.core.results.grids import resample_nearest
from clipseg_ros.core.results.postprocess import SegmentationResult, at_least, mask_level, result_from_masks

REFINE_MODES = ("none", "guided", "depth", "guided+depth")
MODEL_PATCH = 16 / 352  # one model patch as a share of the image's width and height
STRUCTURE_SHARE = 0.01  # see fast_guided_filter
SMALL_GRID = 160  # the fast guided filter's statistics are computed on a grid about this wide (short side)


@dataclass(frozen=True)
class RefineOptions:
    """``mode`` (see the module doc); ``radius``: the window's half-size in model patches (a patch
    is 16/352 of the image's width and of its height); ``eps``: the filter's regularisation in
    (0-1 colour units)^2 (edges of less contrast than about its square root are smoothed over);
    ``depth_step``: metres, the smallest depth change that is an edge."""

    mode: str = "guided+depth"
    radius: float = 4.0
    eps: float = 1e-3
    depth_step: float = 0.05

    def __post_init__(self):
        if self.mode not in REFINE_MODES:
            raise ValueError(f"refine mode must be one of {', '.join(REFINE_MODES)}, not {self.mode!r}")
        if not self.radius > 0 or not self.eps > 0 or not self.depth_step > 0:
            raise ValueError(f"radius, eps and depth_step must be > 0 (got {self.radius}, {self.eps}, "
                             f"{self.depth_step})")


@dataclass(frozen=True, eq=False)
class RefinedMasks:
    """The refined (N, H, W) uint8 masks and the mode that ran (``depth`` modes fall back when
    the frame has no depth image: ``guided+depth`` -> ``guided``, ``depth`` -> ``none``)."""

    masks: np.ndarray
    mode: str


def mode_that_runs(mode: str, has_depth: bool) -> str:
    """The refinement a frame gets: depth modes need a depth image."""
    if has_depth or mode in ("none", "guided"):
        return mode
    return "guided" if mode == "guided+depth" else "none"


def refine_masks(masks: np.ndarray, image_rgb: np.ndarray, depth_metres: np.ndarray | None,
                 options: RefineOptions, thresholds: Sequence[float] | None = None) -> RefinedMasks:
    """Refine every prompt's (N, H, W) uint8 mask with the (Hi, Wi, 3) uint8 RGB image and, in the
    depth modes, the (Hd, Wd) float32 depth in metres (None: no depth for this frame).
    ``thresholds``: each prompt's (default 0.4 for all): the depth cut applies to the pixels that
    reach it."""
    mode = mode_that_runs(options.mode, depth_metres is not None)
    if mode == "none" or masks.shape[0] == 0:
        return RefinedMasks(masks, mode)
    grid = masks.shape[1:]
    channels = []
    if mode in ("guided", "guided+depth"):
        channels.append(colour_guide(image_rgb, grid))
    depth = None
    if mode in ("depth", "guided+depth"):
        depth = resample_nearest(depth_metres.astype(np.float32, copy=False), grid)
        channels.append(depth_guide(depth, options.depth_step)[..., None])
    guide = channels[0] if len(channels) == 1 else np.concatenate(channels, axis=2)
    radius = (max(1.0, options.radius * MODEL_PATCH * grid[0]), max(1.0, options.radius * MODEL_PATCH * grid[1]))
    out = fast_guided_filter(guide, masks, radius, options.eps)
    if depth is not None:
        steps = DepthSteps(depth, options.depth_step)
        levels = [mask_level(t) for t in (thresholds if thresholds is not None else [0.4] * out.shape[0])]
        for k in range(out.shape[0]):
            steps.cut(out[k], options.radius * MODEL_PATCH * min(grid), levels[k])
    return RefinedMasks(out, mode)


def refine_result(result: SegmentationResult, image_rgb: np.ndarray, depth_metres: np.ndarray | None,
                  options: RefineOptions) -> SegmentationResult:
    """``result`` with refined masks (:func:`refine_masks`) and its label and stats recomputed from
    them; ``max_score`` stays the model's own; ``refinement`` says which mode ran and
    ``timings_ms["refine"]`` what it took."""
    start = time.perf_counter()
    refined = refine_masks(result.masks, image_rgb, depth_metres, options, result.prompt_thresholds)
    if refined.mode == "none":
        return replace(result, refinement="none")
    out = result_from_masks(refined.masks, result)
    stats = [replace(new, max_score=old.max_score) for new, old in zip(out.stats, result.stats)]
    timings = dict(result.timings_ms, refine=(time.perf_counter() - start) * 1e3)
    return replace(out, stats=stats, timings_ms=timings, refinement=refined.mode)


def colour_guide(image_rgb: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float32 in 0-1: the image on the mask grid (area-averaged when smaller)."""
    h, w = grid
    if image_rgb.shape[:2] != (h, w):
        shrinking = h < image_rgb.shape[0] or w < image_rgb.shape[1]
        image_rgb = cv2.resize(image_rgb, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return image_rgb.astype(np.float32) * np.float32(1 / 255)


def depth_guide(depth: np.ndarray, depth_step: float) -> np.ndarray:
    """(H, W) float32: depth in units of ``depth_step``; invalid pixels take the farthest valid depth."""
    valid = np.isfinite(depth) & (depth > 0)
    far = float(depth[valid].max()) if valid.any() else 0.0
    return np.where(valid, depth, np.float32(far)).astype(np.float32) * np.float32(1 / depth_step)


def fast_guided_filter(guide: np.ndarray, masks: np.ndarray, radius: tuple[float, float], eps: float,
                       small_grid: int = SMALL_GRID) -> np.ndarray:
    """The guided filter of each of the (N, H, W) uint8 ``masks`` (probability * 255) with ``guide``
    (H, W, C) float32 (or (H, W)), windows of half-size ``radius`` (rows, columns) pixels,
    regularisation ``eps``; returns (N, H, W) uint8. The linear coefficients are fitted on a grid
    subsampled to about ``small_grid`` pixels on the short side and applied to the
    full-resolution guide. Where the guide has no structure (its variance is small against
    ``eps``) a mask is kept as it is rather than blurred: the output is ``s * filtered + (1 - s)
    * mask`` with ``s = var / (var + eps)`` of the guide's windows (averaged like the
    coefficients)."""
    if guide.ndim == 2:
        guide = guide[..., None]
    h, w, c = guide.shape
    n = masks.shape[0]
    step = max(1, min(h, w) // small_grid)
    sh, sw = max(1, h // step), max(1, w // step)
    ry, rx = max(1, int(round(radius[0] / step))), max(1, int(round(radius[1] / step)))

    def box(plane: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(plane, -1, (2 * rx + 1, 2 * ry + 1), normalize=True, borderType=cv2.BORDER_REFLECT)

    # channel-first planes on the small grid: every row operation below runs over whole planes
    small_guide = [_shrink(np.ascontiguousarray(guide[..., i]), (sh, sw)) for i in range(c)]
    small_p = [_shrink(m, (sh, sw)).astype(np.float32) * np.float32(1 / 255) for m in masks]
    mean_i = [box(g) for g in small_guide]
    sigma = np.empty((c, c, sh, sw), np.float32)
    for i in range(c):
        for j in range(i, c):
            sigma[i, j] = sigma[j, i] = box(small_guide[i] * small_guide[j]) - mean_i[i] * mean_i[j]
    variance = np.trace(sigma)
    # 0 where the guide is flat, near 1 from a hundredth of eps up: a weak edge still counts
    structure = variance / (variance + np.float32(eps * STRUCTURE_SHARE))
    sigma += np.eye(c, dtype=np.float32)[:, :, None, None] * np.float32(eps)
    mean_p = [box(p) for p in small_p]
    covariance = np.empty((c, n, sh, sw), np.float32)
    for i in range(c):
        for k in range(n):
            covariance[i, k] = box(small_guide[i] * small_p[k]) - mean_i[i] * mean_p[k]
    a = solve_positive_definite(sigma, covariance)  # (c, n, sh, sw)
    keep = cv2.resize(1.0 - box(structure), (w, h), interpolation=cv2.INTER_LINEAR)  # the mask's own share
    margin_y, margin_x = 2 * (ry + 1) * step, 2 * (rx + 1) * step  # how far a mask's values can spread
    sum_channels = np.ones(c, np.float32)
    out = np.zeros((n, h, w), np.uint8)
    for k in range(n):
        x, y, bw, bh = cv2.boundingRect(masks[k])
        if bw == 0:
            continue  # an empty mask stays empty
        # only the mask's box and what the windows reach from it can change
        x0, y0 = max(0, x - margin_x), max(0, y - margin_y)
        x1, y1 = min(w, x + bw + margin_x), min(h, y + bh + margin_y)
        crop = (slice(y0, y1), slice(x0, x1))
        b = mean_p[k] - sum(a[i, k] * mean_i[i] for i in range(c))
        # coefficients weighted by the structure, averaged over the windows, then at full size
        # (resizing the whole small plane is ~7x cheaper than warping just the crop)
        slopes = cv2.resize(cv2.merge([box(a[i, k] * structure) for i in range(c)]), (w, h),
                            interpolation=cv2.INTER_LINEAR)
        slopes = slopes.reshape(h, w, c)[crop]
        weighted = cv2.multiply(np.ascontiguousarray(slopes), np.ascontiguousarray(guide[crop]))
        q = (weighted.reshape(-1, c) @ sum_channels).reshape(y1 - y0, x1 - x0)  # BLAS: 4x faster than cv2.transform
        q += cv2.resize(box(b * structure), (w, h), interpolation=cv2.INTER_LINEAR)[crop]
        q += cv2.multiply(keep[crop], masks[k][crop], dtype=cv2.CV_32F, scale=1 / 255)
        cv2.convertScaleAbs(q, dst=out[k][crop], alpha=255.0)  # round + saturate to uint8
    return out


def _shrink(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One (H, W) plane area-averaged to ``size`` (rows, columns)."""
    return plane if plane.shape == tuple(size) else cv2.resize(plane, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def solve_positive_definite(matrices: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """X with ``matrices X = rhs`` per pixel, for (c, c, ...) symmetric positive definite
    matrices and (c, n, ...) right-hand sides (pixels last: each row operation runs over
    contiguous planes), by Gauss-Jordan elimination over all pixels at once (such matrices need
    no pivoting; for a guide's few channels this was 4-5x faster than numpy's batched inverse here).
    Returns (c, n, ...) float32."""
    c = matrices.shape[0]
    augmented = np.concatenate([matrices, rhs], axis=1).astype(np.float32)  # (c, c + n, ...)
    for i in range(c):
        augmented[i] /= augmented[i, i]
        for j in range(c):
            if j != i:
                augmented[j] -= augmented[j, i] * augmented[i]
    return augmented[:, c:]


class DepthSteps:
    """The depth steps of one frame on the mask grid, for :meth:`cut`: computed once, used for
    every prompt. A step is a pair of 8-neighbours whose depths (both valid) differ by more than
    ``depth_step``; its far pixel is an edge pixel."""

    def __init__(self, depth: np.ndarray, depth_step: float):
        valid = np.isfinite(depth) & (depth > 0)
        d = np.where(valid, depth, np.nan).astype(np.float32)
        self._depth, self.depth_step = d, depth_step
        self.edges = np.zeros(d.shape, bool)  # far side of a step: an 8-neighbour more than depth_step nearer
        self._same_surface = []  # per neighbour (as _neighbours): it is valid and within depth_step
        with np.errstate(invalid="ignore"):
            for neighbour in _neighbours(d, np.nan):
                self.edges |= d - neighbour > depth_step
                self._same_surface.append(np.abs(d - neighbour) <= depth_step)

    def cut(self, mask: np.ndarray, interior: float, level: int) -> None:
        """In place, on one (H, W) uint8 mask (probability * 255): remove (set to 0) the pixels at or
        above ``level`` (the prompt's threshold) cut off from their region's interior by depth steps. A region's interior is its pixels
        more than ``interior`` pixels (about a model patch) from its border; a region without one
        (thin, or apart from the rest) is left whole unless it lies more than ``depth_step`` behind a
        kept pixel less than ``interior`` away. Cut off parts are what a coarse mask puts on the far side of an
        object's edge. Edge pixels (the far side's rim) stay when they touch a kept pixel of their
        own surface."""
        x, y, bw, bh = cv2.boundingRect(at_least(mask, level))
        if bw == 0:
            return
        window = (slice(max(0, y - 1), y + bh + 1), slice(max(0, x - 1), x + bw + 1))
        self._cut(mask[window], interior, level, window)

    def _cut(self, mask: np.ndarray, interior: float, level: int, window) -> None:
        inside = at_least(mask, level) // 255
        edges = self.edges[window] & (inside > 0)
        if not edges.any():
            return
        size = 2 * max(1, int(round(interior))) + 1
        core = cv2.erode(inside, cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))) > 0
        if not core.any():
            return
        regions_count, regions = cv2.connectedComponents(inside, connectivity=8)
        pieces_count, pieces = cv2.connectedComponents(np.where(edges, 0, inside).astype(np.uint8), connectivity=8)
        region_has_core = np.zeros(regions_count, bool)
        region_has_core[regions[core]] = True
        piece_has_core = np.zeros(pieces_count, bool)
        piece_has_core[pieces[core]] = True
        piece_has_core[0] = False
        kept = piece_has_core[pieces]
        # a region without interior (thin, or a sliver apart from the rest) stays unless it lies
        # more than a step behind a kept pixel less than ``interior`` away (a leak cut loose)
        depth = self._depth[window]
        kept_depth = np.where(kept, depth, np.inf).astype(np.float32)
        nearest_kept = cv2.erode(kept_depth, cv2.getStructuringElement(cv2.MORPH_RECT, (size, size)),
                                 borderType=cv2.BORDER_CONSTANT, borderValue=np.inf)
        with np.errstate(invalid="ignore"):
            behind = depth - nearest_kept > self.depth_step
        kept |= (inside > 0) & ~region_has_core[regions] & ~edges & ~behind
        rim = np.zeros(mask.shape, bool)
        for neighbour_kept, same in zip(_neighbours(kept, False), self._same_surface):
            rim |= neighbour_kept & same[window]
        mask[(inside > 0) & ~kept & ~(edges & rim)] = 0

    def split(self, inside: np.ndarray):
        """The 8-connected parts of one (H, W) uint8 mask (non-zero inside) that no depth step
        crosses, as ``cv2.connectedComponentsWithStats`` gives them: (count, uint16 labels,
        (count, 5) int32 stats x, y, width, height, area, (count, 2) float64 centroids). Edge
        pixels join a part of their own surface they touch (within two pixels); those that touch
        none are left out (label 0)."""
        inside = inside > 0
        count, labels = cv2.connectedComponents((inside & ~self.edges).astype(np.uint8), connectivity=8,
                                                ltype=cv2.CV_16U)
        h, w = labels.shape
        for _ in range(2):  # a rim two pixels thick (a diagonal step) still joins its surface
            waiting = inside & (labels == 0)
            if not waiting.any():
                break
            for neighbour, same in zip(_neighbours(labels.copy(), 0), self._same_surface):
                take = waiting & same & (neighbour > 0)
                labels[take] = neighbour[take]
                waiting &= ~take
        ys, xs = np.nonzero(labels)
        which = labels[ys, xs].astype(np.intp)
        area = np.bincount(which, minlength=count)
        stats = np.zeros((count, 5), np.int32)
        centroids = np.zeros((count, 2), np.float64)
        x_min, y_min = np.full(count, w, np.int64), np.full(count, h, np.int64)
        x_max, y_max = np.full(count, -1, np.int64), np.full(count, -1, np.int64)
        np.minimum.at(x_min, which, xs)
        np.minimum.at(y_min, which, ys)
        np.maximum.at(x_max, which, xs)
        np.maximum.at(y_max, which, ys)
        present = area > 0
        stats[present, 0], stats[present, 1] = x_min[present], y_min[present]
        stats[present, 2], stats[present, 3] = (x_max - x_min + 1)[present], (y_max - y_min + 1)[present]
        stats[:, 4] = area
        with np.errstate(invalid="ignore", divide="ignore"):
            centroids[:, 0] = np.bincount(which, weights=xs, minlength=count) / area
            centroids[:, 1] = np.bincount(which, weights=ys, minlength=count) / area
        stats[0] = 0
        return count, labels, stats, centroids


def _neighbours(plane: np.ndarray, fill):
    """The (H, W) views of each of a plane's 8 neighbours (``fill`` beyond the border), always in
    the same order (the order of :class:`DepthSteps`' per-neighbour planes)."""
    h, w = plane.shape
    padded = np.pad(plane, 1, constant_values=fill)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                yield padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
