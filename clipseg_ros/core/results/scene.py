"""One frame's segmentation + (optionally) its depth image -> objects in 2D and 3D, and clouds.

No ROS in here. :func:`build_scene` is the step after :mod:`postprocess`: it finds each prompt's
objects (:mod:`objects`), places them in 3D with the paired depth image (:mod:`geometry`) and
builds the masked point clouds the node publishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clipseg_ros.core.motion.tracking import TrackId
from clipseg_ros.core.results.geometry import (
    NO_POSITION,
    MaskedCloud,
    PinholeCamera,
    Position3D,
    depth_cloud,
    locate_pixels,
    masked_cloud,
    strided_grid,
)
from clipseg_ros.core.results.grids import centre_indices, covering_window
from clipseg_ros.core.results.objects import DetectedObject, find_objects
from clipseg_ros.core.results.postprocess import SegmentationResult

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
    clearing_cloud: bool = False  # every valid depth point (strided), for a costmap's clearing source
    object_depth_step: float = 0.0  # m: with depth, a prompt's parts split by a larger step are objects; 0 = never


@dataclass(frozen=True)
class SceneObject:
    """A 2D object and where it is in 3D (:data:`geometry.NO_POSITION` without depth)."""

    object: DetectedObject
    location: Position3D
    track: TrackId | None = None  # set by the camera's tracker (clipseg_ros.core.motion.temporal)


@dataclass(frozen=True, eq=False)
class Scene:
    """Per prompt, its objects (best first); the clouds (None when not wanted or without
    depth); the depth frame used (None without)."""

    objects: tuple[tuple[SceneObject, ...], ...]
    depth: DepthFrame | None = None
    cloud: MaskedCloud | None = None
    obstacle_cloud: MaskedCloud | None = None
    clearing_cloud: np.ndarray | None = None  # (K, 3) float32, every valid depth point (strided)
    all_depth_invalid: bool = False
    # per prompt, its component map on the object grid (None: no object), where an object's
    # pixels hold its ``object.component`` (see objects.PromptObjects)
    components: tuple[np.ndarray | None, ...] = ()

    def best(self, prompt_index: int) -> SceneObject | None:
        """The prompt's best object that has a 3D position, if any."""
        return next((o for o in self.objects[prompt_index] if o.location.has_position), None)


def build_scene(result: SegmentationResult, depth: DepthFrame | None, options: SceneOptions) -> Scene:
    """Objects of every prompt of ``result``; with ``depth`` (the colour frame's view, any
    resolution: see :func:`geometry.check_same_view`) their 3D positions and the clouds.

    Clouds hold only points on their object's surface (the rule of the positions: see
    :func:`geometry.fit_surface`): mask bleed onto the background and holes between an object's
    parts (chair legs, under a table) do not become points at the background's range. Pixels of
    a prompt outside its kept objects (specks under ``min_object_area``, objects past
    ``max_objects``) are not in the clouds either."""
    split = depth.metres if depth is not None and options.object_depth_step > 0 else None
    found = find_objects(result.masks, result.prompts, result.prompt_thresholds, result.image_size,
                         min_area=options.min_object_area, max_objects=options.max_objects,
                         depth_metres=split, depth_step=options.object_depth_step)
    components = tuple(p.components if p.objects else None for p in found)
    if depth is None:
        return Scene(tuple(tuple(SceneObject(o, NO_POSITION) for o in p.objects) for p in found),
                     components=components)
    all_invalid = not bool(np.isfinite(depth.metres).any())
    placed = [tuple(SceneObject(o, _locate(depth, p.components, o, options.depth_band)) for o in p.objects)
              for p in found]
    grid_components_of = [p.components if p.objects else None for p in found]
    names = list(result.prompts)
    cloud = obstacle = clearing = None
    if options.cloud or options.obstacle_prompts:
        keep = _on_surfaces(result, depth, placed, grid_components_of, options.cloud_stride)
        if options.cloud:
            wanted = options.cloud_prompts or tuple(names)
            cloud = _cloud(result, depth, options, [names.index(n) + 1 for n in wanted if n in names], keep)
        if options.obstacle_prompts:
            obstacle = _cloud(result, depth, options,
                              [names.index(n) + 1 for n in options.obstacle_prompts if n in names], keep)
    if options.clearing_cloud:
        clearing = depth_cloud(depth.metres, depth.camera, options.cloud_stride, options.cloud_max_points)
    return Scene(tuple(placed), depth, cloud, obstacle, clearing, all_invalid, components)


def _locate(depth: DepthFrame, grid_components: np.ndarray, obj: DetectedObject, depth_band: float) -> Position3D:
    """The object's 3D position, looking only inside its box (on the depth grid: each depth
    pixel takes the component under its centre, as :func:`grids.resample_nearest`)."""
    dh, dw = depth.metres.shape
    grid = grid_components.shape
    y0, y1, x0, x1 = covering_window(obj.grid_bbox, grid, (dh, dw))
    # A large object is sampled on a regular grid of at most LOCATE_MAX_PIXELS pixels, each sample
    # standing for the step x step pixels it starts: the median hardly moves, the box is the same.
    step = max(1, math.ceil(math.sqrt(max(0, y1 - y0) * max(0, x1 - x0) / LOCATE_MAX_PIXELS)))
    window = grid_components[np.ix_(centre_indices(dh, grid[0])[y0:y1:step], centre_indices(dw, grid[1])[x0:x1:step])]
    vs, us = np.nonzero(window == obj.component)
    return locate_pixels(depth.metres, vs * step + y0, us * step + x0, depth.camera, depth_band,
                         step=step, window_end=(y1, x1))


def _on_surfaces(result: SegmentationResult, depth: DepthFrame, placed: list, grid_components_of: list,
                 stride: int) -> np.ndarray:
    """(rows, columns) bool on the clouds' strided grid: the pixel is on the surface of an
    object of the prompt it is labelled with (what :func:`masked_cloud` then keeps)."""
    rows, cols = strided_grid(depth.metres.shape, stride)
    dh, dw = depth.metres.shape
    sub_label = result.label[np.ix_(centre_indices(dh, result.label.shape[0])[rows],
                                    centre_indices(dw, result.label.shape[1])[cols])]
    keep = np.zeros((rows.size, cols.size), bool)
    sub_depth = depth.metres[np.ix_(rows, cols)]
    for k, (objects, components) in enumerate(zip(placed, grid_components_of)):
        if components is None:
            continue
        sub = np.where(sub_label == k + 1, components[np.ix_(centre_indices(dh, components.shape[0])[rows],
                                                             centre_indices(dw, components.shape[1])[cols])], 0)
        for placed_object in objects:
            surface = placed_object.location.surface
            if surface is None:
                continue
            vs, us = np.nonzero(sub == placed_object.object.component)
            on = surface.inliers(cols[us], rows[vs], sub_depth[vs, us])
            keep[vs[on], us[on]] = True
    return keep


def _cloud(result: SegmentationResult, depth: DepthFrame, options: SceneOptions, labels: list[int],
           keep: np.ndarray) -> MaskedCloud:
    return masked_cloud(depth.metres, result.label, result.masks, depth.camera, labels,
                        stride=options.cloud_stride, max_points=options.cloud_max_points, keep=keep)
