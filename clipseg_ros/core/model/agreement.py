"""How closely a reduced precision's masks follow float32's: the guard on quality.

No ROS in here. Used by the tests (random weights), by ``benchmarks/agreement.py`` (a user's
checkpoint and images) and by ``benchmarks/bench_precision.py``. Both engines segment the same
frames with the same prompts; compared are the published masks (uint8, probability * 255):

- mask agreement: the share of pixels on which the thresholded masks (each prompt at its own
  threshold) agree, over all frames and prompts; and the worst single frame-and-prompt;
- per frame and prompt, the IoU of the thresholded masks (where either has at least
  :data:`MIN_OBJECT_PIXELS`), and the worst one;
- objects: each 8-connected region of the reference's mask of at least MIN_OBJECT_PIXELS is
  found when the candidate's mask covers at least half of it, else lost;
- the largest probability difference anywhere.

Pixel agreement alone cannot see a lost object: a 40x60 object that vanishes from a 640x480 frame
still leaves 99.22% of its pixels agreeing. So the goal is all three: pixel agreement >= 99%,
every IoU >= :data:`IOU_GOAL`, and no object lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from clipseg_ros.core.results.postprocess import SegmentationResult, mask_level

GOAL = 0.99  # mask pixel agreement at the default threshold
IOU_GOAL = 0.8  # thresholded masks of one frame and prompt
MIN_OBJECT_PIXELS = 64  # smaller regions (and masks) are specks: the node's default min_object_area


@dataclass(frozen=True)
class Agreement:
    """``mask_agreement`` over every pixel of every frame and prompt; ``worst_mask_agreement``
    of the worst frame-and-prompt; ``max_probability_difference`` in probability units (masks
    are uint8, so 1/255 is the smallest step)."""

    frames: int
    prompts: int
    mask_agreement: float
    worst_mask_agreement: float
    max_probability_difference: float
    worst_iou: float = 1.0
    objects: int = 0  # in the reference
    lost_objects: int = 0

    @property
    def meets_goal(self) -> bool:
        return self.mask_agreement >= GOAL and self.worst_iou >= IOU_GOAL and self.lost_objects == 0

    def as_row(self) -> dict:
        """The figures a benchmark's JSON row carries (rounded to what the tables show)."""
        return dict(mask_agreement=round(self.mask_agreement, 4), worst_mask_agreement=round(self.worst_mask_agreement, 4),
                    worst_iou=round(self.worst_iou, 4), objects=self.objects, lost_objects=self.lost_objects,
                    max_probability_difference=round(self.max_probability_difference, 3), meets_goal=self.meets_goal)


def compare_results(reference: Sequence[SegmentationResult], candidate: Sequence[SegmentationResult]) -> Agreement:
    """Agreement of ``candidate`` with ``reference`` (the same frames and prompts, in order)."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"need the same non-zero number of results, got {len(reference)} and {len(candidate)}")
    agreeing = total = objects = lost = 0
    worst, largest, worst_iou = 1.0, 0, 1.0
    for ref, cand in zip(reference, candidate):
        if ref.masks.shape != cand.masks.shape or list(ref.prompts) != list(cand.prompts):
            raise ValueError("results of other frames or prompts cannot be compared")
        for k, threshold in enumerate(ref.prompt_thresholds):
            level = mask_level(threshold)
            inside_ref, inside_cand = ref.masks[k] >= level, cand.masks[k] >= level
            same = int(np.count_nonzero(inside_ref == inside_cand))
            union = int(np.count_nonzero(inside_ref | inside_cand))
            if max(int(inside_ref.sum()), int(inside_cand.sum())) >= MIN_OBJECT_PIXELS:
                worst_iou = min(worst_iou, int(np.count_nonzero(inside_ref & inside_cand)) / union)
            found, missing = _objects_kept(inside_ref, inside_cand)
            objects, lost = objects + found + missing, lost + missing
            agreeing += same
            total += ref.masks[k].size
            worst = min(worst, same / ref.masks[k].size)
            largest = max(largest, int(np.abs(ref.masks[k].astype(np.int16) - cand.masks[k]).max()))
    return Agreement(frames=len(reference), prompts=len(reference[0].prompts), mask_agreement=agreeing / total,
                     worst_mask_agreement=worst, max_probability_difference=largest / 255.0, worst_iou=worst_iou,
                     objects=objects, lost_objects=lost)


def _objects_kept(reference: np.ndarray, candidate: np.ndarray) -> tuple[int, int]:
    """(found, lost) reference objects (8-connected, >= MIN_OBJECT_PIXELS): found when the
    candidate covers at least half of one."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(reference.astype(np.uint8), connectivity=8)
    big = [c for c in range(1, count) if stats[c, cv2.CC_STAT_AREA] >= MIN_OBJECT_PIXELS]
    if not big:
        return 0, 0
    covered = np.bincount(components[candidate], minlength=count)
    found = sum(1 for c in big if covered[c] * 2 >= stats[c, cv2.CC_STAT_AREA])
    return found, len(big) - found


def measure_agreement(reference_engine, candidate_engine, images: Sequence[np.ndarray], prompts: Sequence[str],
                      threshold: float = 0.4) -> Agreement:
    """Segment ``images`` (RGB uint8) with ``prompts`` on both engines and compare."""
    ref_set = reference_engine.make_prompt_set(list(prompts))
    cand_set = candidate_engine.make_prompt_set(list(prompts))
    reference = [reference_engine.segment(im, ref_set, threshold=threshold) for im in images]
    candidate = [candidate_engine.segment(im, cand_set, threshold=threshold) for im in images]
    return compare_results(reference, candidate)
