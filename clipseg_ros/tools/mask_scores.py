"""Scores of a predicted mask against the truth: IoU and the boundary F-score.

The boundary F-score (as in the DAVIS benchmark): a mask's boundary is its pixels with a
4-neighbour outside it (or on the image border); precision is the share of the prediction's
boundary pixels within ``tolerance`` pixels (Euclidean) of the truth's boundary, recall the share
of the truth's within as far of the prediction's; F = 2PR / (P + R). Two empty masks score 1.
"""

from __future__ import annotations

import cv2
import numpy as np


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks (1.0 when both are empty)."""
    union = np.count_nonzero(predicted | truth)
    return 1.0 if union == 0 else np.count_nonzero(predicted & truth) / union


def boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the mask's pixels with a 4-neighbour outside it (the image border counts as outside)."""
    inside = np.pad(mask.astype(np.uint8), 1)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return (mask & (cv2.erode(inside, cross)[1:-1, 1:-1] == 0))


def boundary_f_score(predicted: np.ndarray, truth: np.ndarray, tolerance: float = 2.0) -> float:
    """The boundary F-score of two (H, W) bool masks, boundaries matched within ``tolerance`` px."""
    pb, tb = boundary(predicted), boundary(truth)
    if not pb.any() and not tb.any():
        return 1.0
    if not pb.any() or not tb.any():
        return 0.0
    to_truth = cv2.distanceTransform((~tb).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    to_predicted = cv2.distanceTransform((~pb).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    precision = float(np.mean(to_truth[pb] <= tolerance))
    recall = float(np.mean(to_predicted[tb] <= tolerance))
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
