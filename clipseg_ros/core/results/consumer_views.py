"""Per-pixel and per-object views of a frame, in the forms grasping and navigation stacks take.

No ROS in here. From one frame's :class:`~.postprocess.SegmentationResult` and its (tracked)
:class:`~.scene.Scene`:

- :func:`instance_ids`: one id per object, the same in the instance image, the objects cloud and
  the detections: its track id (folded into 1..65535 for the uint16 image: ids 65535 apart share
  a value, which two live tracks never are), or, without tracking, its 1-based rank in the frame
  (prompt by prompt, best object first);
- :func:`instance_image`: (h, w) uint16 on the label grid, each pixel the id of the object it
  belongs to under the label image's prompt, 0 = none (Contact-GraspNet's segmap);
- :func:`confidence_image`: (h, w) uint8, each pixel the probability (x255, as the masks) of the
  prompt the label gives it, 0 where none (the semantic segmentation layer's confidence);
- :func:`target_mask`: (H, W) uint8 at the colour frame's size, 255 on one prompt's best object
  (or all of its objects), 0 elsewhere (FoundationPose's segmentation input);
- :func:`aligned_cloud`: (h * w, 3) float32, row-major on the label grid, each pixel's 3D point
  from the depth pixel under its centre, NaN without depth (the layer's pixel-aligned cloud);
- :func:`objects_cloud`: the points on each object's surface with its prompt and instance id.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from clipseg_ros.core.results.grids import centre_indices, covering_window, resample_nearest
from clipseg_ros.core.results.postprocess import SegmentationResult
from clipseg_ros.core.results.scene import Scene

INSTANCE_MAX = 65535  # a uint16 image's largest value


def instance_value(track_id: int) -> int:
    """A track id in 1..65535 (what the instance image can hold)."""
    return (int(track_id) - 1) % INSTANCE_MAX + 1


def instance_ids(scene: Scene) -> list[list[int]]:
    """Per prompt, per object (as in ``scene.objects``): its instance id (see the module doc)."""
    ids, rank = [], 0
    for objects in scene.objects:
        row = []
        for placed in objects:
            rank += 1
            row.append(instance_value(placed.track.id) if placed.track is not None else rank)
        ids.append(row)
    return ids


def _object_pixels(result: SegmentationResult, scene: Scene, k: int, placed) -> tuple[tuple[int, int, int, int],
                                                                                       np.ndarray]:
    """(window, (y1-y0, x1-x0) bool): ``placed``'s pixels on the label grid where the label gives
    prompt ``k``, inside its box only (each label pixel takes the component under its centre)."""
    components = scene.components[k]
    grid = result.label.shape
    y0, y1, x0, x1 = covering_window(placed.object.grid_bbox, components.shape, grid)
    rows = centre_indices(grid[0], components.shape[0])[y0:y1]
    cols = centre_indices(grid[1], components.shape[1])[x0:x1]
    mine = (components[np.ix_(rows, cols)] == placed.object.component) & (result.label[y0:y1, x0:x1] == k + 1)
    return (y0, y1, x0, x1), mine


def instance_image(result: SegmentationResult, scene: Scene) -> np.ndarray:
    """(h, w) uint16 on the label grid: each object's pixels (where the label gives its prompt)
    hold its instance id; 0 elsewhere."""
    out = np.zeros(result.label.shape, np.uint16)
    for k, (objects, ids) in enumerate(zip(scene.objects, instance_ids(scene))):
        if not objects or k >= len(scene.components) or scene.components[k] is None:
            continue
        for placed, value in zip(objects, ids):
            (y0, y1, x0, x1), mine = _object_pixels(result, scene, k, placed)
            out[y0:y1, x0:x1][mine] = value
    return out


def confidence_image(result: SegmentationResult) -> np.ndarray:
    """(h, w) uint8: ``masks[label - 1]`` at each pixel, 0 where the label is 0."""
    label = result.label
    n = result.masks.shape[0]
    picked = np.zeros(label.shape, np.uint8)
    if label.size < 64:  # OpenCV takes a 1x1 or 1xN array for a scalar: numpy for such tiny images
        for k in range(n):
            mine = label == k + 1
            picked[mine] = result.masks[k][mine]
        return picked
    # OpenCV's masked copy per prompt: 0.3 ms at 640x480 with 8 prompts (a numpy gather: 5.7 ms)
    for k in range(n):
        cv2.copyTo(np.ascontiguousarray(result.masks[k]), (label == k + 1).view(np.uint8), picked)
    return picked


def target_mask(result: SegmentationResult, scene: Scene, prompt: str, all_objects: bool = False) -> np.ndarray:
    """(H, W) uint8 at the input image's size: 255 on ``prompt``'s best object (its first in
    ``scene``), or on every object of it with ``all_objects``; all 0 when the prompt is not
    active or has no object in this frame."""
    size = tuple(int(v) for v in result.image_size)
    if prompt not in result.prompts:
        return np.zeros(size, np.uint8)
    k = list(result.prompts).index(prompt)
    objects = scene.objects[k] if k < len(scene.objects) else ()
    components = scene.components[k] if k < len(scene.components) else None
    if not objects or components is None:
        return np.zeros(size, np.uint8)
    chosen = objects if all_objects else objects[:1]
    label_grid = np.zeros(result.label.shape, np.uint8)
    for placed in chosen:
        (y0, y1, x0, x1), mine = _object_pixels(result, scene, k, placed)
        label_grid[y0:y1, x0:x1][mine] = 255
    return resample_nearest(label_grid, size)


def aligned_cloud(result: SegmentationResult, scene: Scene) -> np.ndarray | None:
    """(h * w, 3) float32 on the label grid (row-major: the label image's pixel order), NaN where
    the depth pixel under the label pixel's centre has no depth; None without depth."""
    depth = scene.depth
    if depth is None:
        return None
    lh, lw = result.label.shape
    dh, dw = depth.metres.shape
    rows, cols = centre_indices(lh, dh), centre_indices(lw, dw)
    zs = depth.metres[np.ix_(rows, cols)]
    rays = _grid_rays(depth.camera, lh, lw)
    out = np.empty((lh, lw, 3), np.float32)
    np.multiply(rays[..., 0], zs, out=out[..., 0])
    np.multiply(rays[..., 1], zs, out=out[..., 1])
    out[..., 2] = zs
    return out.reshape(-1, 3)


@functools.lru_cache(maxsize=8)
def _grid_rays(camera, height: int, width: int) -> np.ndarray:
    """(height, width, 2) float32: the ray of the depth pixel under each label pixel's centre
    (one table per camera and grid: the cloud is then two multiplications)."""
    rows, cols = centre_indices(height, camera.height), centre_indices(width, camera.width)
    us, vs = np.meshgrid(cols, rows)
    x, y = camera.rays(us, vs)
    return np.stack([x, y], axis=-1).astype(np.float32)


@dataclass(frozen=True, eq=False)
class ObjectsCloud:
    """Points on the objects' surfaces: ``xyz`` (K, 3) float32, ``score`` (K,) float32, ``label``
    (K,) uint16 (prompt index + 1, as the label image), ``instance`` (K,) uint32 (its id)."""

    xyz: np.ndarray
    score: np.ndarray
    label: np.ndarray
    instance: np.ndarray

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def objects_cloud(result: SegmentationResult, scene: Scene, prompts: Sequence[str] = (), stride: int = 4,
                  max_points: int = 0) -> ObjectsCloud | None:
    """The surface points of the objects of ``prompts`` (empty: all), on every ``stride``-th
    depth row and column, thinned evenly beyond ``max_points`` (0 = no cap); None without depth."""
    depth = scene.depth
    if depth is None:
        return None
    names = list(result.prompts)
    wanted = [names.index(p) for p in (prompts or names) if p in names]
    step = max(1, int(stride))
    dh, dw = depth.metres.shape
    gh, gw = result.label.shape
    label_rows, label_cols = centre_indices(dh, gh), centre_indices(dw, gw)
    ids = instance_ids(scene)
    parts = []
    for k in wanted:
        components = scene.components[k] if k < len(scene.components) else None
        if components is None or not scene.objects[k]:
            continue
        comp_rows, comp_cols = centre_indices(dh, components.shape[0]), centre_indices(dw, components.shape[1])
        for placed, value in zip(scene.objects[k], ids[k]):
            surface = placed.location.surface
            if surface is None:
                continue
            # the strided depth rows and columns (every step-th from 0, as the other clouds) in its box
            y0, y1, x0, x1 = covering_window(placed.object.grid_bbox, components.shape, (dh, dw))
            rows = np.arange(-(-y0 // step) * step, y1, step)
            cols = np.arange(-(-x0 // step) * step, x1, step)
            mine = (components[np.ix_(comp_rows[rows], comp_cols[cols])] == placed.object.component) \
                & (result.label[np.ix_(label_rows[rows], label_cols[cols])] == k + 1)
            vs, us = np.nonzero(mine)
            vs, us = rows[vs], cols[us]
            zs = depth.metres[vs, us]
            ok = np.isfinite(zs)
            vs, us, zs = vs[ok], us[ok], zs[ok]
            on = surface.inliers(us, vs, zs)
            vs, us, zs = vs[on], us[on], zs[on]
            score = result.masks[k, label_rows[vs], label_cols[us]].astype(np.float32) / np.float32(255)
            parts.append((depth.camera.points(us, vs, zs), score, k + 1, value))
    if not parts:
        return ObjectsCloud(np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros(0, np.uint16),
                            np.zeros(0, np.uint32))
    xyz = np.concatenate([p[0] for p in parts]).astype(np.float32)
    score = np.concatenate([p[1] for p in parts])
    label = np.concatenate([np.full(len(p[1]), p[2], np.uint16) for p in parts])
    instance = np.concatenate([np.full(len(p[1]), p[3], np.uint32) for p in parts])
    if max_points and len(xyz) > max_points:
        pick = np.linspace(0, len(xyz) - 1, max_points).round().astype(np.int64)
        xyz, score, label, instance = xyz[pick], score[pick], label[pick], instance[pick]
    return ObjectsCloud(xyz, score, label, instance)

