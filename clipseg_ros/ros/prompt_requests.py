"""Prompt messages -> core prompt values: example images with their regions, thresholds.

The ROS side of teaching and visual prompts: it reads ``SetPrompts`` and ``Teach`` requests, the
``~/prompt_image`` topic and ``~/teach_region`` polygons into :class:`ExampleRequest` values
(numpy arrays and :mod:`clipseg_ros.core.prompts.visual_prompts` types), and makes the prompt-image messages
sent back. Every problem is a :class:`clipseg_ros.core.prompts.prompt_book.PromptError` whose message names the
prompt and says what to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from sensor_msgs.msg import Image, RegionOfInterest

from clipseg_ros.core.prompts.prompt_book import DEFAULT_TEXT_WEIGHT, PromptError, check_threshold
from clipseg_ros.core.prompts.visual_prompts import Box, ExampleImage, RegionError, make_example
from clipseg_ros.ros.conversions import (
    ImageConversionError,
    check_image_size,
    cv2_to_imgmsg,
    imgmsg_to_numpy,
    read_rgb8,
)


@dataclass(frozen=True, eq=False)
class ExampleRequest:
    """One image prompt to embed: its name, its example, the text mixed in and its weight."""

    name: str
    example: ExampleImage
    text: str = ""
    text_weight: float = DEFAULT_TEXT_WEIGHT


def box_from_roi(roi: RegionOfInterest) -> Box | None:
    """A RegionOfInterest as a Box; None when its width or height is 0 (= no box)."""
    if roi.width == 0 or roi.height == 0:
        return None
    return Box(int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height))


def mask_from_msg(msg: Image | None, max_pixels: int) -> np.ndarray | None:
    """A mono8/8UC1 mask image as (H, W) uint8; None for an image without pixels (= no mask).
    PromptError for another encoding or one it cannot read."""
    if msg is None or msg.width == 0 or msg.height == 0:
        return None
    if msg.encoding.lower() not in ("mono8", "8uc1"):
        raise PromptError(f"mask encoding is '{msg.encoding}': send mono8 (non-zero = object)")
    try:
        check_image_size(msg, max_pixels)
        return np.array(imgmsg_to_numpy(msg), np.uint8)  # a copy: the message's buffer is not ours
    except ImageConversionError as exc:
        raise PromptError(f"mask: {exc}") from exc


def text_weight_from_request(weight: float) -> float:
    """A request's text weight: 0 means the default (0.5); otherwise it must be in (0, 1]."""
    weight = float(weight)
    if weight == 0.0:
        return DEFAULT_TEXT_WEIGHT
    if not (0.0 < weight <= 1.0):
        raise PromptError(f"text_weight must be in (0, 1] (0 = the default {DEFAULT_TEXT_WEIGHT}), got {weight:g}")
    return weight


def example_request(name: str, image: np.ndarray, box: Box | None, mask: np.ndarray | None,
                    style: str, text: str = "", text_weight: float = 0.0) -> ExampleRequest:
    """An :class:`ExampleRequest` from a decoded image and its optional region."""
    try:
        example = make_example(image, box, mask, style)
    except RegionError as exc:
        raise PromptError(f"image prompt '{name}': {exc}") from exc
    text = str(text).strip()
    if not text and float(text_weight) != 0.0:
        raise PromptError(f"image prompt '{name}': text_weight {float(text_weight):g} without a text to mix in (give "
                          "the text, or leave the weight 0)")
    return ExampleRequest(name, example, text, text_weight_from_request(text_weight) if text else DEFAULT_TEXT_WEIGHT)


def _per_image(values: Sequence, count: int, what: str) -> list:
    if len(values) not in (0, count):
        raise PromptError(f"{len(values)} {what} for {count} image_prompts: give none or one per image")
    return list(values) if values else [None] * count


def examples_from_set_prompts(request, names: Sequence[str], max_pixels: int,
                              default_style: str) -> list[ExampleRequest]:
    """The image prompts of a ``SetPrompts`` request (names already checked), decoded and
    engineered. Lists that are optional per image must be empty or one entry per image."""
    count = len(request.image_prompts)
    boxes = _per_image(request.image_prompt_boxes, count, "image_prompt_boxes")
    masks = _per_image(request.image_prompt_masks, count, "image_prompt_masks")
    texts = _per_image(request.image_prompt_texts, count, "image_prompt_texts")
    weights = _per_image(list(request.image_prompt_text_weights), count, "image_prompt_text_weights")
    style = request.visual_prompt_style or default_style
    found = []
    for i, name in enumerate(names):
        image = read_prompt_image(request.image_prompts[i], max_pixels, name)
        try:
            mask = mask_from_msg(masks[i], max_pixels)
        except PromptError as exc:
            raise PromptError(f"image prompt '{name}': {exc}") from exc
        box = box_from_roi(boxes[i]) if boxes[i] is not None else None
        found.append(example_request(name, image, box, mask, style, texts[i] or "", weights[i] or 0.0))
    return found


def read_prompt_image(msg: Image, max_pixels: int, name: str) -> np.ndarray:
    """An example image as (H, W, 3) RGB uint8; PromptError naming the prompt when unreadable."""
    try:
        return read_rgb8(msg, max_pixels)
    except ImageConversionError as exc:
        raise PromptError(f"image prompt '{name}': {exc}") from exc


def alpha_mask(msg: Image) -> np.ndarray | None:
    """The alpha channel of an rgba8/bgra8 example image as its mask (non-zero = object); None
    for other encodings and for an alpha that is opaque everywhere (the image as sent)."""
    if msg.encoding.lower() not in ("rgba8", "bgra8"):
        return None
    alpha = np.array(imgmsg_to_numpy(msg)[:, :, 3])
    return None if bool((alpha == 255).all()) else alpha


def region_from_polygon(points: Sequence[tuple[float, float]], image_size: tuple[int, int],
                        point_size: int) -> tuple[Box | None, np.ndarray | None]:
    """A drawn region in image pixels: one point = a ``point_size`` square centred on it
    (clipped to the image); two points = the box they span (corners, inclusive); three or more =
    the filled polygon, as a mask. PromptError for no point, a non-finite one, or a point
    outside the image."""
    h, w = int(image_size[0]), int(image_size[1])
    if not points:
        raise PromptError("the polygon has no point (one point, two corners or a polygon, in image pixels)")
    for x, y in points:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise PromptError(f"polygon point ({x}, {y}) is not finite")
        if not (0 <= x < w and 0 <= y < h):
            raise PromptError(f"polygon point ({x:g}, {y:g}) is outside the {w}x{h} image")
    if len(points) == 1:
        cx, cy = int(points[0][0]), int(points[0][1])
        half = max(1, int(point_size)) // 2
        x0, y0 = max(0, cx - half), max(0, cy - half)
        x1, y1 = min(w, cx - half + max(1, int(point_size))), min(h, cy - half + max(1, int(point_size)))
        return Box(x0, y0, x1 - x0, y1 - y0), None
    if len(points) == 2:
        (xa, ya), (xb, yb) = points
        x0, x1 = sorted((int(xa), int(xb)))
        y0, y1 = sorted((int(ya), int(yb)))
        return Box(x0, y0, x1 - x0 + 1, y1 - y0 + 1), None
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.array([[int(round(x)), int(round(y))] for x, y in points], np.int32)], 255)
    return None, mask


def prompt_image_msg(name: str, example: ExampleImage, header=None) -> Image:
    """The image a prompt was embedded from, rgb8, ``frame_id`` = the prompt's name."""
    msg = cv2_to_imgmsg(example.prompt_image, "rgb8", header)
    msg.header.frame_id = name
    return msg


def thresholds_from_request(names: Sequence[str], values: Sequence[float]) -> dict[str, float | None]:
    """A ``SetThresholds`` request: name -> threshold, or None (NaN: back to the default).
    PromptError for a count mismatch, an empty or repeated name, or a value outside [0, 1]."""
    if len(names) != len(values):
        raise PromptError(f"{len(names)} prompts but {len(values)} thresholds: give one threshold per prompt")
    found: dict[str, float | None] = {}
    for name, value in zip(names, values):
        name = str(name).strip()
        if not name:
            raise PromptError("a prompt name is empty")
        if name in found:
            raise PromptError(f"'{name}' is given twice")
        # The request's float32 (0.2 arrives as 0.20000000298): the shortest decimal that is the
        # same float32, i.e. what the caller wrote, so that the active value, the parameter and
        # the store agree (ceil(0.20000000298 * 255) is 52, ceil(0.2 * 255) is 51).
        found[name] = None if math.isnan(value) else check_threshold(name, float(
            np.format_float_positional(np.float32(value), unique=True, trim="-")))
    return found
