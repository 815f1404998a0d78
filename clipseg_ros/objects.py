"""Objects: the connected regions of each prompt's thresholded mask.

No ROS in here. Two cups on a table are two objects, each with its own box, centroid, area and
scores, where the per-prompt stats of :mod:`postprocess` give one centroid between them.

Rules (deterministic): a region is a set of 8-connected mask pixels at or above the prompt's
threshold; regions that touch are one object; a hole inside a region is not part of it (its box
covers it, its area and centroid do not); regions smaller than ``min_area`` input pixels are
dropped. Objects of a prompt are sorted by max score, then mean score, then area (descending),
then by position (top, left), and at most ``max_objects`` are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from clipseg_ros.postprocess import at_least, mask_level


@dataclass(frozen=True)
class DetectedObject:
    """One connected region of one prompt's mask. bbox (x, y, width, height), centroid (x, y)
    and area are in input-image pixels; scores are probabilities from the published mask."""

    prompt_index: int
    prompt: str
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    area: float
    max_score: float
    mean_score: float
    component: int  # its value in the prompt's component map (see :class:`PromptObjects`)


@dataclass(frozen=True, eq=False)
class PromptObjects:
    """The objects of one prompt and its component map: (h, w) int32 on the mask grid, where
    pixel value ``obj.component`` marks ``obj``'s pixels (0 = not in any kept object)."""

    objects: tuple[DetectedObject, ...]
    components: np.ndarray

    def pixels(self, obj: DetectedObject) -> np.ndarray:
        """(h, w) bool: ``obj``'s pixels on the mask grid."""
        return self.components == obj.component


def find_objects(masks: np.ndarray, prompts: Sequence[str], thresholds: Sequence[float],
                 image_size: tuple[int, int], min_area: float = 0.0, max_objects: int = 64) -> list[PromptObjects]:
    """The objects of every prompt. ``masks`` (N, h, w) uint8 as published (probability * 255),
    on any grid; ``thresholds`` one per prompt; ``image_size`` the input (H, W), to which boxes,
    centroids and areas are scaled (a grid pixel covers (H/h) x (W/w) input pixels)."""
    in_h, in_w = int(image_size[0]), int(image_size[1])
    grid_h, grid_w = masks.shape[1:]
    sx, sy = in_w / grid_w, in_h / grid_h
    found = []
    for k in range(masks.shape[0]):
        inside = at_least(masks[k], mask_level(thresholds[k]))
        count, components, stats, centroids = cv2.connectedComponentsWithStats(inside, connectivity=8,
                                                                               ltype=cv2.CV_32S)
        candidates = []
        for c in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[c])
            if area * sx * sy < min_area:
                continue
            window = components[y:y + h, x:x + w] == c
            values = masks[k][y:y + h, x:x + w][window]
            x0, y0 = int(math.floor(x * sx + 1e-9)), int(math.floor(y * sy + 1e-9))
            x1, y1 = min(in_w, int(math.ceil((x + w) * sx - 1e-9))), min(in_h, int(math.ceil((y + h) * sy - 1e-9)))
            cx, cy = centroids[c]
            candidates.append(DetectedObject(
                prompt_index=k, prompt=str(prompts[k]), bbox=(x0, y0, x1 - x0, y1 - y0),
                centroid=(float((cx + 0.5) * sx - 0.5), float((cy + 0.5) * sy - 0.5)), area=area * sx * sy,
                max_score=float(values.max()) / 255.0, mean_score=float(values.mean()) / 255.0, component=c))
        candidates.sort(key=lambda o: (-o.max_score, -o.mean_score, -o.area, o.bbox[1], o.bbox[0]))
        kept = tuple(candidates[:max_objects])
        keep = np.zeros(count, np.int32)
        for obj in kept:
            keep[obj.component] = obj.component
        found.append(PromptObjects(kept, keep[components]))
    return found
