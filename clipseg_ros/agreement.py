"""How closely a reduced precision's masks follow float32's: the guard on quality.

No ROS in here. Used by the tests (random weights), by ``benchmarks/agreement.py`` (a user's
checkpoint and images) and by ``benchmarks/bench_precision.py``. Both engines segment the same
frames with the same prompts; compared are the published masks (uint8, probability * 255):

- mask agreement: the share of pixels on which the thresholded masks (each prompt at its own
  threshold) agree, over all frames and prompts; and the worst single frame-and-prompt;
- the largest probability difference anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from clipseg_ros.postprocess import SegmentationResult, mask_level

GOAL = 0.99  # mask pixel agreement at the default threshold


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

    @property
    def meets_goal(self) -> bool:
        return self.mask_agreement >= GOAL


def compare_results(reference: Sequence[SegmentationResult], candidate: Sequence[SegmentationResult]) -> Agreement:
    """Agreement of ``candidate`` with ``reference`` (the same frames and prompts, in order)."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"need the same non-zero number of results, got {len(reference)} and {len(candidate)}")
    agreeing = total = 0
    worst, largest = 1.0, 0
    for ref, cand in zip(reference, candidate):
        if ref.masks.shape != cand.masks.shape or list(ref.prompts) != list(cand.prompts):
            raise ValueError("results of other frames or prompts cannot be compared")
        for k, threshold in enumerate(ref.prompt_thresholds):
            level = mask_level(threshold)
            same = int(np.count_nonzero((ref.masks[k] >= level) == (cand.masks[k] >= level)))
            agreeing += same
            total += ref.masks[k].size
            worst = min(worst, same / ref.masks[k].size)
            largest = max(largest, int(np.abs(ref.masks[k].astype(np.int16) - cand.masks[k]).max()))
    return Agreement(frames=len(reference), prompts=len(reference[0].prompts), mask_agreement=agreeing / total,
                     worst_mask_agreement=worst, max_probability_difference=largest / 255.0)


def measure_agreement(reference_engine, candidate_engine, images: Sequence[np.ndarray], prompts: Sequence[str],
                      threshold: float = 0.4) -> Agreement:
    """Segment ``images`` (RGB uint8) with ``prompts`` on both engines and compare."""
    ref_set = reference_engine.make_prompt_set(list(prompts))
    cand_set = candidate_engine.make_prompt_set(list(prompts))
    reference = [reference_engine.segment(im, ref_set, threshold=threshold) for im in images]
    candidate = [candidate_engine.segment(im, cand_set, threshold=threshold) for im in images]
    return compare_results(reference, candidate)
