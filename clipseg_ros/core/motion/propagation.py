"""Masks between model frames: carried along with dense optical flow, and smoothed over time.

No ROS in here. The model gives a result every second or so on a CPU; the camera runs at 30 Hz.
:class:`MaskPropagator` warps the last model masks to each later frame of the same camera with
OpenCV's DIS optical flow, computed on grey frames ``flow_width`` pixels wide. Flow is chained
frame to frame (each frame's pixels are traced back to the model frame through the previous
frame), so motion of any size between two frames adds up. :class:`TemporalSmoother` averages
each prompt's probabilities over model frames, aligned by the flow between them.

Both stop when they cannot be trusted, and say why (:class:`PropagationStopped`): no model frame
yet, other prompts than the model frame's, another frame size, a frame too small for the flow
(under :data:`MIN_FLOW_SIDE` pixels on a side of the flow grid), or a scene cut: the previous
frame warped by the flow no longer looks like the current one, judged relative to the scene's
contrast (mean absolute grey difference over the frames' mean absolute deviation from their mean,
at least :data:`CONTRAST_FLOOR` grey levels, above ``max_flow_error``). Measured on synthetic
pans and cuts at grey standard deviations 15, 25 and 50: pans of 5-15 px a frame score
0.05-0.29, cuts between two views 1.29-1.57, whatever the contrast; a fixed share of the grey
range missed every cut between low-contrast views.

A model result comes late: inference takes a second while the camera goes on. The propagator
keeps the grey frames it saw (:data:`HISTORY_FRAMES` at most), so a new model frame is carried
to the newest of them through every frame in between, not in one step across the whole delay.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


class PropagationStopped(RuntimeError):
    """Masks cannot be carried to this frame; the message says why."""


@dataclass(frozen=True)
class FlowOptions:
    """``flow_width``: grey frames are resized to this width for the flow (height in proportion);
    ``preset``: DIS preset; ``max_flow_error``: the scene-cut threshold (see the module doc)."""

    flow_width: int = 320
    preset: str = "fast"
    max_flow_error: float = 0.6


# DIS needs at least this many pixels on each side of the flow grid (it raises on 640x30 -> 320x15).
MIN_FLOW_SIDE = 16
# Contrast below this (mean absolute deviation, grey levels) is noise: a blank wall is not a cut.
CONTRAST_FLOOR = 4.0
# Grey frames a propagator keeps to carry a late model frame forward (3 s at 30 Hz, ~7 MB at 320x240).
HISTORY_FRAMES = 90


def contrast(grey: np.ndarray) -> float:
    """Mean absolute deviation of a grey frame from its mean, in grey levels."""
    return float(cv2.mean(cv2.absdiff(grey, np.full_like(grey, int(round(cv2.mean(grey)[0])))))[0])


class FlowField:
    """Dense flow on small grey frames: ``grey`` prepares a frame, ``back`` gives for every
    pixel of the current frame where it was in the previous one, and how well that fits."""

    def __init__(self, options: FlowOptions = FlowOptions()):
        self.options = options
        self._dis = cv2.DISOpticalFlow_create(PRESETS[options.preset])
        self._grid: np.ndarray | None = None

    def grid(self, shape: tuple[int, int]) -> np.ndarray:
        """(h, w, 2) float32 pixel positions (x, y) of a flow-grid frame: where nothing moved."""
        if self._grid is None or self._grid.shape[:2] != tuple(shape):
            h, w = shape
            self._grid = np.dstack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
        return self._grid

    def grey(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        width = min(w, self.options.flow_width)
        height = max(1, round(h * width / w))
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        return grey if (height, width) == (h, w) else cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)

    @staticmethod
    def too_small(grey: np.ndarray) -> str:
        """Why a flow-grid frame is too small for the flow ('' when it is not)."""
        h, w = grey.shape[:2]
        if min(h, w) >= MIN_FLOW_SIDE:
            return ""
        return f"the frame is {w}x{h} on the flow grid: optical flow needs at least {MIN_FLOW_SIDE} px on a side"

    def back(self, previous: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, float]:
        """(map, error): ``map`` (h, w, 2) float32 = where each current pixel was in
        ``previous`` (x, y); ``error`` = mean |current - previous warped by it| relative to
        the frames' contrast (see the module doc)."""
        flow = self._dis.calc(current, previous, None)
        where = self.grid(current.shape) + flow
        warped = cv2.remap(previous, where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        difference = float(cv2.mean(cv2.absdiff(warped, current))[0])
        return where, difference / max(contrast(previous), contrast(current), CONTRAST_FLOOR)


def warp_masks(masks: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(N, H, W) masks (uint8 or float32) sampled at ``where`` ((h, w, 2) positions in flow-grid
    pixels of the masks' frame), upsampled to the masks' own grid. A position inside the frame's
    pixels (up to half a pixel past the outer centres) takes the masks there, edge pixels
    included (no erosion from the border); beyond, 0."""
    n, mh, mw = masks.shape
    fh, fw = where.shape[:2]
    sx, sy = mw / fw, mh / fh
    if (fh, fw) != (mh, mw):
        where = cv2.resize(where, (mw, mh), interpolation=cv2.INTER_LINEAR)
    # flow-grid pixel centres -> mask-grid pixel centres
    map_x = (where[:, :, 0] + 0.5) * np.float32(sx) - 0.5
    map_y = (where[:, :, 1] + 0.5) * np.float32(sy) - 0.5
    outside = (map_x < -0.5) | (map_x > mw - 0.5) | (map_y < -0.5) | (map_y > mh - 0.5)
    out = np.empty_like(masks)
    for k in range(n):
        cv2.remap(masks[k], map_x, map_y, cv2.INTER_LINEAR, dst=out[k], borderMode=cv2.BORDER_REPLICATE)
        out[k][outside] = 0
    return out


def compose(where: np.ndarray, step: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Chained flow: ``where`` (h, w, 2) maps the previous frame's pixels to the model frame,
    ``step`` the current frame's to the previous one; their composition maps the current frame's
    to the model frame. The displacement is what is interpolated (extended past the edges), so a
    position just outside the previous frame keeps its own offset instead of a border value."""
    displacement = cv2.remap(where - grid, step, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return step + displacement


def resize_masks(masks: np.ndarray, shape: tuple[int, int], interpolation: int) -> np.ndarray:
    """(N, H, W) masks resized to (N, h, w) with an OpenCV ``interpolation``; as they are when
    already that size."""
    h, w = shape
    if masks.shape[1:] == (h, w):
        return masks
    out = np.empty((masks.shape[0], h, w), masks.dtype)
    for k in range(masks.shape[0]):
        cv2.resize(masks[k], (w, h), dst=out[k], interpolation=interpolation)
    return out


@dataclass(frozen=True, eq=False)
class Propagated:
    """Masks carried to a later frame: ``masks`` (N, H, W) uint8 on the model frame's grid,
    ``grid_masks`` the same on the flow grid (where they were warped; cheaper to measure),
    ``frames`` since the model frame, ``error`` of the last flow step."""

    masks: np.ndarray
    grid_masks: np.ndarray
    frames: int
    error: float


class MaskPropagator:
    """Carries one camera's last model masks to its later frames (not thread-safe: one caller).

    Every frame given to :meth:`propagate` is kept (grey, flow grid) with its stamp, so that
    :meth:`reset` with a model frame that is already several frames old catches up through the
    frames seen since it, one flow step a frame, at the next :meth:`propagate`."""

    def __init__(self, options: FlowOptions = FlowOptions(), history: int = HISTORY_FRAMES):
        self.flow = FlowField(options)
        self._key = None
        self._masks = self._previous = self._where = None
        self._size = self._mask_shape = None
        self._stamp: float | None = None
        self._frames = 0
        self._stopped = "no model frame yet"
        self._history: deque = deque(maxlen=history)  # (stamp s, grey) of frames seen, oldest first
        self._catch_up = False

    def reset(self, rgb: np.ndarray, masks: np.ndarray, key, stamp: float = math.inf) -> None:
        """A new model frame: ``rgb`` (H, W, 3) the frame the model saw, stamped ``stamp`` s,
        ``masks`` its (N, h, w) uint8 masks, ``key`` what they were made with (another key at
        :meth:`propagate` stops).

        The masks are kept and warped on the flow grid, then upsampled to their own grid: the
        model's grid is 352x352, so a 320 px flow grid loses little, and warping 8 masks there
        costs a fifth of warping them at 640x480."""
        self._previous = self.flow.grey(rgb)
        self._key, self._size, self._stamp = key, rgb.shape[:2], stamp
        # averaged down to the flow grid
        self._masks = resize_masks(masks, self._previous.shape, cv2.INTER_AREA)
        self._mask_shape = masks.shape[1:]
        self._where = self.flow.grid(self._previous.shape).copy()
        self._frames, self._stopped = 0, self.flow.too_small(self._previous)
        self._catch_up = True

    def forget(self, reason: str = "no model frame yet") -> None:
        """Drop the model frame and the frames seen (a camera pause, a reactivation)."""
        self._history.clear()
        self._masks = self._previous = self._where = None
        self._stopped, self._catch_up = reason, False

    def stop(self, reason: str) -> None:
        self._stopped = reason

    def remember(self, rgb: np.ndarray, stamp: float) -> np.ndarray:
        """Keep a frame (grey, flow grid) that a later model frame may be carried through; its grey."""
        grey = self.flow.grey(rgb)
        self._history.append((stamp, grey))
        return grey

    def propagate(self, rgb: np.ndarray, key, stamp: float = math.inf) -> Propagated:
        """The model frame's masks carried to ``rgb``, a later frame of the same camera stamped
        ``stamp`` s. PropagationStopped (and stopped until the next :meth:`reset`) when they
        cannot be."""
        current = self.remember(rgb, stamp)
        if self._stopped:
            raise PropagationStopped(self._stopped)
        if key is not self._key:
            self._stopped = "the prompts changed since the model frame"
            raise PropagationStopped(self._stopped)
        if rgb.shape[:2] != self._size:
            self._stopped = (f"the frame size changed from {self._size[1]}x{self._size[0]} to "
                             f"{rgb.shape[1]}x{rgb.shape[0]}")
            raise PropagationStopped(self._stopped)
        if self._catch_up:
            self._catch_up = False
            for seen_stamp, grey in list(self._history)[:-1]:  # the frames between the model frame and this one
                if seen_stamp > self._stamp:
                    self._step(grey)
        error = self._step(current)
        grid_masks = warp_masks(self._masks, self._where)
        return Propagated(resize_masks(grid_masks, self._mask_shape, cv2.INTER_LINEAR), grid_masks, self._frames, error)

    def _step(self, current: np.ndarray) -> float:
        """One flow step from the previous frame to ``current``; its error. PropagationStopped on a cut."""
        step, error = self.flow.back(self._previous, current)
        if error > self.flow.options.max_flow_error:
            self._stopped = (f"scene cut: the flow no longer explains the frame (error {error:.2f} of the scene's "
                             f"contrast > {self.flow.options.max_flow_error:g})")
            raise PropagationStopped(self._stopped)
        # where each current pixel was in the model frame: the previous frame's map, read where
        # the pixel was in the previous frame
        self._where = compose(self._where, step, self.flow.grid(current.shape))
        self._previous = current
        self._frames += 1
        return error


# Flow below this (95th percentile of the per-pixel motion, flow-grid pixels) is sensor noise on
# a still scene: warping by it would only blur the average.
STILL_MOTION_PX = 0.5


class TemporalSmoother:
    """Per prompt, an exponential average of the masks of successive model frames, the older
    average carried to the new frame by the flow between them (not moved when the scene is
    still): ``weight`` of the new frame (1 = no smoothing). Starts again on other prompts,
    another size or a scene cut. The average is kept in float32."""

    def __init__(self, weight: float, options: FlowOptions = FlowOptions()):
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"smoothing weight must be in (0, 1], got {weight}")
        self.weight = weight
        self.flow = FlowField(options)
        self._key = self._grey = self._average = None

    def update(self, rgb: np.ndarray, masks: np.ndarray, key) -> np.ndarray:
        """The smoothed (N, h, w) uint8 masks for a model frame ``rgb`` with ``masks`` (as they
        are, starting again, on a frame too small for the flow)."""
        grey = self.flow.grey(rgb)
        fresh = (key is not self._key or self._average is None or self._average.shape != masks.shape
                 or self._grey.shape != grey.shape or bool(self.flow.too_small(grey)))
        if not fresh:
            where, error = self.flow.back(self._grey, grey)
            fresh = error > self.flow.options.max_flow_error
        if fresh:
            average = masks.astype(np.float32)
        else:
            motion = where - self.flow.grid(grey.shape)
            if float(np.percentile(np.hypot(motion[..., 0], motion[..., 1]), 95)) < STILL_MOTION_PX:
                carried, inside = self._average, None
            else:
                carried = warp_masks(self._average, where)
                inside = warp_masks(np.full((1, *masks.shape[1:]), 255, np.uint8), where)[0] == 255
            average = self.weight * masks.astype(np.float32) + (1.0 - self.weight) * carried
            if inside is not None:
                average[:, ~inside] = masks[:, ~inside]  # came from outside the older frame: only the new one
        self._key, self._grey, self._average = key, grey, average
        return np.clip(np.rint(average), 0, 255).astype(np.uint8)
