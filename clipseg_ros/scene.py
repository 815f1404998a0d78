"""One frame's segmentation + (optionally) its depth image -> objects in 2D and 3D, and clouds.

No ROS in here. :func:`build_scene` is the step after :mod:`postprocess`: it finds each prompt's
objects (:mod:`objects`), places them in 3D with the paired depth image (:mod:`geometry`) and
builds the masked point clouds the node publishes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from clipseg_ros.geometry import NO_POSITION, MaskedCloud, PinholeCamera, Position3D, locate, masked_cloud
from clipseg_ros.objects import DetectedObject, find_objects
from clipseg_ros.postprocess import SegmentationResult


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
    thresholds = result.thresholds or (result.threshold,) * len(result.prompts)
    found = find_objects(result.masks, result.prompts, thresholds, result.image_size,
                         min_area=options.min_object_area, max_objects=options.max_objects)
    if depth is None:
        return Scene(tuple(tuple(SceneObject(o, NO_POSITION) for o in p.objects) for p in found))
    dh, dw = depth.metres.shape
    all_invalid = not bool(np.isfinite(depth.metres).any())
    placed = []
    for prompt_objects in found:
        components = prompt_objects.components
        if components.shape != (dh, dw):
            components = cv2.resize(components, (dw, dh), interpolation=cv2.INTER_NEAREST)
        placed.append(tuple(SceneObject(o, locate(depth.metres, components == o.component, depth.camera,
                                                  options.depth_band))
                            for o in prompt_objects.objects))
    names = list(result.prompts)
    cloud = obstacle = None
    if options.cloud:
        wanted = options.cloud_prompts or tuple(names)
        cloud = _cloud(result, depth, options, [names.index(n) + 1 for n in wanted if n in names])
    if options.obstacle_prompts:
        obstacle = _cloud(result, depth, options, [names.index(n) + 1 for n in options.obstacle_prompts if n in names])
    return Scene(tuple(placed), depth, cloud, obstacle, all_invalid)


def _cloud(result: SegmentationResult, depth: DepthFrame, options: SceneOptions, labels: list[int]) -> MaskedCloud:
    return masked_cloud(depth.metres, result.label, result.masks, depth.camera, labels,
                        stride=options.cloud_stride, max_points=options.cloud_max_points)
