"""The RViz overlay: a camera frame tinted by the label image, with a legend of prompts and scores.

No ROS and no torch in here: OpenCV on uint8 arrays (LUT, blend and masked copy: ~20x faster than
numpy fancy indexing at 1080p).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 BGR colours, well separated for small n (golden-angle hues)."""
    if n == 0:
        return np.zeros((0, 3), np.uint8)
    hues = ((np.arange(n) * 0.618033988749895) % 1.0 * 179).astype(np.uint8)
    hsv = np.stack([hues, np.full(n, 220, np.uint8), np.full(n, 255, np.uint8)], axis=1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]


def render_overlay(image_bgr: np.ndarray, label: np.ndarray, prompts: Sequence[str], *,
                   alpha: float = 0.5, scores: Sequence[float] | None = None) -> np.ndarray:
    """Colour overlay for RViz: the image with each prompt's region tinted, plus a legend.

    ``image_bgr``: (H, W, 3) uint8. ``label``: (h, w) uint8 (resized to H x W with nearest
    neighbour if it is on another grid). Returns a new (H, W, 3) BGR uint8 image; the legend names
    each prompt in its colour (with its max score when ``scores`` is given). Non-ASCII characters
    are drawn as '?' (OpenCV's Hershey fonts are ASCII-only).
    """
    h, w = image_bgr.shape[:2]
    if label.shape != (h, w):
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    colours = palette(len(prompts))
    out = np.array(image_bgr, dtype=np.uint8, copy=True, order="C")
    if len(prompts):
        # OpenCV LUT/blend/masked copy: ~20x faster than numpy fancy indexing at 1080p.
        lut = np.zeros((256, 1, 3), np.uint8)
        lut[1:len(colours) + 1, 0] = colours[:255]
        tint = cv2.LUT(cv2.cvtColor(np.ascontiguousarray(label), cv2.COLOR_GRAY2BGR), lut)
        blended = cv2.addWeighted(out, 1.0 - alpha, tint, alpha, 0.0)
        cv2.copyTo(blended, label, out)  # only where label != 0
    _draw_legend(out, prompts, colours, scores)
    return out


def _draw_legend(img: np.ndarray, prompts: Sequence[str], colours: np.ndarray,
                 scores: Sequence[float] | None) -> None:
    if not len(prompts):
        return
    h, w = img.shape[:2]
    scale = max(0.35, min(1.0, h / 900.0))
    line = int(round(24 * scale)) + 4
    box = int(round(14 * scale)) + 2
    for k, prompt in enumerate(prompts):
        y = 6 + k * line
        if y + box >= h:
            break
        text = prompt.encode("ascii", "replace").decode("ascii")
        if scores is not None:
            text = f"{text} {scores[k]:.2f}"
        colour = tuple(int(c) for c in colours[k])
        cv2.rectangle(img, (6, y), (6 + box, y + box), colour, thickness=-1)
        org = (12 + box, y + box - 2)
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale + 0.1, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale + 0.1, colour, 1, cv2.LINE_AA)
