"""Frames for the labeller: a folder of images, a video, or a rosbag2 (sqlite3 or mcap).

Each source yields :class:`SourceFrame` values in a stable order (folder: sorted relative
paths; video: frame order; bag: the bag's time order), with a ``name`` that is unique and the
same on every run, so a rerun can find what it already wrote. A frame that cannot be read is
yielded with ``error`` set (and no pixels): the labeller counts and lists it, and goes on.

Bags are read with ``rosbags`` (pure Python, sqlite3 and mcap) and their CDR messages turned
into real ``sensor_msgs`` messages by rclpy's deserializer, so raw and compressed images go
through exactly the node's conversion (:func:`clipseg_ros.ros.conversions.read_rgb8`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
IMAGE_TYPES = {"sensor_msgs/msg/Image": "Image", "sensor_msgs/msg/CompressedImage": "CompressedImage"}


class LabelInputError(ValueError):
    """The input cannot be used at all (missing, not a known kind, no image topic, unknown
    topic, a time range on a folder); the message says why."""


@dataclass(frozen=True)
class Selection:
    """Which frames: every ``stride``-th (per topic for a bag), at most ``limit`` in all
    (0 = no limit), between ``start`` and ``end`` seconds from the first frame (None = open)."""

    stride: int = 1
    limit: int = 0
    start: float | None = None
    end: float | None = None

    def __post_init__(self):
        if self.stride < 1:
            raise LabelInputError(f"--stride must be at least 1, got {self.stride}")
        if self.limit < 0:
            raise LabelInputError(f"--limit must be 0 (none) or more, got {self.limit}")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise LabelInputError(f"--end {self.end} is before --start {self.start}")

    @property
    def timed(self) -> bool:
        return self.start is not None or self.end is not None

    def in_time(self, seconds: float) -> bool:
        return (self.start is None or seconds >= self.start) and (self.end is None or seconds <= self.end)


@dataclass(frozen=True, eq=False)
class SourceFrame:
    """One input frame. ``name``: its outputs' name (relative, '/'-separated, no suffix);
    ``origin``: where it came from, for people; ``rgb`` (H, W, 3) uint8, or None with ``error``.
    ``file_name``: the image file (relative to the folder) when the frame is one, else ''.
    Bag frames also carry their ``topic``, the bag's record time ``bag_time_ns`` and the image
    header (``frame_id``, ``stamp_ns``), which the enriched bag's outputs copy."""

    name: str
    origin: str
    rgb: np.ndarray | None = None
    error: str = ""
    file_name: str = ""
    topic: str = ""
    bag_time_ns: int = 0
    frame_id: str = ""
    stamp_ns: int = 0


def open_source(path: str | Path, topics: Sequence[str] = (), selection: Selection = Selection(),
                exclude: str | Path | None = None) -> "FolderSource | VideoSource | BagSource":
    """The source for ``path``: a folder of images, a rosbag2 (a folder with metadata.yaml, or
    a .db3/.mcap file), one image, or a video. ``exclude``: a folder whose images a folder
    source skips (the output folder, when it lies inside the input). LabelInputError when it
    is none of these."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LabelInputError(f"{p} does not exist")
    if is_bag(p):
        return BagSource(p, topics, selection)
    if topics:
        raise LabelInputError(f"--topics applies to rosbags only; {p} is not a rosbag2")
    if p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES:
        return FolderSource(p, selection, exclude=Path(exclude).expanduser() if exclude else None)
    return VideoSource(p, selection)


def is_bag(path: Path) -> bool:
    return (path.is_dir() and (path / "metadata.yaml").exists()) or path.suffix in (".db3", ".mcap")


def _select(items: Iterator, selection: Selection) -> Iterator:
    """Every stride-th item, at most limit (the caller applies times)."""
    taken = 0
    for k, item in enumerate(items):
        if k % selection.stride:
            continue
        if selection.limit and taken >= selection.limit:
            return
        taken += 1
        yield item


class FolderSource:
    """Images in a folder (and its subfolders, except ``exclude``), sorted by relative path; or
    one image file. Names are relative paths without the suffix; where two images differ only
    in their suffix (a.png and a.jpg) both keep it (a_png, a_jpg)."""

    kind = "folder"

    def __init__(self, path: Path, selection: Selection = Selection(), exclude: Path | None = None):
        if selection.timed:
            raise LabelInputError("--start/--end need timed frames (a video or a rosbag); "
                                  f"{path} is a folder of images: use --stride/--limit")
        self.root = path if path.is_dir() else path.parent
        skip = exclude.resolve() if exclude is not None else None
        files = ([path] if path.is_file() else
                 sorted((p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                         and (skip is None or not p.resolve().is_relative_to(skip))),
                        key=lambda p: p.relative_to(path).as_posix()))
        if not files:
            raise LabelInputError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        stems = Counter(f.with_suffix("") for f in files)
        self._clashing = {f for f in files if stems[f.with_suffix("")] > 1}
        self.files = list(_select(iter(files), selection))

    def expected_frames(self) -> int | None:
        """How many frames the run will read (for a progress bar)."""
        return len(self.files)

    def __iter__(self) -> Iterator[SourceFrame]:
        for file in self.files:
            relative = file.relative_to(self.root).as_posix()
            stem = relative.rsplit(".", 1)[0]
            name = f"{stem}_{file.suffix.lower().lstrip('.')}" if file in self._clashing else stem
            yield read_image_file(file, name, relative)


def read_image_file(file: Path, name: str, origin: str) -> SourceFrame:
    """An image file as RGB uint8 (grey and 16-bit images converted, alpha dropped)."""
    try:
        data = np.fromfile(file, np.uint8)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except (OSError, cv2.error) as exc:
        return SourceFrame(name, origin, error=f"cannot read: {exc}", file_name=origin)
    if bgr is None:
        return SourceFrame(name, origin, error="not a decodable image (corrupt or empty)", file_name=origin)
    return SourceFrame(name, origin, rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), file_name=origin)


class VideoSource:
    """Frames of a video file (whatever OpenCV's FFmpeg reads), named ``frame_<index>``."""

    kind = "video"

    def __init__(self, path: Path, selection: Selection = Selection()):
        self.path, self.selection = path, selection
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise LabelInputError(f"{path} is not a folder, an image, a rosbag2 or a video OpenCV can read")
        self.fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.count = count if count > 0 else None  # raw MJPEG/H.264 streams report -1: not known
        capture.release()
        if selection.timed and self.fps <= 0:
            raise LabelInputError(f"{path} has no frame rate: --start/--end cannot be applied")

    def expected_frames(self) -> int | None:
        """How many frames the run will read (None when the video does not say how long it is):
        the time window, then the stride, then the limit."""
        if self.count is None:
            return self.selection.limit or None
        n = self.count
        if self.selection.timed:
            first = 0 if self.selection.start is None else int(np.ceil(self.selection.start * self.fps))
            last = n - 1 if self.selection.end is None else min(n - 1, int(np.floor(self.selection.end * self.fps)))
            n = max(0, last - first + 1)
        n = (n + self.selection.stride - 1) // self.selection.stride
        return min(n, self.selection.limit) if self.selection.limit else n

    def __iter__(self) -> Iterator[SourceFrame]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            def frames():
                index = 0
                while True:
                    if self.selection.end is not None and index / self.fps > self.selection.end:
                        return  # past the window: nothing more to read
                    ok, bgr = capture.read()
                    if not ok:
                        return
                    if not self.selection.timed or self.selection.in_time(index / self.fps):
                        yield index, bgr
                    index += 1
            for index, bgr in _select(frames(), self.selection):
                yield SourceFrame(f"frame_{index:06d}", f"{self.path.name}#{index}",
                                  rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()


def topic_dir(topic: str) -> str:
    """A topic as a folder name: '/camera/color/image_raw' -> 'camera_color_image_raw'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", topic.strip("/")) or "root"


def open_bag(path: Path):
    """A rosbags ``AnyReader`` for a rosbag2 folder or file. Bags recorded on Humble or older
    (sqlite3 schema 3, Humble's default storage) carry no message definitions: the standard
    messages' definitions (sensor_msgs, std_msgs, ...) come from rosbags' Humble typestore then,
    which are the same in every distribution since."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    return AnyReader([Path(path)], default_typestore=get_typestore(Stores.ROS2_HUMBLE))


class BagSource:
    """Image messages (raw and compressed) of a rosbag2, in the bag's time order; frames are
    named ``<topic folder>/<record time in ns>``. ``topics``: which (default: every image
    topic); LabelInputError for an unknown or non-image topic, or a bag without images."""

    kind = "rosbag"

    def __init__(self, path: Path, topics: Sequence[str] = (), selection: Selection = Selection()):
        self.path, self.selection = path, selection
        try:
            with open_bag(path) as reader:
                connections = list(reader.connections)
                self.start_ns = reader.start_time
        except Exception as exc:  # noqa: BLE001 - rosbags raises its own error types for bad bags
            raise LabelInputError(f"{path} cannot be opened as a rosbag2: {type(exc).__name__}: {exc}") from exc
        types = {c.topic: c.msgtype for c in connections}
        images = sorted(t for t, m in types.items() if m in IMAGE_TYPES)
        if not topics:
            if not images:
                raise LabelInputError(f"{path} has no image topics (sensor_msgs/msg/Image or CompressedImage); "
                                      f"its topics: {', '.join(sorted(types)) or 'none'}")
            topics = images
        for topic in topics:
            if topic not in types:
                raise LabelInputError(f"topic {topic} is not in {path}; its image topics: {', '.join(images) or 'none'}")
            if types[topic] not in IMAGE_TYPES:
                raise LabelInputError(f"topic {topic} holds {types[topic]}, not images; image topics: "
                                      f"{', '.join(images) or 'none'}")
        self.topics = list(dict.fromkeys(topics))
        self.counts = {c.topic: c.msgcount for c in connections if c.topic in self.topics}

    def expected_frames(self) -> int | None:
        """How many frames the run will read; None with a time window (not known without
        reading the record times)."""
        if self.selection.timed:
            return None
        n = sum((count + self.selection.stride - 1) // self.selection.stride for count in self.counts.values())
        return min(n, self.selection.limit) if self.selection.limit else n

    def __iter__(self) -> Iterator[SourceFrame]:
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import CompressedImage, Image

        from clipseg_ros.ros.conversions import ImageConversionError, read_rgb8

        classes = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage}
        seen: dict[str, int] = {}
        names: set[str] = set()
        taken = 0
        with open_bag(self.path) as reader:
            wanted = [c for c in reader.connections if c.topic in self.topics]
            for connection, time_ns, raw in reader.messages(connections=wanted):
                seconds = (time_ns - self.start_ns) * 1e-9
                if self.selection.end is not None and seconds > self.selection.end:
                    return  # messages come in record time order: nothing later is in the window
                if self.selection.timed and not self.selection.in_time(seconds):
                    continue
                k = seen.get(connection.topic, 0)
                seen[connection.topic] = k + 1
                if k % self.selection.stride:
                    continue
                if self.selection.limit and taken >= self.selection.limit:
                    return
                taken += 1
                name = f"{topic_dir(connection.topic)}/{time_ns}"
                if name in names:  # two messages of one topic recorded in the same nanosecond
                    name = f"{name}_{k}"
                names.add(name)
                origin = f"{connection.topic}@{time_ns}"
                try:
                    msg = deserialize_message(bytes(raw), classes[connection.msgtype])
                except Exception as exc:  # noqa: BLE001 - any malformed CDR
                    yield SourceFrame(name, origin, error=f"cannot deserialize: {exc}", topic=connection.topic,
                                      bag_time_ns=time_ns)
                    continue
                stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                try:
                    rgb = read_rgb8(msg)
                except ImageConversionError as exc:
                    yield SourceFrame(name, origin, error=str(exc), topic=connection.topic, bag_time_ns=time_ns,
                                      frame_id=msg.header.frame_id, stamp_ns=stamp_ns)
                    continue
                yield SourceFrame(name, origin, rgb=rgb, topic=connection.topic, bag_time_ns=time_ns,
                                  frame_id=msg.header.frame_id, stamp_ns=stamp_ns)
