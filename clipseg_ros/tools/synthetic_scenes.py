"""Synthetic RGB-D scenes with a known answer, for refinement and 3D checks.

Each scene is a red object (red by the known-answer checkpoint's rule:
:mod:`clipseg_ros.core.model.known_answer_checkpoint`) drawn on a background that is not red, with
an aligned depth image and the true mask. Shapes are given as shares of the image's width and
height, so one scene can be drawn at any resolution (640x480, 1280x720). Edges are hard, then
the image is blurred by a Gaussian of 0.7 px (a camera's optics); the truth is the hard shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

RED = (220, 30, 35)
ORANGE = (225, 110, 40)
WALL_M = 2.0


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """``image`` (H, W, 3) uint8 RGB, ``depth`` (H, W) float32 metres, ``truth`` (H, W) bool (the
    red object's pixels), ``objects``: the true masks of its separate objects (by depth); other
    shapes (distractors) are in the image and the depth, not in the truth."""

    name: str
    image: np.ndarray
    depth: np.ndarray
    truth: np.ndarray
    objects: tuple[np.ndarray, ...]
    note: str = ""


def _texture(h: int, w: int, seed: int) -> np.ndarray:
    """A busy, not-red background: random greens, blues and greys in blocks of 6-40 px, plus noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((h, w, 3), np.uint8)
    image[:] = (90, 110, 100)
    for _ in range(int(h * w / 900)):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(6, 40))
        g = int(rng.integers(40, 220))
        colour = (int(rng.integers(20, max(21, g))), g, int(rng.integers(40, 230)))
        cv2.rectangle(image, (x, y), (x + size, y + int(size * rng.uniform(0.5, 1.5))), colour, -1)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _plain(h: int, w: int, colour=(128, 128, 128)) -> np.ndarray:
    image = np.empty((h, w, 3), np.uint8)
    image[:] = colour
    return image


def _finish(name, background, shapes, note="") -> SyntheticScene:
    """``shapes``: (mask, depth in m, colour[, part of the truth: default true]) drawn in order
    (later in front)."""
    h, w = background.shape[:2]
    image = background.copy()
    depth = np.full((h, w), WALL_M, np.float32)
    truth = np.zeros((h, w), bool)
    objects = []
    for mask, metres, colour, *counted in shapes:
        image[mask] = colour
        depth[mask] = metres
        truth &= ~mask
        objects = [o & ~mask for o in objects]
        if not counted or counted[0]:
            truth |= mask
            objects.append(mask)
    image = cv2.GaussianBlur(image, (0, 0), 0.7)
    return SyntheticScene(name, image, depth, truth, tuple(o for o in objects if o.any()), note)


def _disc(h, w, cx, cy, r):
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (int(round(cx * w)), int(round(cy * h))), int(round(r * min(h, w))), 1, -1)
    return mask > 0


def _polygon(h, w, points):
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.array([(int(round(x * w)), int(round(y * h))) for x, y in points], np.int32)], 1)
    return mask > 0


def _rectangle(h, w, x0, y0, x1, y1):
    return _polygon(h, w, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def scenes(size: tuple[int, int] = (480, 640)) -> list[SyntheticScene]:
    """The synthetic set at ``size`` (H, W)."""
    h, w = size
    px = min(h, w) / 480  # thin parts keep their pixel width at 480 rows: 10-20 px
    handle_outer, handle_inner = _disc(h, w, 0.62, 0.5, 0.16), _disc(h, w, 0.62, 0.5, 0.16 - 14 * px / min(h, w))
    cup = _disc(h, w, 0.45, 0.5, 0.2)
    handle = handle_outer & ~handle_inner & ~cup & (np.arange(w)[None, :] > 0.62 * w)
    bar = _rectangle(h, w, 0.2, 0.3, 0.8, 0.3 + 20 * px / h)
    return [
        _finish("disc on texture", _texture(h, w, 1), [(_disc(h, w, 0.5, 0.5, 0.22), 1.0, RED)]),
        _finish("disc on plain", _plain(h, w), [(_disc(h, w, 0.42, 0.55, 0.18), 1.0, RED)]),
        _finish("L-shape on texture", _texture(h, w, 2),
                [(_polygon(h, w, [(0.25, 0.2), (0.45, 0.2), (0.45, 0.6), (0.75, 0.6), (0.75, 0.8), (0.25, 0.8)]),
                  1.2, RED)]),
        _finish("cup with a 14 px handle", _plain(h, w, (200, 200, 190)), [(cup | handle, 1.0, RED)]),
        _finish("20 px bar across a plain wall", _plain(h, w, (60, 90, 160)),
                [(_rectangle(h, w, 0.3, 0.35, 0.5, 0.65), 1.0, RED), (bar, 1.0, RED)]),
        _finish("touching squares at 1.0 and 1.5 m", _texture(h, w, 3),
                [(_rectangle(h, w, 0.45, 0.3, 0.75, 0.7), 1.5, RED), (_rectangle(h, w, 0.2, 0.25, 0.45, 0.75), 1.0, RED)]),
        _finish("beside an orange box, 8 px apart", _texture(h, w, 4),
                [(_rectangle(h, w, 0.52 + 8 * px / w, 0.3, 0.8, 0.7), 1.0, ORANGE, False),
                 (_disc(h, w, 0.37, 0.5, 0.15), 1.0, RED)],
                note="the box (225, 110, 40) is not red (R - max(G, B) = 115) and stands at the same depth"),
        _finish("close colours, 0.5 m in front", _plain(h, w, (205, 95, 85)), [(_disc(h, w, 0.5, 0.5, 0.2), 1.5,
                                                                               (220, 45, 50))],
                note="object and wall differ by (15, 50, 35) in RGB"),
        _finish("close colours, flat (a poster)", _plain(h, w, (205, 95, 85)),
                [(_polygon(h, w, [(0.3, 0.25), (0.7, 0.3), (0.6, 0.75), (0.35, 0.7)]), WALL_M, (220, 45, 50))],
                note="no depth step: only the colour tells"),
    ]
