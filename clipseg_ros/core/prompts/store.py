"""The prompt store: the active prompts on disk, so that they survive a restart.

No ROS in here. A store is a directory::

    prompts.json          what is active: texts, template, thresholds, image prompts
    images/<sha256>.png   every image an image prompt needs (as sent, its mask, the prompt image),
                          named by the SHA-256 of the file's bytes

A save never leaves a half-written store: images are written first (each to a temporary name,
flushed, then renamed; an existing file of the same content is kept), then ``prompts.json`` the
same way; the rename of ``prompts.json`` is the commit. Images only the previous save referenced
are removed after it. A store that cannot be read back exactly (bad JSON, a missing image, a
checksum that does not match) is moved aside whole into ``rejected-<UTC time>/``, untouched, and
the caller starts without it.

Images are stored as PNG (lossless): RGB prompt images as 8-bit colour, masks as 8-bit grey.

Several processes may share a store (two nodes, a node and ``clipseg-label --prompt-store``): an
advisory ``fcntl`` lock on ``.lock`` in the directory makes each save exclusive and each load
shared, so a reader never sees a half-replaced store and one writer's removal of images it no
longer needs never races another writer's commit (the last save wins, whole). A save removes
every image that the document it wrote does not reference; a load by a writer (``reclaim``)
removes images no document references (left by a process that died between its two steps).

An image prompt's example is kept on disk, not in memory, from the moment it is taught
(:meth:`PromptStore.keep`): its files go to ``kept/<session>/`` (this process's, held by an
``fcntl`` lock on ``kept/<session>.lock`` for as long as the store is open), named like those in
``images/``; a save links them into ``images/``. So a process holds only each prompt's prompt
image (what a newly loaded model embeds again), and another writer's save, which removes the
images its own document does not reference, cannot take away what this process still needs. A
save removes the session's files the saved prompts no longer use; a writer's load links the
restored prompts' files into its session and removes the sessions of processes that are gone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np

from clipseg_ros.core.atomic_files import write_atomic
from clipseg_ros.core.prompts.visual_prompts import Box, ExampleImage

STORE_FILE = "prompts.json"
LOCK_FILE = ".lock"
IMAGES_DIR = "images"
KEPT_DIR = "kept"
FORMAT = "clipseg_ros prompt store"
VERSION = 1


class StoreError(RuntimeError):
    """The store cannot be written (e.g. the directory is not writable); the message says why."""


class StoreCorrupt(RuntimeError):
    """The store exists but cannot be read back exactly; the message says what is wrong."""


@dataclass(frozen=True, eq=False)
class KeptExample:
    """An example image kept on disk: the SHA-256 names of its files (the image as sent, its
    mask or None, the prompt image), its box and style, and the prompt image's pixels (what is
    embedded; (h, w, 3) uint8 RGB). :meth:`PromptStore.read_example` reads the rest back."""

    image_file: str
    mask_file: str | None
    prompt_image_file: str
    box: Box | None
    style: str
    prompt_image: np.ndarray

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.image_file, self.mask_file, self.prompt_image_file) if f is not None)


@dataclass(frozen=True)
class StoredImagePrompt:
    """One image prompt as stored: its name, its example and the text mixed into it. The
    example is a :class:`KeptExample` (on disk), or an ExampleImage still in memory (where it
    could not be kept on disk: a save writes it)."""

    name: str
    example: KeptExample | ExampleImage
    text: str = ""
    text_weight: float = 0.0

    @property
    def prompt_image(self) -> np.ndarray:
        return self.example.prompt_image


@dataclass(frozen=True)
class StoredPrompts:
    """Everything the store holds: the active prompt set, without embeddings (they are made
    again by whatever model loads it)."""

    texts: tuple[str, ...] = ()
    template: str = "{}"
    thresholds: tuple[tuple[str, float], ...] = ()
    images: tuple[StoredImagePrompt, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return self.texts + tuple(i.name for i in self.images)


class PromptStore:
    """Save and load :class:`StoredPrompts` in ``directory`` (created on the first save).
    Not thread-safe: the caller serialises saves (the node does it under its prompt lock)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()
        self._referenced: set[str] = set()  # image files the last save or load referenced
        # Each example's files, once encoded: a save writes only what changed (a text-only change
        # with 8 prompts taught from 1080p frames re-encoded and re-hashed 24 PNGs: 0.91 s).
        self._files_of: dict[int, tuple[ExampleImage, dict[str, str]]] = {}
        self._session: Path | None = None  # kept/<session>/, created by the first keep or writer's load
        self._session_fd: int | None = None  # holds the session's lock while the store is open

    @property
    def path(self) -> Path:
        return self.directory / STORE_FILE

    @contextmanager
    def _locked(self, exclusive: bool):
        """The store's advisory lock (shared for reading, exclusive for writing) while inside;
        nothing to lock while the directory does not exist."""
        try:
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        except (FileNotFoundError, NotADirectoryError):  # no store directory (yet)
            yield
            return
        except OSError as exc:
            if exclusive:
                raise StoreError(f"cannot lock the prompt store {self.directory}: {exc}") from exc
            fd = None  # a reader without write access to the directory reads unlocked
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock

    # -------------------------------------------------------------- reading
    def load(self, reclaim: bool = False) -> StoredPrompts | None:
        """:meth:`_load` under the store's lock; with ``reclaim`` (a process that writes the
        store), images no document references are removed too."""
        with self._locked(exclusive=reclaim):
            stored = self._load()
            if reclaim:
                self._remove_dead_sessions()
            if reclaim and stored is not None:
                self._remove_unreferenced()
                self._pin(stored)
            return stored

    def _remove_unreferenced(self) -> None:
        images_dir = self.directory / IMAGES_DIR
        try:
            present = {f"{IMAGES_DIR}/{p.name}" for p in images_dir.iterdir() if p.suffix == ".png"}
        except OSError:
            return
        for orphan in present - self._referenced:
            try:
                (self.directory / orphan).unlink()
            except OSError:
                pass  # a leftover costs disk space only

    def _load(self) -> StoredPrompts | None:
        """The stored prompts; None when there is no store yet (no directory or no
        ``prompts.json``). StoreCorrupt when it exists but cannot be read back exactly (damaged);
        StoreError when it cannot be read now (permissions, an I/O error: not its content's fault)."""
        try:
            raw = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # no store (yet); saving will say why if it cannot
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.path} now: {exc}") from exc
        try:
            doc = json.loads(raw.decode("utf-8"))
            stored, files = _from_document(doc, self.directory)
        except StoreCorrupt:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreCorrupt(f"{self.path} is not a valid prompt store: {type(exc).__name__}: {exc}") from exc
        self._referenced = files
        return stored

    def read_example(self, kept: KeptExample) -> ExampleImage:
        """The whole example (image as sent, mask, prompt image) of ``kept``, read back from the
        session or ``images/``. StoreCorrupt when a file is missing or changed."""
        def read(digest):
            for folder in ((self._session,) if self._session is not None else ()) + (self.directory / IMAGES_DIR,):
                if (folder / f"{digest}.png").is_file():
                    return _read_png(self.directory, f"{IMAGES_DIR}/{digest}.png", "example",
                                     path=folder / f"{digest}.png")
            raise StoreCorrupt(f"the kept example file {digest}.png is gone")
        mask = read(kept.mask_file) if kept.mask_file is not None else None
        return ExampleImage(image=_rgb(read(kept.image_file)), box=kept.box, mask=mask, style=kept.style,
                            prompt_image=_rgb(read(kept.prompt_image_file)))

    # -------------------------------------------------------------- the session
    def keep(self, example: ExampleImage) -> KeptExample:
        """Write ``example``'s images into this process's session (see the module doc) and
        return the record that stands for it; the caller may drop the pixels but the prompt
        image. StoreError when they cannot be written."""
        try:
            session = self._open_session()
            files = {role: _write_png(session, pixels, relative_to=None) for role, pixels in _example_pixels(example)}
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot keep the example in the prompt store {self.directory}: {exc}") from exc
        return KeptExample(image_file=files["image"], mask_file=files.get("mask"),
                           prompt_image_file=files["prompt_image"], box=example.box, style=example.style,
                           prompt_image=example.prompt_image)

    def close(self) -> None:
        """Remove this process's session (what it still needs is in ``images/`` once saved) and
        release its lock. The store may be used again afterwards (a new session)."""
        session, fd = self._session, self._session_fd
        self._session = self._session_fd = None
        if session is not None:
            shutil.rmtree(session, ignore_errors=True)
            try:
                session.with_suffix(".lock").unlink()
            except OSError:
                pass
        if fd is not None:
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the lock goes with the process
            pass

    def _open_session(self) -> Path:
        if self._session is not None and self._session.is_dir():
            return self._session
        self.close()
        kept = self.directory / KEPT_DIR
        kept.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(kept / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            (kept / name).mkdir()
        except OSError:
            os.close(fd)
            raise
        self._session, self._session_fd = kept / name, fd
        return self._session

    def _pin(self, stored: StoredPrompts) -> None:
        """Link the files of ``stored``'s kept examples into the session (a writer restoring them)."""
        try:
            session = self._open_session()
            for image in stored.images:
                if isinstance(image.example, KeptExample):
                    for digest in image.example.files:
                        _link_or_copy(self.directory / IMAGES_DIR / f"{digest}.png", session / f"{digest}.png")
        except OSError as exc:
            raise StoreError(f"cannot keep the restored examples in {self.directory / KEPT_DIR}: {exc}") from exc

    def _remove_dead_sessions(self) -> None:
        """Remove the sessions of processes that are gone (their lock can be taken)."""
        kept = self.directory / KEPT_DIR
        try:
            locks = [p for p in kept.iterdir() if p.suffix == ".lock"]
        except OSError:
            return
        for lock in locks:
            if self._session is not None and lock == self._session.with_suffix(".lock"):
                continue
            try:
                fd = os.open(lock, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # its process is alive
            try:
                shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
                lock.unlink()
            except OSError:
                pass
            finally:
                os.close(fd)

    def _prune_session(self, prompts: StoredPrompts) -> None:
        if self._session is None:
            return
        used = {f"{digest}.png" for image in prompts.images if isinstance(image.example, KeptExample)
                for digest in image.example.files}
        try:
            for path in self._session.iterdir():
                if path.name not in used:
                    path.unlink()
        except OSError:
            pass  # a leftover costs disk space until close

    def set_aside(self) -> Path:
        """Move ``prompts.json`` and ``images/`` into a new ``rejected-<UTC time>/`` directory
        beside them, untouched; returns it. StoreError when that fails."""
        with self._locked(exclusive=True):
            return self._set_aside()

    def _set_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.directory / f"rejected-{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = self.directory / f"rejected-{stamp}-{n}"
        try:
            target.mkdir(parents=True)
            for name in (STORE_FILE, IMAGES_DIR):
                if (self.directory / name).exists():
                    os.replace(self.directory / name, target / name)
        except OSError as exc:
            raise StoreError(f"cannot move the unreadable store aside to {target}: {exc}") from exc
        self._referenced = set()
        return target

    # -------------------------------------------------------------- writing
    def save(self, prompts: StoredPrompts) -> bool:
        """Write ``prompts`` as the store's content (see the module doc for the order of
        writes). Returns False when the store already held exactly this (nothing written).
        StoreError when the directory or a file cannot be written; the previous store is then
        still whole."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot write the prompt store {self.directory}: {exc}") from exc
        with self._locked(exclusive=True):
            return self._save(prompts)

    def _save(self, prompts: StoredPrompts) -> bool:
        try:
            images_dir = self.directory / IMAGES_DIR
            images_dir.mkdir(parents=True, exist_ok=True)
            entries, files, encoded = [], set(), {}
            for image in prompts.images:
                if isinstance(image.example, KeptExample):
                    example_files = self._publish(image.name, image.example)
                    entries.append(_image_entry(image, example_files))
                    files |= set(example_files.values())
                    continue
                cached = self._files_of.get(id(image.example))
                if cached is not None and cached[0] is image.example and all(
                        (self.directory / f).is_file() for f in cached[1].values()):
                    example_files = cached[1]
                else:
                    example_files = _example_files(image.example, images_dir)
                encoded[id(image.example)] = (image.example, example_files)
                entries.append(_image_entry(image, example_files))
                files |= set(example_files.values())
            self._files_of = encoded
            doc = _document(prompts, entries)
            data = (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
            try:
                unchanged = self.path.read_bytes() == data
            except OSError:
                unchanged = False
            if not unchanged:
                write_atomic(self.path, data)
            self._referenced = files
            self._remove_unreferenced()  # what the replaced document needed, whoever wrote it
            self._prune_session(prompts)
            return not unchanged
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot write the prompt store {self.directory}: {exc}") from exc


    def _publish(self, name: str, kept: KeptExample) -> dict[str, str]:
        """Make sure ``images/`` holds ``kept``'s files (linked from the session where another
        writer removed them, or where they were never saved); their names in the store."""
        roles = {"image": kept.image_file, "prompt_image": kept.prompt_image_file}
        if kept.mask_file is not None:
            roles["mask"] = kept.mask_file
        images_dir = self.directory / IMAGES_DIR
        for digest in roles.values():
            target = images_dir / f"{digest}.png"
            if target.is_file() and _sha256(target) == digest:
                continue
            source = self._session / f"{digest}.png" if self._session is not None else None
            if source is None or not source.is_file():
                raise StoreError(f"image prompt '{name}': its example file {digest}.png is no longer kept")
            _link_or_copy(source, target)
        return {role: f"{IMAGES_DIR}/{digest}.png" for role, digest in roles.items()}


# ---------------------------------------------------------------------- document
def _document(prompts: StoredPrompts, image_entries: list[dict]) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "texts": list(prompts.texts),
        "template": prompts.template,
        "thresholds": {name: float(value) for name, value in prompts.thresholds},
        "image_prompts": image_entries,
    }


def _example_pixels(example: ExampleImage):
    """(role, pixels as written) of an example's images."""
    yield "image", _bgr(example.image)
    yield "prompt_image", _bgr(example.prompt_image)
    if example.mask is not None:
        yield "mask", np.ascontiguousarray(example.mask, np.uint8)


def _example_files(example: ExampleImage, images_dir: Path) -> dict[str, str]:
    """Write an example's images (those not there yet); their names in the store."""
    return {role: _write_png(images_dir, pixels) for role, pixels in _example_pixels(example)}


def _image_entry(image: StoredImagePrompt, files: dict[str, str]) -> dict:
    example = image.example
    box = example.box
    entry = {
        "name": image.name,
        "style": example.style,
        "box": None if box is None else [box.x, box.y, box.width, box.height],
        "text": image.text,
        "text_weight": float(image.text_weight),
        "image": files["image"],
        "mask": files.get("mask"),
        "prompt_image": files["prompt_image"],
    }
    return entry


def _from_document(doc: dict, directory: Path) -> tuple[StoredPrompts, set[str]]:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StoreCorrupt(f"{directory / STORE_FILE} is not a clipseg_ros prompt store")
    if doc.get("version") != VERSION:
        raise StoreCorrupt(f"prompt store version {doc.get('version')!r} is not {VERSION}")
    texts = tuple(_str_list(doc["texts"], "texts"))
    template = doc["template"]
    if not isinstance(template, str):
        raise StoreCorrupt("template is not a string")
    thresholds = doc["thresholds"]
    if not isinstance(thresholds, dict):
        raise StoreCorrupt("thresholds is not a mapping")
    pairs = []
    for name, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise StoreCorrupt(f"threshold for {name!r} is not a number in [0, 1]: {value!r}")
        pairs.append((name, float(value)))
    images, files = [], set()
    for entry in doc["image_prompts"]:
        stored, used = _image_from_entry(entry, directory)
        images.append(stored)
        files |= used
    return StoredPrompts(texts=texts, template=template, thresholds=tuple(sorted(pairs)),
                         images=tuple(images)), files


def _image_from_entry(entry: Mapping, directory: Path) -> tuple[StoredImagePrompt, set[str]]:
    name = entry["name"]
    if not isinstance(name, str) or not name:
        raise StoreCorrupt(f"image prompt name {name!r} is not a non-empty string")
    # every file is read back and checked; only the prompt image stays in memory
    image_shape = _rgb(_read_png(directory, entry["image"], name)).shape
    prompt_image = _rgb(_read_png(directory, entry["prompt_image"], name))
    mask = _read_png(directory, entry["mask"], name) if entry["mask"] is not None else None
    if mask is not None and (mask.ndim != 2 or mask.shape != image_shape[:2]):
        raise StoreCorrupt(f"image prompt {name!r}: its mask does not match its image")
    box = None if entry["box"] is None else Box(*(int(v) for v in entry["box"]))
    weight = float(entry["text_weight"])
    if not (0.0 <= weight <= 1.0) or math.isnan(weight):
        raise StoreCorrupt(f"image prompt {name!r}: text_weight {weight} is not in [0, 1]")
    text = entry["text"]
    if not isinstance(text, str) or not isinstance(entry["style"], str):
        raise StoreCorrupt(f"image prompt {name!r}: text and style must be strings")
    files = {entry["image"], entry["prompt_image"]} | ({entry["mask"]} if mask is not None else set())
    example = KeptExample(image_file=Path(entry["image"]).stem,
                          mask_file=None if mask is None else Path(entry["mask"]).stem,
                          prompt_image_file=Path(entry["prompt_image"]).stem, box=box, style=entry["style"],
                          prompt_image=prompt_image)
    return StoredImagePrompt(name=name, example=example, text=text, text_weight=weight), files


def _str_list(value, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StoreCorrupt(f"{what} is not a list of strings")
    return value


# ---------------------------------------------------------------------- files
def _write_png(images_dir: Path, pixels: np.ndarray, relative_to: str | None = IMAGES_DIR) -> str:
    """Write ``pixels`` as PNG named by its SHA-256 (skipped when that file exists with those
    bytes) into ``images_dir``; returns the path relative to the store (``relative_to`` None:
    the bare SHA-256)."""
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"cannot encode a {pixels.shape} {pixels.dtype} image as PNG")
    data = encoded.tobytes()
    digest = hashlib.sha256(data).hexdigest()
    path = images_dir / f"{digest}.png"
    if not (path.exists() and _sha256(path) == digest):
        write_atomic(path, data)
    return digest if relative_to is None else f"{relative_to}/{path.name}"


def _read_png(directory: Path, relative, name: str, path: Path | None = None) -> np.ndarray:
    if not isinstance(relative, str) or not relative.startswith(f"{IMAGES_DIR}/") or "/" in relative[len(IMAGES_DIR) + 1:]:
        raise StoreCorrupt(f"image prompt {name!r}: {relative!r} is not a file in {IMAGES_DIR}/")
    path = path or directory / relative
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise StoreCorrupt(f"image prompt {name!r}: {path} is missing") from exc
    except OSError as exc:
        raise StoreError(f"image prompt {name!r}: cannot read {path} now: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != Path(relative).stem:
        raise StoreCorrupt(f"image prompt {name!r}: {path} does not match its checksum (changed or damaged)")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint8:
        raise StoreCorrupt(f"image prompt {name!r}: {path} is not an 8-bit PNG")
    return pixels


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s content, atomically (a hard link where the file system
    has them: no second copy on disk)."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)


def _rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise StoreCorrupt(f"a stored prompt image is {pixels.shape}, not 8-bit colour")
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)

