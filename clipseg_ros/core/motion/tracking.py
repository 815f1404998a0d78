"""Object tracks: the same object keeps its integer id from frame to frame.

No ROS in here. Per prompt (by name), each frame's objects are matched to the live tracks of that
prompt: greedily by box IoU (highest first, at least ``min_iou``), then the rest by centroid
distance (nearest first, at most ``max_distance`` x the image diagonal). A matched track takes
the object's box; an unmatched object starts a track with a new id (from ``ids``: never given twice); a
track unmatched for more than ``max_missed`` frames in a row is dropped (lost). With propagation
on, frames between model frames move the objects with the flow, so boxes overlap from frame to
frame even when the camera moves.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from clipseg_ros.core.results.objects import DetectedObject


@dataclass
class Track:
    id: int
    prompt: str
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    age: int = 1  # frames it was matched in
    missed: int = 0  # frames in a row without a match


@dataclass(frozen=True)
class TrackId:
    """An object's track: its ``id`` and ``age`` (frames matched, 1 = new)."""

    id: int
    age: int


@dataclass
class ObjectTracker:
    """``ids``: where new track ids come from (share one among trackers, and keep it, so that no
    id is given twice: the node shares one among its cameras for its whole life)."""

    min_iou: float = 0.2
    max_distance: float = 0.1
    max_missed: int = 5
    tracks: dict[str, list[Track]] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def update(self, objects: Sequence[Sequence[DetectedObject]], image_size: tuple[int, int]) -> list[list[TrackId]]:
        """Match one frame's objects (per prompt, as from :func:`clipseg_ros.core.results.objects.find_objects`)
        to the tracks; the TrackId of every object, in the same order. Tracks of prompts without
        objects in this frame count it as missed."""
        diagonal = math.hypot(*image_size)
        found, seen = [], set()
        for objs in objects:
            if objs:
                seen.add(objs[0].prompt)
                found.append(self._update_prompt(objs[0].prompt, objs, diagonal))
            else:
                found.append([])
        for prompt in list(self.tracks):
            if prompt not in seen:
                self._age_unmatched(prompt, self.tracks[prompt], set())
        return found

    def forget(self, keep: Sequence[str] = ()) -> None:
        """Drop the tracks of every prompt not in ``keep`` (prompts changed)."""
        self.tracks = {p: t for p, t in self.tracks.items() if p in set(keep)}

    def _update_prompt(self, prompt: str, objs: Sequence[DetectedObject], diagonal: float) -> list[TrackId]:
        tracks = self.tracks.setdefault(prompt, [])
        pairs = sorted(((iou(t.bbox, o.bbox), ti, oi) for ti, t in enumerate(tracks) for oi, o in enumerate(objs)),
                       reverse=True)
        match: dict[int, int] = {}
        used: set[int] = set()
        for overlap, ti, oi in pairs:
            if overlap < self.min_iou:
                break
            if ti not in used and oi not in match:
                match[oi] = ti
                used.add(ti)
        close = sorted((math.dist(t.centroid, o.centroid), ti, oi) for ti, t in enumerate(tracks)
                       for oi, o in enumerate(objs) if ti not in used and oi not in match)
        for distance, ti, oi in close:
            if distance > self.max_distance * diagonal:
                break
            if ti not in used and oi not in match:
                match[oi] = ti
                used.add(ti)
        ids = []
        for oi, obj in enumerate(objs):
            if oi in match:
                track = tracks[match[oi]]
                track.bbox, track.centroid, track.age, track.missed = obj.bbox, obj.centroid, track.age + 1, 0
            else:
                track = Track(next(self.ids), prompt, obj.bbox, obj.centroid)
                tracks.append(track)
                used.add(len(tracks) - 1)
            ids.append(TrackId(track.id, track.age))
        self._age_unmatched(prompt, tracks, used)
        return ids

    def _age_unmatched(self, prompt: str, tracks: list[Track], used: set[int]) -> None:
        for i, track in enumerate(tracks):
            if i not in used:
                track.missed += 1
        self.tracks[prompt] = [t for t in tracks if t.missed <= self.max_missed]


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0
