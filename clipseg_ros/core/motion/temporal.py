"""One camera over time: the last model frame (for propagation), smoothing, and object tracks.

No ROS in here. :class:`CameraTimeline` is what the node keeps per camera between frames. The
model's thread calls :meth:`model_frame` with each new result; the propagation thread calls
:meth:`propagate` with later frames. Both then call :meth:`track` with the frame's scene. A lock
makes each call atomic, so a propagated frame never mixes two model frames.
"""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from clipseg_ros.core.motion.propagation import FlowOptions, MaskPropagator, PropagationStopped, TemporalSmoother
from clipseg_ros.core.motion.tracking import ObjectTracker
from clipseg_ros.core.results.postprocess import SegmentationResult, result_from_masks
from clipseg_ros.core.results.scene import Scene

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
    """``propagate``: carry masks to frames between model frames (for at most ``max_model_age``
    s after the model frame); ``smoothing``: weight of a new model frame in the per-prompt
    average (1 = none); ``tracking`` with ``max_missed``."""

    propagate: bool = False
    smoothing: float = 1.0
    tracking: bool = True
    max_missed: int = 5
    flow: FlowOptions = FlowOptions()
    max_model_age: float = 5.0


@dataclass(frozen=True)
class ModelFrame:
    """What a propagated frame comes from: its stamp (s) and the frames carried since."""

    stamp: float
    frames: int = 0


def masks_key(prompt_set):
    """What a prompt set's masks depend on: its embeddings (the same object after a change of
    thresholds or max_prompts only, which leave the masks as they are); its names when empty."""
    return prompt_set.names if prompt_set.embeddings is None else prompt_set.embeddings


# Frames in a row not newer than the model frame before propagation says the stamps do not increase.
STALLED_STAMPS = 3


class CameraTimeline:
    """One camera's last model frame, smoothing and tracks; every call is atomic (one lock).

    ``track_ids``: where new track ids come from (shared by the node's cameras and kept across
    configure, so an id is never given twice while the node lives)."""

    def __init__(self, options: TemporalOptions = TemporalOptions(), track_ids: Iterator[int] | None = None):
        self.options = options
        self._lock = threading.Lock()
        self._propagator = MaskPropagator(options.flow)
        self._smoother = TemporalSmoother(options.smoothing, options.flow) if options.smoothing < 1.0 else None
        self._track_ids = track_ids if track_ids is not None else itertools.count(1)
        self._tracker = ObjectTracker(max_missed=options.max_missed, ids=self._track_ids)
        self._result: SegmentationResult | None = None
        self._key = None
        self._not_newer = 0  # frames in a row not newer than the model frame
        self._carried_stamp = -math.inf  # of the newest frame carried (each frame is carried once)
        self.model_stamp: float | None = None  # of the last model frame
        self.stopped = "no model frame yet"  # why propagation is not running ('' while it is)
        self.propagated_frames = 0
        self.last_age: float | None = None  # s between the last propagated frame and its model frame

    def reset(self) -> None:
        """Forget the model frame, the frames seen, the average and the tracks (ids go on):
        after a deactivation nothing is carried from before it."""
        with self._lock:
            self._propagator.forget()
            if self._smoother is not None:
                self._smoother = TemporalSmoother(self.options.smoothing, self.options.flow)
            self._tracker = ObjectTracker(max_missed=self.options.max_missed, ids=self._track_ids)
            self._result = self._key = self.model_stamp = self.last_age = None
            self._not_newer, self._carried_stamp = 0, -math.inf
            self.stopped = "no model frame yet"

    def model_frame(self, rgb: np.ndarray, result: SegmentationResult, prompt_set, stamp: float) -> SegmentationResult:
        """A new model result for frame ``rgb`` (stamped ``stamp`` s) made with ``prompt_set``:
        smoothed when smoothing is on, and the start of the next propagation."""
        key = masks_key(prompt_set)
        with self._lock:
            if self._smoother is not None:
                result = result_from_masks(self._smoother.update(rgb, result.masks, key), result)
            if key is not self._key:
                self._tracker.forget(keep=result.prompts)
            self._key, self._result, self.model_stamp = key, result, stamp
            self._not_newer = 0
            if self.options.propagate:
                self._propagator.reset(rgb, result.masks, key, stamp)
                self.stopped = ""
            return result

    def propagate(self, rgb: np.ndarray, prompt_set, stamp: float,
                  thresholds: tuple[float, ...]) -> tuple[SegmentationResult, ModelFrame]:
        """The last model result carried to a later frame, with ``thresholds`` (the prompt set's
        now: a threshold change applies at once); PropagationStopped saying why not (also for
        a frame not newer than the model frame, or too long after it)."""
        with self._lock:
            if self.model_stamp is not None and stamp <= self.model_stamp:
                self._not_newer += 1
                if stamp == 0.0:
                    self.stopped = "the camera's frames are stamped 0: propagation orders frames by header.stamp"
                elif self._not_newer >= STALLED_STAMPS:
                    self.stopped = (f"{self._not_newer} frames in a row are not newer than the model frame "
                                    f"(stamp {stamp:.3f} s): the camera's stamps do not increase")
                raise PropagationStopped("the frame is not newer than the model frame")
            self._not_newer = 0
            if stamp <= self._carried_stamp:  # the other thread carried it (or a newer one) already
                raise PropagationStopped("the frame is not newer than the last carried frame")
            if self.model_stamp is not None and stamp - self.model_stamp > self.options.max_model_age:
                self._propagator.remember(rgb, stamp)  # a later model frame may chain through it
                self.stopped = (f"the last model frame is {stamp - self.model_stamp:.1f} s older than the frame "
                                f"(max_model_age {self.options.max_model_age:g} s)")
                raise PropagationStopped(self.stopped)
            try:
                carried = self._propagator.propagate(rgb, masks_key(prompt_set), stamp)
            except PropagationStopped as exc:
                self.stopped = str(exc)
                raise
            self.stopped = ""
            self._carried_stamp = stamp
            self.propagated_frames += 1
            self.last_age = stamp - self.model_stamp
            like = replace(self._result, thresholds=tuple(thresholds))
            result = result_from_masks(carried.masks, like, carried.grid_masks)
            result.timings_ms = {}
            return result, ModelFrame(self.model_stamp, carried.frames)

    def track(self, scene: Scene, image_size: tuple[int, int], prompt_set) -> Scene:
        """``scene`` with a track id and age on every object (unchanged when tracking is off).
        PropagationStopped when ``prompt_set`` is no longer the camera's (a model frame with
        other prompts came meanwhile: tracking this frame would bring back removed prompts' tracks)."""
        if not self.options.tracking:
            return scene
        with self._lock:
            if masks_key(prompt_set) is not self._key:
                raise PropagationStopped("the prompts changed while the frame was being processed")
            ids = self._tracker.update([[o.object for o in objs] for objs in scene.objects], image_size)
        return replace(scene, objects=tuple(tuple(replace(o, track=t) for o, t in zip(objs, tids))
                                            for objs, tids in zip(scene.objects, ids)))
