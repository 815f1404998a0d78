"""Synthetic camera motion with exact ground truth, for tests and benchmarks of propagation.

A picture and a mask of an object in it are moved by a known affine motion per frame (shift in
pixels, rotation in degrees and zoom factor, about the image centre): frame ``t`` applies it ``t``
times. Borders are reflected, so the flow has texture everywhere.
"""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np


def motion(t: int, size: tuple[int, int], shift=(0.0, 0.0), rotation_deg: float = 0.0,
           zoom: float = 1.0) -> np.ndarray:
    """The 2x3 affine matrix of frame ``t``: ``t`` steps of the motion about the centre."""
    h, w = size
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), rotation_deg * t, zoom ** t)
    m[0, 2] += shift[0] * t
    m[1, 2] += shift[1] * t
    return m


def moving_scene(image: np.ndarray, mask: np.ndarray, frames: int, shift=(0.0, 0.0), rotation_deg: float = 0.0,
                 zoom: float = 1.0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(frame, true mask) for t = 0 .. frames: (H, W, 3) uint8 and (H, W) uint8 (0 or 255)."""
    h, w = image.shape[:2]
    for t in range(frames + 1):
        m = motion(t, (h, w), shift, rotation_deg, zoom)
        frame = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        true = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        yield frame, true


def panning_camera(image: np.ndarray, frames: int = 60, px_per_frame: float = 2.0) -> list[np.ndarray]:
    """A camera panning over ``image`` by ``px_per_frame`` sideways, ``frames`` frames forwards
    and the same back (no cuts: each frame is one step from the previous)."""
    h, w = image.shape[:2]
    forwards = [cv2.warpAffine(image, motion(t, (h, w), shift=(px_per_frame, 0.0)), (w, h),
                               borderMode=cv2.BORDER_REFLECT_101) for t in range(frames)]
    return forwards + forwards[::-1]


def sample_picture(h: int = 480, w: int = 640) -> np.ndarray:
    """A real photo (scikit-image's coffee, CC0) at (h, w), else a smooth random texture."""
    try:
        from skimage import data

        return cv2.resize(data.coffee(), (w, h), interpolation=cv2.INTER_AREA)
    except Exception:  # noqa: BLE001 - scikit-image is optional outside CI
        rng = np.random.default_rng(0)
        return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 127, b > 127
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
