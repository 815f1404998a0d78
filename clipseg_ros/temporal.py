"""One camera over time: the last model frame (for propagation), smoothing, and object tracks.

No ROS in here. :class:`CameraTimeline` is what the node keeps per camera between frames. The
model's thread calls :meth:`model_frame` with each new result; the propagation thread calls
:meth:`propagate` with later frames. Both then call :meth:`track` with the frame's scene. A lock
makes each call atomic, so a propagated frame never mixes two model frames.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np

from clipseg_ros.postprocess import SegmentationResult, result_from_masks
from clipseg_ros.propagation import FlowOptions, MaskPropagator, PropagationStopped, TemporalSmoother
from clipseg_ros.scene import Scene
from clipseg_ros.tracking import ObjectTracker


# The model has spare time when its worker waits (for the rate or for frames) at least this
# share of each cycle; below it the model runs flat out and every propagated frame slows it.
MODEL_SPARE_MIN = 0.1


def propagation_rate(target_hz: float, model_spare: float | None, propagation_cpu_s: float | None,
                     budget: float) -> float:
    """Hz propagation may run at: ``target_hz`` while the model has spare time (its worker's
    ``spare`` share >= :data:`MODEL_SPARE_MIN`, or not known yet); when the model has none, at
    most ``budget`` of one core: ``budget / propagation_cpu_s`` (CPU s per propagated cycle,
    not wall time, which grows while the model's threads have the cores), so that propagation
    takes a bounded share of the model's CPU instead of whatever ``target_hz`` costs. With no
    known cost yet, ``target_hz``."""
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"propagation budget must be in (0, 1], got {budget}")
    if model_spare is None or model_spare >= MODEL_SPARE_MIN or not propagation_cpu_s:
        return target_hz
    return min(target_hz, budget / propagation_cpu_s)


@dataclass(frozen=True)
class TemporalOptions:
    """``propagate``: carry masks to frames between model frames; ``smoothing``: weight of a
    new model frame in the per-prompt average (1 = none); ``tracking`` with ``max_missed``."""

    propagate: bool = False
    smoothing: float = 1.0
    tracking: bool = True
    max_missed: int = 5
    flow: FlowOptions = FlowOptions()


@dataclass(frozen=True)
class ModelFrame:
    """What a propagated frame comes from: its stamp (s) and the frames carried since."""

    stamp: float
    frames: int = 0


class CameraTimeline:
    def __init__(self, options: TemporalOptions = TemporalOptions()):
        self.options = options
        self._lock = threading.Lock()
        self._propagator = MaskPropagator(options.flow)
        self._smoother = TemporalSmoother(options.smoothing, options.flow) if options.smoothing < 1.0 else None
        self._tracker = ObjectTracker(max_missed=options.max_missed)
        self._result: SegmentationResult | None = None
        self._key = None
        self.model_stamp: float | None = None  # of the last model frame
        self.stopped = "no model frame yet"  # why propagation is not running ('' while it is)
        self.propagated_frames = 0
        self.last_age: float | None = None  # s between the last propagated frame and its model frame

    def model_frame(self, rgb: np.ndarray, result: SegmentationResult, key, stamp: float) -> SegmentationResult:
        """A new model result for frame ``rgb`` (stamped ``stamp`` s) made with prompt set
        ``key``: smoothed when smoothing is on, and the start of the next propagation."""
        with self._lock:
            if self._smoother is not None:
                result = result_from_masks(self._smoother.update(rgb, result.masks, key), result)
            if key is not self._key:
                self._tracker.forget(keep=result.prompts)
            self._key, self._result, self.model_stamp = key, result, stamp
            if self.options.propagate:
                self._propagator.reset(rgb, result.masks, key)
                self.stopped = ""
            return result

    def propagate(self, rgb: np.ndarray, key, stamp: float) -> tuple[SegmentationResult, ModelFrame]:
        """The last model result carried to a later frame; PropagationStopped saying why not
        (also for a frame not newer than the model frame)."""
        with self._lock:
            if self.model_stamp is not None and stamp <= self.model_stamp:
                raise PropagationStopped("the frame is not newer than the model frame")
            try:
                carried = self._propagator.propagate(rgb, key)
            except PropagationStopped as exc:
                self.stopped = str(exc)
                raise
            self.propagated_frames += 1
            self.last_age = stamp - self.model_stamp
            result = result_from_masks(carried.masks, self._result, carried.grid_masks)
            result.timings_ms = {}
            return result, ModelFrame(self.model_stamp, carried.frames)

    def track(self, scene: Scene, image_size: tuple[int, int]) -> Scene:
        """``scene`` with a track id and age on every object (unchanged when tracking is off)."""
        if not self.options.tracking:
            return scene
        with self._lock:
            ids = self._tracker.update([[o.object for o in objs] for objs in scene.objects], image_size)
        return replace(scene, objects=tuple(tuple(replace(o, track=t) for o, t in zip(objs, tids))
                                            for objs, tids in zip(scene.objects, ids)))
