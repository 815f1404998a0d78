"""One frame's segmentation + (optionally) its depth image -> objects in 2D and 3D, and clouds.

No ROS in here. :func:`build_scene` is the step after :mod:`postprocess`: it finds each prompt's
objects (:mod:`objects`), places them in 3D with the paired depth image (:mod:`geometry`) and
builds the masked point clouds the node publishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from clipseg_ros.geometry import NO_POSITION, MaskedCloud, PinholeCamera, Position3D, locate_pixels, masked_cloud
from clipseg_ros.objects import DetectedObject, find_objects
from clipseg_ros.postprocess import SegmentationResult
from clipseg_ros.tracking import TrackId


LOCATE_MAX_PIXELS = 16384  # per object; larger ones are sampled on a grid


@dataclass(frozen=True, eq=False)
class DepthFrame:
    """A depth image paired with a colour frame: ``metres`` (H, W) float32, NaN invalid; the
    depth image's ``camera``; its ``frame_id`` and ``stamp`` (sec, nanosec)."""

    metres: np.ndarray
    camera: PinholeCamera
    frame_id: str
    stamp: tuple[int, int]


@dataclass(frozen=True)
class SceneOptions:
    """What to build: object limits, the depth band, which prompts go into which cloud."""

    min_object_area: float = 64.0
    max_objects: int = 16
    depth_band: float = 0.3
    cloud: bool = False
    cloud_prompts: tuple[str, ...] = ()  # empty: every prompt
    obstacle_prompts: tuple[str, ...] = ()  # empty: no obstacle cloud
    cloud_stride: int = 4
    cloud_max_points: int = 50000


@dataclass(frozen=True)
class SceneObject:
    """A 2D object and where it is in 3D (:data:`geometry.NO_POSITION` without depth)."""

    object: DetectedObject
    location: Position3D
    track: TrackId | None = None  # set by the camera's tracker (clipseg_ros.temporal)


@dataclass(frozen=True, eq=False)
class Scene:
    """Per prompt, its objects (best first); the clouds (None when not wanted or without
    depth); the depth frame used (None without)."""

    objects: tuple[tuple[SceneObject, ...], ...]
    depth: DepthFrame | None = None
    cloud: MaskedCloud | None = None
    obstacle_cloud: MaskedCloud | None = None
    all_depth_invalid: bool = False

    def best(self, prompt_index: int) -> SceneObject | None:
        """The prompt's best object that has a 3D position, if any."""
        return next((o for o in self.objects[prompt_index] if o.location.has_position), None)


def build_scene(result: SegmentationResult, depth: DepthFrame | None, options: SceneOptions) -> Scene:
    """Objects of every prompt of ``result``; with ``depth`` (same view as the colour frame,
    any resolution: see :func:`geometry.check_same_view`) their 3D positions and the clouds."""
    found = find_objects(result.masks, result.prompts, result.prompt_thresholds, result.image_size,
                         min_area=options.min_object_area, max_objects=options.max_objects)
    if depth is None:
        return Scene(tuple(tuple(SceneObject(o, NO_POSITION) for o in p.objects) for p in found))
    dh, dw = depth.metres.shape
    all_invalid = not bool(np.isfinite(depth.metres).any())
    placed = []
    for prompt_objects in found:
        components = grid = prompt_objects.components
        if prompt_objects.objects and components.shape != (dh, dw):
            components = cv2.resize(components, (dw, dh), interpolation=cv2.INTER_NEAREST)
        placed.append(tuple(SceneObject(o, _locate(depth, components, o, grid.shape, options.depth_band))
                            for o in prompt_objects.objects))
    names = list(result.prompts)
    cloud = obstacle = None
    if options.cloud:
        wanted = options.cloud_prompts or tuple(names)
        cloud = _cloud(result, depth, options, [names.index(n) + 1 for n in wanted if n in names])
    if options.obstacle_prompts:
        obstacle = _cloud(result, depth, options, [names.index(n) + 1 for n in options.obstacle_prompts if n in names])
    return Scene(tuple(placed), depth, cloud, obstacle, all_invalid)


def _locate(depth: DepthFrame, components: np.ndarray, obj: DetectedObject, grid: tuple[int, int],
            depth_band: float) -> Position3D:
    """The object's 3D position, looking only inside its box (on the depth grid)."""
    dh, dw = depth.metres.shape
    x, y, w, h = obj.grid_bbox
    sx, sy = dw / grid[1], dh / grid[0]
    x0, y0 = int(math.floor(x * sx)), int(math.floor(y * sy))
    x1, y1 = min(dw, int(math.ceil((x + w) * sx))), min(dh, int(math.ceil((y + h) * sy)))
    # A large object is sampled on a regular grid of at most LOCATE_MAX_PIXELS pixels: the median
    # hardly moves, the extent shrinks by less than the step (e.g. 3 px for 80 000 px).
    step = max(1, math.ceil(math.sqrt((y1 - y0) * (x1 - x0) / LOCATE_MAX_PIXELS)))
    vs, us = np.nonzero(components[y0:y1:step, x0:x1:step] == obj.component)
    return locate_pixels(depth.metres, vs * step + y0, us * step + x0, depth.camera, depth_band)


def _cloud(result: SegmentationResult, depth: DepthFrame, options: SceneOptions, labels: list[int]) -> MaskedCloud:
    return masked_cloud(depth.metres, result.label, result.masks, depth.camera, labels,
                        stride=options.cloud_stride, max_points=options.cloud_max_points)
