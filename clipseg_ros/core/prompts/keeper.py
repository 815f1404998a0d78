"""The active prompts and their copy on disk, kept in step: the one owner of the store policy.

No ROS in here. :class:`PromptKeeper` wraps the :class:`~.prompt_book.PromptBook` (which knows
nothing of stores) and a :class:`~.store.PromptStore` (or none), and makes every change one step
under one lock: commit, mirror (a callback: the node shows the prompts in its parameters), log,
save. Its rules:

- the store is read by the first :meth:`PromptKeeper.attach` only and takes precedence over the
  prompts given at start; nothing is saved before that read (it would replace what is about to
  be restored);
- a store that cannot be read back exactly (damaged) is moved aside; one that cannot be read now
  (permissions, I/O) or whose prompts do not apply (e.g. more than max_prompts) is kept as it is
  and not written this run; either way the prompts given at start are used, with one warning;
- a failing save is said once until a save succeeds; the prompts stay active;
- an image prompt's example (the image as sent and its region) is kept on disk by the store from
  the commit that adds it (:meth:`~.store.PromptStore.keep`); in memory each prompt keeps only its
  prompt image. Without a store, or while the store is not written, nothing needs the example and
  it is dropped.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Callable, Protocol

from clipseg_ros.core.prompts.prompt_book import ImagePrompt, PromptBook, PromptChange, PromptError, PromptState
from clipseg_ros.core.prompts.store import (
    KeptExample,
    PromptStore,
    StoreCorrupt,
    StoredImagePrompt,
    StoredPrompts,
    StoreError,
)
from clipseg_ros.core.prompts.visual_prompts import ExampleImage


class Log(Protocol):
    """Where the keeper reports (an rclpy logger, or Python's ``logging``)."""

    def info(self, message: str) -> object: ...

    def warning(self, message: str) -> object: ...


def restoring(book: PromptBook, stored: StoredPrompts) -> PromptChange:
    """The change that makes ``stored`` active in ``book``: its image prompts are embedded from
    their stored prompt images (a vision pass each). PromptError when one cannot be."""
    images = tuple(book.embed_image(i.name, i.prompt_image, i.text, i.text_weight, source=i.example)
                   for i in stored.images)
    return PromptChange(texts=stored.texts, images=images, template=stored.template,
                        thresholds=dict(stored.thresholds))


def stored_prompts(state: PromptState) -> StoredPrompts:
    """What a prompt store keeps of ``state`` (everything but the embeddings). PromptError when
    an image prompt has no example to store."""
    images = []
    for image in state.images:
        if not isinstance(image.source, (KeptExample, ExampleImage)):
            raise PromptError(f"image prompt '{image.name}' has no example image to store")
        images.append(StoredImagePrompt(image.name, image.source, image.text, image.text_weight))
    return StoredPrompts(texts=state.texts, template=state.template, thresholds=state.thresholds,
                         images=tuple(images))


class PromptKeeper:
    """Changes to the active prompts, each committed, mirrored, logged and saved as one step.

    ``mirror(state)`` is called after every commit from :meth:`commit` or :meth:`attach` (not
    for :meth:`apply_parameters`: those values are the parameters already). ``lock`` is held for
    each step; a caller may hold it longer (the node holds it across rclpy's parameter update).
    """

    def __init__(self, book: PromptBook, store_dir: str | None, log: Log,
                 mirror: Callable[[PromptState], None] = lambda state: None):
        self.book = book
        self.log = log
        self.mirror = mirror
        self.lock = threading.RLock()
        self._store = PromptStore(store_dir) if store_dir else None
        self._store_failing = False  # warn once per run of failed saves
        self._store_restored = False  # the store is read by the first attach only; no save before
        self._store_kept = ""  # why the store is left as it is this run ('' = it follows the active prompts)

    @property
    def state(self) -> PromptState:
        return self.book.state

    # -------------------------------------------------------------- lifetime
    def attach(self, embedder) -> PromptState:
        """Embed the active prompts with ``embedder`` (a loaded model), let a readable store take
        over, and mirror and save the result. PromptError (nothing attached) when refused."""
        with self.lock:
            try:
                state = self.book.attach(embedder)
                restored = self._restore()
                state = restored if restored is not None else state
                self._after_commit(state)
                return state
            except PromptError:
                self.book.detach()
                raise

    def detach(self) -> None:
        with self.lock:
            self.book.detach()

    def close(self) -> None:
        """The process is done with the store (its session on disk goes; see the store)."""
        with self.lock:
            if self._store is not None:
                self._store.close()

    # -------------------------------------------------------------- changes
    def embed_example(self, name: str, example: ExampleImage, text: str = "", text_weight: float = 0.0) -> ImagePrompt:
        """Embed ``example``'s prompt image for a later :meth:`commit` (a vision pass, outside the
        lock: may run on any thread). PromptError when it cannot be."""
        return self.book.embed_image(name, example.prompt_image, text, text_weight, source=example)

    def commit(self, change: PromptChange) -> PromptState:
        """Apply ``change`` as a whole (PromptError: refused, nothing changed), then mirror, log
        and save what is active."""
        with self.lock:
            self.book.check(change)  # refused before any file is written
            change = self._kept(change)
            state = self.book.apply(change)
            self._after_commit(state)
            return state

    def apply_parameters(self, change: PromptChange) -> None:
        """A change made through the prompt parameters (PromptError: refused): applied, logged
        and saved; one that only restates what is active changes nothing."""
        with self.lock:
            if self.book.check(change) != self.book.state:
                state = self.book.apply(change)
                self.report(state)
                self.save(state)

    def report(self, state: PromptState) -> None:
        if state.prompt_set is not None:
            for warning in state.prompt_set.warnings:
                self.log.warning(warning)
        own = f"; thresholds {dict(state.thresholds)}" if state.thresholds else ""
        self.log.info(f"active prompts: {list(state.names)}{own}")

    # -------------------------------------------------------------- the store
    @property
    def store_status(self) -> str:
        """For diagnostics: the store's directory, and whether the last save failed."""
        if self._store is None:
            return "none"
        if self._store_kept:
            return f"{self._store.directory} (kept as it is, not written this run: {self._store_kept})"
        return str(self._store.directory) + (" (last save failed)" if self._store_failing else "")

    def _writes_store(self) -> bool:
        return self._store is not None and self._store_restored and not self._store_kept

    def _kept(self, change: PromptChange) -> PromptChange:
        """``change`` with the examples of its new image prompts kept on disk (or dropped where
        nothing will save them). An example the store cannot take stays in memory: the save
        then writes it, or says why it cannot."""
        def keep(image: ImagePrompt) -> ImagePrompt:
            if not isinstance(image.source, ExampleImage):
                return image
            if self._store is None or not self._writes_store():
                return replace(image, source=None)
            try:
                return replace(image, source=self._store.keep(image.source))
            except StoreError:
                return image
        return replace(change, images=None if change.images is None else tuple(keep(i) for i in change.images),
                       added_images=tuple(keep(i) for i in change.added_images))

    def _after_commit(self, state: PromptState) -> None:
        self.mirror(state)
        self.report(state)
        self.save(state)

    def save(self, state: PromptState) -> None:
        """Write ``state`` to the store (see the module doc for when it is not written)."""
        if not self._writes_store():
            return
        try:
            self._store.save(stored_prompts(state))
        except (StoreError, PromptError) as exc:
            if not self._store_failing:
                self.log.warning(f"prompts are active but not saved: {exc}. The node keeps running; "
                                 "this is said once until a save succeeds")
            self._store_failing = True
            return
        if self._store_failing:
            self.log.info(f"prompt store {self._store.directory} written again")
        self._store_failing = False

    def _restore(self) -> PromptState | None:
        """Make the store's content active; None when there is no store or it holds nothing
        usable (see the module doc)."""
        if self._store is None or self._store_restored:
            return None  # after a cleanup the book kept what was active; the store holds the same
        self._store_restored = True
        directory = self._store.directory
        starting = f"starting with the prompt parameters {list(self.book.state.names)}"
        try:
            stored = self._store.load(reclaim=True)
            if stored is None:
                self.log.info(f"prompt store {directory}: empty, starting with the prompt parameters")
                return None
        except StoreError as exc:  # cannot be read now (permissions, I/O): not damaged
            self._store_kept = str(exc)
            self.log.warning(f"prompt store {directory} not used: {exc}. It is kept as it is and not written this "
                             f"run; {starting}")
            return None
        except StoreCorrupt as exc:  # cannot be read back exactly: damaged
            try:
                aside = f"moved aside to {self._store.set_aside()}"
            except StoreError as move_exc:
                aside = f"left in place ({move_exc}); it will be overwritten by the next change"
            self.log.warning(f"prompt store {directory} not used: {exc}. It was {aside}; {starting}")
            return None
        try:
            state = self.book.apply(restoring(self.book, stored))
        except PromptError as exc:  # readable, but not applicable with these parameters (e.g. max_prompts)
            self._store_kept = str(exc)
            self.log.warning(f"prompt store {directory} holds {list(stored.names)}, not applicable now: {exc}. It is "
                             f"kept as it is and not written this run; {starting}")
            return None
        self.log.info(f"prompt store {directory}: restored {list(state.names)} (the store takes precedence over the "
                      "prompt parameters)")
        return state
