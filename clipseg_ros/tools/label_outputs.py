"""The labeller's output folder: what was labelled with what, per-frame files, resuming.

No ROS, no torch. Layout of an output folder::

    run.json                      model, prompts, thresholds, template, image prompts (by hash)
    labels/<name>.png             label image: 0 = none, k = prompts[k-1]; uint8, uint16 past 255 prompts
    probabilities/<name>/<k>.png  (optional) prompt k's probability * 255, uint8
    images/<name>.png             (videos and bags) the frame itself, for labelling tools
    frames/<name>.json            the frame's record: source, hashes, confidences, objects (RLE)
    labels.json                   all records in source order (objects without RLE), and the frames skipped
    coco_semantic.json, coco_instances.json   (see :mod:`clipseg_ros.tools.coco_export`)

Every file is written to a temporary name and renamed, and a frame's record is written last:
a frame is done when its record exists and every file it lists has the hash it lists. A rerun
skips frames that are done for the same input pixels and the same run settings (checked by
content, not by names), so an interrupted run (Ctrl-C, disk full) resumes where it stopped.
"""

from __future__ import annotations

import errno
import filecmp
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from clipseg_ros.core.atomic_files import current_umask, write_atomic

RUN_FILE = "run.json"
SUMMARY_FILE = "labels.json"
OUTPUT_DIRS = ("labels", "probabilities", "images", "frames")
ORDER_FILE = "order.jsonl"  # the frames the last run met, in source order
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class OutputConflict(RuntimeError):
    """The output folder holds labels made with other settings; the message says which."""


class DiskFull(OSError):
    """Writing stopped because the disk (or quota) is full; nothing was left half-written."""


@dataclass(frozen=True)
class RunConfig:
    """What decides the labels: two runs with equal configs write identical files.

    ``model`` is the checkpoint as given (for people); ``model_id`` what it is (see
    :func:`checkpoint_id`), so the same checkpoint by another path resumes. ``precision`` and
    ``device`` decide the masks too: a float32 run is not resumed in bfloat16. ``probabilities``
    is what this run writes beside the labels; it does not decide them (a frame done without its
    probability PNGs is done again when they are wanted)."""

    model: str
    prompts: tuple[str, ...]
    thresholds: tuple[float, ...]
    template: str
    threshold: float = 0.4  # the default, for prompts without their own (each one's is in thresholds)
    image_prompts: tuple[tuple[str, str], ...] = ()  # (name, pixels_digest of the prompt image)
    probabilities: bool = False
    min_object_area: float = 64.0
    max_objects: int = 16
    model_id: str = ""
    precision: str = ""
    device: str = ""
    refine: str = "none"  # the masks' edge-aware refinement (clipseg_ros.core.results.refinement)

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(doc: dict) -> "RunConfig":
        return RunConfig(model=str(doc["model"]), prompts=tuple(doc["prompts"]),
                         thresholds=tuple(float(t) for t in doc["thresholds"]), template=str(doc["template"]),
                         threshold=float(doc.get("threshold", 0.4)),
                         image_prompts=tuple(tuple(p) for p in doc.get("image_prompts", ())),
                         probabilities=bool(doc.get("probabilities", False)),
                         min_object_area=float(doc.get("min_object_area", 64.0)),
                         max_objects=int(doc.get("max_objects", 16)), model_id=str(doc.get("model_id", "")),
                         precision=str(doc.get("precision", "")), device=str(doc.get("device", "")),
                         refine=str(doc.get("refine", "none")))

    def _deciding(self) -> dict:
        """The settings that decide the labels."""
        doc = self.to_json()
        doc.pop("probabilities")
        if self.model_id:
            doc.pop("model")
        return doc

    def differences(self, other: "RunConfig") -> list[str]:
        mine, theirs = self._deciding(), other._deciding()
        if self.model_id and "model" in theirs:  # a folder from before model_id: compare what is known
            theirs.pop("model")
        return [f"{key}: {theirs.get(key)!r} there, {mine[key]!r} now" for key in mine if mine[key] != theirs.get(key)]

    @property
    def digest(self) -> str:
        return sha256_bytes(json.dumps(self._deciding(), sort_keys=True).encode())


def checkpoint_id(model: str) -> str:
    """What a checkpoint is, whatever path names it: for a local directory a digest of its
    config.json and, per weights file, its size and three 1 MiB samples (start, middle, end: a
    copy or a symlink is the same checkpoint, other weights are not); a hub id as it is."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return f"hub:{model}"
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.name == "config.json":
            digest.update(b"config" + file.read_bytes())
        elif file.suffix in (".safetensors", ".bin"):
            size = file.stat().st_size
            digest.update(file.name.encode() + str(size).encode())
            with open(file, "rb") as f:
                for offset in (0, max(0, size // 2 - (1 << 19)), max(0, size - (1 << 20))):
                    f.seek(offset)
                    digest.update(f.read(1 << 20))
    return digest.hexdigest()[:32]


@dataclass(frozen=True, eq=False)
class FrameFiles:
    """What one frame writes: the label, optional probabilities (N, H, W) uint8, and the frame
    itself (RGB) for sources that are not image files."""

    label: np.ndarray
    probabilities: np.ndarray | None = None
    image: np.ndarray | None = None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels_digest(rgb: np.ndarray) -> str:
    """A frame's content: its shape and pixel bytes (the same picture from another file or
    encoding gives the same digest)."""
    h = hashlib.sha256(repr((rgb.shape, str(rgb.dtype))).encode())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest()


def label_dtype(prompt_count: int):
    """uint8 up to 255 prompts, uint16 past that (label k = prompts[k-1])."""
    return np.uint8 if prompt_count <= 255 else np.uint16


def encode_png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"cannot encode a {pixels.shape} {pixels.dtype} image as PNG")
    return data.tobytes()


def read_png(path: Path) -> np.ndarray:
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ValueError(f"{path} is not a readable PNG")
    return pixels


class OutputFolder:
    """One labeller output folder for one :class:`RunConfig`. OutputConflict at construction
    when it holds labels made with another config and ``replace`` is not set (with ``replace``,
    the old outputs are deleted first)."""

    def __init__(self, root: str | os.PathLike, config: RunConfig, replace: bool = False):
        self.root = Path(root).expanduser()
        self.config = config
        self.root.mkdir(parents=True, exist_ok=True)
        run = self.root / RUN_FILE
        if run.exists():
            try:
                previous = RunConfig.from_json(json.loads(run.read_text()))
                differences = config.differences(previous)
            except (ValueError, KeyError, TypeError) as exc:
                differences = [f"its {RUN_FILE} is unreadable ({exc})"]
            if differences and not replace:
                raise OutputConflict(f"{self.root} holds labels made with other settings ("
                                     + "; ".join(differences) + "): pick another folder, or pass --replace "
                                     "to delete them and label again")
            if differences:
                self.clear()
        elif any((self.root / d).exists() for d in OUTPUT_DIRS) and not replace:
            raise OutputConflict(f"{self.root} holds label folders but no {RUN_FILE}: pick another folder, or "
                                 "pass --replace to delete them")
        elif replace:
            self.clear()
        self._write_if_changed(run, json.dumps(config.to_json(), indent=1).encode())

    def clear(self) -> None:
        for d in OUTPUT_DIRS:
            shutil.rmtree(self.root / d, ignore_errors=True)
        for f in (RUN_FILE, SUMMARY_FILE, ORDER_FILE, "coco_semantic.json", "coco_instances.json",
                  "coco_semantic_polygons.json", "coco_instances_polygons.json", "bag_out.json"):
            (self.root / f).unlink(missing_ok=True)

    # -------------------------------------------------------------- paths
    def record_path(self, name: str) -> Path:
        return self.root / "frames" / f"{name}.json"

    def label_path(self, name: str) -> Path:
        return self.root / "labels" / f"{name}.png"

    # -------------------------------------------------------------- resuming
    def done(self, name: str, source_digest: str) -> dict | None:
        """The frame's record when it is done for these input pixels and this config (every
        file it lists present with its hash); None otherwise."""
        try:
            record = json.loads(self.record_path(name).read_text())
        except (OSError, ValueError):
            return None
        if record.get("source_sha256") != source_digest or record.get("run") != self.config.digest:
            return None
        files = record.get("files", {})
        if self.config.probabilities and not any(f.startswith("probabilities/") for f in files):
            return None  # done without the probabilities this run writes (e.g. --bag-out added)
        for relative, digest in files.items():
            try:
                if sha256_bytes((self.root / relative).read_bytes()) != digest:
                    return None
            except OSError:
                return None
        return record

    # -------------------------------------------------------------- writing
    def write_frame(self, name: str, record: dict, files: FrameFiles) -> dict:
        """Write a frame's files, then its record (with ``source_sha256`` already in it);
        returns the record as written. DiskFull (nothing of this frame left behind) when
        the disk is full."""
        outputs = {self.label_path(name): encode_png(files.label)}
        if files.probabilities is not None:
            for k, plane in enumerate(files.probabilities):
                outputs[self.root / "probabilities" / name / f"{k}.png"] = encode_png(plane)
        if files.image is not None:
            outputs[self.root / "images" / f"{name}.png"] = encode_png(cv2.cvtColor(files.image, cv2.COLOR_RGB2BGR))
        record = dict(record, name=name, run=self.config.digest,
                      files={p.relative_to(self.root).as_posix(): sha256_bytes(d) for p, d in outputs.items()})
        written: list[Path] = []
        try:
            for path, data in outputs.items():
                self._write(path, data)
                written.append(path)
            self._write(self.record_path(name), json.dumps(record).encode())
        except OSError as exc:
            if exc.errno in DISK_FULL:
                for path in written:  # the frame is not done: none of it stays
                    path.unlink(missing_ok=True)
                raise DiskFull(exc.errno, f"the disk is full writing {name}: {exc.strerror}") from exc
            raise
        return record

    # -------------------------------------------------------------- the run's order
    def start_order(self) -> None:
        """A new run's list of the frames it meets, in source order (on disk: it grows with the
        frames, memory does not)."""
        self._order = open(self.root / f".{ORDER_FILE}.tmp", "w", encoding="utf-8")

    def add_to_order(self, name: str, source_digest: str) -> None:
        self._order.write(json.dumps([name, source_digest]) + "\n")

    def close_order(self) -> None:
        """The run's order file in place (left as it was when the same: a rerun rewrites nothing)."""
        if getattr(self, "_order", None) is None:
            return
        self._order.close()
        self._order = None
        tmp, path = self.root / f".{ORDER_FILE}.tmp", self.root / ORDER_FILE
        if path.exists() and filecmp.cmp(tmp, path, shallow=False):
            tmp.unlink()
        else:
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, path)

    def done_records(self) -> Iterator[dict]:
        """The records of the frames the last run met that are done (for their pixels and this
        config), in source order, read from disk one at a time."""
        try:
            lines = open(self.root / ORDER_FILE, encoding="utf-8")
        except FileNotFoundError:
            return
        with lines:
            for line in lines:
                name, digest = json.loads(line)
                try:
                    record = json.loads(self.record_path(name).read_text())
                except (OSError, ValueError):
                    continue
                if record.get("source_sha256") == digest and record.get("run") == self.config.digest:
                    yield record

    def write_summary(self, records: Iterable[dict], skipped: Sequence[dict], extra: dict | None = None) -> Path:
        """``labels.json``: the run, every record in source order (objects without their masks,
        which are in the records and coco_instances.json: a noisy mask's RLE can be hundreds of
        kB a frame), and the skipped frames; written as the records are read."""
        frames = (dict(r, objects=[{k: v for k, v in o.items() if k != "rle"} for o in r.get("objects", [])])
                  for r in records)
        return self.write_json_streamed(SUMMARY_FILE, {"run": self.config.to_json(), **(extra or {})},
                                        {"frames": frames, "skipped": iter(skipped)})

    def write_json_streamed(self, filename: str, head: dict, arrays: dict[str, Iterable]) -> Path:
        """A JSON object of ``head``'s fields, then one array per entry of ``arrays`` written item
        by item (a memory bound that does not grow with the number of items). Written under a
        temporary name and renamed; a file with the same content is left as it was."""
        path = self.root / filename
        fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".tmp", dir=self.root)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()))
                for n, (key, items) in enumerate(arrays.items()):
                    f.write((", " if head or n else "") + f"{json.dumps(key)}: [")
                    for i, item in enumerate(items):
                        f.write((",\n" if i else "\n") + json.dumps(item))
                    f.write("]")
                f.write("}\n")
            if path.exists() and filecmp.cmp(tmp, path, shallow=False):
                os.unlink(tmp)
                return path
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    def write_json(self, filename: str, doc: dict) -> Path:
        path = self.root / filename
        self._write_if_changed(path, json.dumps(doc).encode())
        return path

    @classmethod
    def _write_if_changed(cls, path: Path, data: bytes) -> None:
        """A rerun that labels nothing new rewrites nothing."""
        try:
            if path.read_bytes() == data:
                return
        except OSError:
            pass
        cls._write(path, data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        """All of it or none (not flushed to disk: see :mod:`clipseg_ros.core.atomic_files`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, durable=False)
