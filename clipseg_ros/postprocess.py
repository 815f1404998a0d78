"""Post-processing of CLIPSeg logits: probabilities, masks, label image, per-prompt stats, overlay.

No ROS in here. The heavy steps (sigmoid, upsampling, thresholding, reductions) run in torch on
the logits' device, so a GPU does them next to the model and only uint8 masks cross to the host;
the overlay is drawn with OpenCV on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# Label image is mono8: value k names prompts[k-1], so at most 255 prompts can be labelled.
MAX_LABELS = 255


@dataclass
class PromptStats:
    """Per-prompt numbers, as in clipseg_ros_interfaces/PromptConfidence.

    bbox is (x, y, width, height) in input-image pixels, all zero when the mask is empty;
    centroid is (x, y) in input-image pixels, NaN when the mask is empty.
    """

    prompt: str
    max_score: float
    mean_score: float
    area_fraction: float
    detected: bool
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]


@dataclass
class SegmentationResult:
    """Everything one frame produced. Arrays are numpy; shapes use (H, W) of the output grid.

    - ``masks``: (N, H, W) uint8, probability * 255 rounded.
    - ``label``: (H, W) uint8, 0 = background, k = prompts[k-1] (argmax over prompts, only where
      the winning probability >= threshold).
    - ``stats``: one :class:`PromptStats` per prompt.
    - ``image_size``: the input image's (height, width).
    """

    prompts: list[str]
    masks: np.ndarray
    label: np.ndarray
    stats: list[PromptStats]
    threshold: float
    image_size: tuple[int, int]
    timings_ms: dict = field(default_factory=dict)
    prompt_version: int = 0


def empty_result(image_size: tuple[int, int], threshold: float) -> SegmentationResult:
    """Valid result for an empty prompt set: no masks, all-background label."""
    h, w = int(image_size[0]), int(image_size[1])
    return SegmentationResult(prompts=[], masks=np.zeros((0, h, w), np.uint8),
                              label=np.zeros((h, w), np.uint8), stats=[], threshold=float(threshold),
                              image_size=(h, w))


@torch.inference_mode()
def postprocess_logits(logits: torch.Tensor, prompts: Sequence[str], image_size: tuple[int, int], *,
                       threshold: float, output_size: tuple[int, int] | None = None) -> SegmentationResult:
    """Turn raw logits (N, h, w) for one frame into a :class:`SegmentationResult`.

    ``image_size``: the input image's (H, W). ``output_size``: grid of masks and label; None means
    the input size (bilinear upsampling of probabilities, align_corners=False). Stats are
    computed on the output grid and expressed in input-image pixels.
    """
    if logits.ndim == 2:  # older transformers squeeze N = 1
        logits = logits[None]
    n = logits.shape[0]
    in_h, in_w = int(image_size[0]), int(image_size[1])
    out_h, out_w = (in_h, in_w) if output_size is None else (int(output_size[0]), int(output_size[1]))
    # Probabilities in float32 whatever the model dtype: fp16 thresholds and sums lose too much.
    probs = torch.sigmoid(logits.float())
    if probs.shape[-2:] != (out_h, out_w):
        probs = F.interpolate(probs[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]
    above = probs >= threshold
    masks = (probs * 255.0).round_().to(torch.uint8)

    best_prob, best_idx = probs.max(dim=0)
    label = torch.where(best_prob >= threshold, best_idx + 1, torch.zeros_like(best_idx))
    label = label.clamp_(max=MAX_LABELS).to(torch.uint8)

    # Reductions: area, mean inside mask, bbox and centroid from row/column counts.
    above_f = above.float()
    area = above_f.sum(dim=(1, 2))
    inside_sum = (probs * above_f).sum(dim=(1, 2))
    max_score = probs.amax(dim=(1, 2))
    row_counts = above_f.sum(dim=2)  # (N, H)
    col_counts = above_f.sum(dim=1)  # (N, W)
    ys = torch.arange(out_h, device=probs.device, dtype=torch.float32)
    xs = torch.arange(out_w, device=probs.device, dtype=torch.float32)
    cy_sum = (row_counts * ys).sum(dim=1)
    cx_sum = (col_counts * xs).sum(dim=1)
    row_any = row_counts > 0
    col_any = col_counts > 0
    big = max(out_h, out_w) + 1
    y0 = torch.where(row_any, ys.expand_as(row_counts), torch.full_like(row_counts, big)).amin(dim=1)
    y1 = torch.where(row_any, ys.expand_as(row_counts), torch.full_like(row_counts, -1)).amax(dim=1)
    x0 = torch.where(col_any, xs.expand_as(col_counts), torch.full_like(col_counts, big)).amin(dim=1)
    x1 = torch.where(col_any, xs.expand_as(col_counts), torch.full_like(col_counts, -1)).amax(dim=1)
    numbers = torch.stack([area, inside_sum, max_score, cy_sum, cx_sum, y0, y1, x0, x1], dim=1).cpu().numpy()

    sx, sy = in_w / out_w, in_h / out_h
    total = float(out_h * out_w)
    stats = []
    for k in range(n):
        a, inside, mx, cys, cxs, by0, by1, bx0, bx1 = (float(v) for v in numbers[k])
        if a > 0:
            # Output-grid pixel edges scaled to input pixels; pixel centres for the centroid.
            x_off = int(math.floor(bx0 * sx))
            y_off = int(math.floor(by0 * sy))
            x_end = min(in_w, int(math.ceil((bx1 + 1) * sx)))
            y_end = min(in_h, int(math.ceil((by1 + 1) * sy)))
            bbox = (x_off, y_off, x_end - x_off, y_end - y_off)
            centroid = ((cxs / a + 0.5) * sx - 0.5, (cys / a + 0.5) * sy - 0.5)
            mean = inside / a
        else:
            bbox, centroid, mean = (0, 0, 0, 0), (math.nan, math.nan), 0.0
        stats.append(PromptStats(prompt=str(prompts[k]), max_score=mx, mean_score=mean,
                                 area_fraction=a / total, detected=mx >= threshold, bbox=bbox,
                                 centroid=centroid))
    return SegmentationResult(prompts=list(prompts), masks=masks.cpu().numpy(), label=label.cpu().numpy(),
                              stats=stats, threshold=float(threshold), image_size=(in_h, in_w))


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
    colours = np.concatenate([np.zeros((1, 3), np.uint8), palette(len(prompts))])
    out = np.array(image_bgr, dtype=np.uint8, copy=True)
    if len(prompts):
        tint = colours[np.minimum(label, len(prompts))]
        fg = label > 0
        blended = cv2.addWeighted(out, 1.0 - alpha, tint, alpha, 0.0)
        out[fg] = blended[fg]
    _draw_legend(out, prompts, colours[1:], scores)
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
