"""The prompt store without ROS: round trips, atomic saves, damaged stores set aside."""

import json
import os

import numpy as np
import pytest
from conftest import random_image

from clipseg_ros.core.prompts.store import PromptStore, StoreCorrupt, StoredImagePrompt, StoredPrompts, StoreError
from clipseg_ros.core.prompts.visual_prompts import Box, make_example


@pytest.fixture
def stored(rng):
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 10:30] = 255
    with_mask = make_example(random_image(rng, 30, 40), box=Box(8, 4, 25, 18), mask=mask, style="crop_darken")
    plain = make_example(random_image(rng, 20, 20))
    return StoredPrompts(texts=("cup", "door handle"), template="a photo of a {}.",
                         thresholds=(("cup", 0.25), ("tasse", 0.5)),
                         images=(StoredImagePrompt("my mug", with_mask, "mug", 0.3),
                                 StoredImagePrompt("plain one", plain)))


def files(directory):
    """The store's content (its advisory lock file holds nothing; kept/ is each open process's
    working copy of its examples)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".lock" and p.relative_to(directory).parts[0] != "kept"}


def test_round_trip_is_exact(tmp_path, stored):
    store = PromptStore(tmp_path / "store")
    assert store.load() is None  # no store yet: start empty
    assert store.save(stored) is True
    reader = PromptStore(tmp_path / "store")
    loaded = reader.load()
    assert (loaded.texts, loaded.template, loaded.thresholds) == (stored.texts, stored.template, stored.thresholds)
    for got, want in zip(loaded.images, stored.images, strict=True):
        assert (got.name, got.text, got.text_weight) == (want.name, want.text, want.text_weight)
        assert np.array_equal(got.prompt_image, want.example.prompt_image)  # what is embedded, in memory
        example = reader.read_example(got.example)  # the rest is read back from disk
        assert (example.box, example.style) == (want.example.box, want.example.style)
        assert np.array_equal(example.image, want.example.image)
        assert np.array_equal(example.prompt_image, want.example.prompt_image)
        assert (example.mask is None) == (want.example.mask is None)
        if want.example.mask is not None:
            assert np.array_equal(example.mask, want.example.mask)
    # saving what was loaded writes nothing and leaves every byte as it was
    before = files(tmp_path / "store")
    assert PromptStore(tmp_path / "store").save(loaded) is False
    assert files(tmp_path / "store") == before
    doc = json.loads((tmp_path / "store" / "prompts.json").read_text())
    assert doc["image_prompts"][0]["box"] == [8, 4, 25, 18] and doc["thresholds"] == {"cup": 0.25, "tasse": 0.5}


def test_images_no_longer_used_are_removed_and_shared_ones_kept(tmp_path, stored):
    store = PromptStore(tmp_path)
    store.save(stored)
    assert len(list((tmp_path / "images").iterdir())) == 4  # image, mask, prompt image; plain: one file for both
    store.save(StoredPrompts(texts=("cup",), images=stored.images[1:]))
    assert len(list((tmp_path / "images").iterdir())) == 1  # plain: image and prompt image are one file
    store.save(StoredPrompts())
    assert list((tmp_path / "images").iterdir()) == []


def test_a_failed_save_leaves_the_previous_store_whole(tmp_path, stored, monkeypatch):
    store = PromptStore(tmp_path)
    store.save(stored)
    before = files(tmp_path)
    real_replace = os.replace

    def crash_on_commit(src, dst):
        if str(dst).endswith("prompts.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_commit)
    changed = StoredPrompts(texts=("mug",), images=(StoredImagePrompt("new", make_example(
        np.full((10, 10, 3), 7, np.uint8))),))
    with pytest.raises(StoreError, match="No space left on device"):
        store.save(changed)
    monkeypatch.undo()
    after = files(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing of the old store changed
    assert not [k for k in after if k.endswith(".tmp")]  # no temporary file left behind
    assert PromptStore(tmp_path).load().texts == stored.texts


def test_unwritable_directory_raises_store_error(tmp_path, stored):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot write the prompt store"):
        PromptStore(blocker / "store").save(stored)


@pytest.mark.parametrize("damage, reason", [
    (lambda d: (d / "prompts.json").write_text("{ not json"), "not a valid prompt store"),
    (lambda d: (d / "prompts.json").write_text('{"format": "other"}'), "not a clipseg_ros prompt store"),
    (lambda d: next((d / "images").iterdir()).write_bytes(b"changed"), "does not match its checksum"),
    (lambda d: next((d / "images").iterdir()).unlink(), "is missing"),  # a referenced image deleted: damaged
    (lambda d: (d / "prompts.json").write_text(
        (d / "prompts.json").read_text().replace('"cup": 0.25', '"cup": 7')), "threshold for 'cup'"),
])
def test_a_damaged_store_is_refused_and_set_aside_untouched(tmp_path, stored, damage, reason):
    PromptStore(tmp_path).save(stored)
    damage(tmp_path)
    damaged = files(tmp_path)
    store = PromptStore(tmp_path)
    with pytest.raises(StoreCorrupt, match=reason):
        store.load()
    aside = store.set_aside()
    assert aside.parent == tmp_path and aside.name.startswith("rejected-")
    assert files(aside) == damaged  # moved whole, every byte as it was
    assert store.load() is None  # the store is empty now; the next save starts afresh
    store.save(StoredPrompts(texts=("cup",)))
    assert PromptStore(tmp_path).load().texts == ("cup",) and files(aside) == damaged


# ----------------------------------------------------------------------------- issue 19, point 8
def holding_the_lock(directory, exclusive=True):
    """Another process's hold on the store's lock (flock conflicts across open files)."""
    import fcntl

    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    return fd


def test_saves_and_loads_wait_for_another_process_holding_the_store(tmp_path, stored):
    """Two processes on one store: last writer wins, whole; a reader never sees half a save."""
    import threading

    PromptStore(tmp_path).save(stored)
    for action in (lambda: PromptStore(tmp_path).save(StoredPrompts(texts=("mug",))),
                   lambda: PromptStore(tmp_path).load()):
        fd = holding_the_lock(tmp_path)
        worker = threading.Thread(target=action)
        worker.start()
        worker.join(0.3)
        assert worker.is_alive()  # waits for the other process
        os.close(fd)
        worker.join(10)
        assert not worker.is_alive()


def test_a_save_removes_what_the_replaced_document_needed_whoever_wrote_it(tmp_path, stored):
    first, second = PromptStore(tmp_path), PromptStore(tmp_path)  # two processes
    first.save(stored)
    second.save(StoredPrompts(texts=("mug",)))  # it never read the store: it did not know its images
    assert not list((tmp_path / "images").iterdir())
    assert PromptStore(tmp_path).load().texts == ("mug",)


def test_a_writer_reclaims_images_no_document_references(tmp_path, stored):
    store = PromptStore(tmp_path)
    store.save(stored)
    kept = files(tmp_path)
    orphan = tmp_path / "images" / ("0" * 64 + ".png")  # left by a process that died mid-save
    orphan.write_bytes(b"orphan")
    assert PromptStore(tmp_path).load().texts == stored.texts and orphan.exists()  # a reader removes nothing
    assert PromptStore(tmp_path).load(reclaim=True).texts == stored.texts
    assert not orphan.exists() and files(tmp_path) == kept


def test_a_failed_directory_flush_after_the_rename_is_not_a_failed_save(tmp_path, stored, monkeypatch):
    import stat

    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(5, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert PromptStore(tmp_path).save(stored)  # replaced: not reported as "not saved"
    monkeypatch.undo()
    loaded = PromptStore(tmp_path).load()
    assert loaded.texts == stored.texts and [i.name for i in loaded.images] == [i.name for i in stored.images]


def test_a_text_only_change_writes_no_image_again(tmp_path, monkeypatch):
    """Issue 19, point 5: every save re-encoded and re-hashed every stored PNG (0.91 s for a
    text-only change with 8 prompts taught from 1080p frames, on the thread that committed)."""
    import cv2

    from clipseg_ros.core.prompts import store as prompt_store
    rng = np.random.default_rng(5)
    images = tuple(StoredImagePrompt(f"thing {k}", make_example(rng.integers(0, 256, (1080, 1920, 3), np.uint8),
                                                                box=Box(100, 100, 400, 300)))
                   for k in range(8))
    store = PromptStore(tmp_path)
    store.save(StoredPrompts(texts=("cup",), images=images))
    encodes = []
    real = cv2.imencode
    monkeypatch.setattr(prompt_store.cv2, "imencode", lambda *a, **k: encodes.append(1) or real(*a, **k))
    store.save(StoredPrompts(texts=("cup", "mug"), images=images))
    assert encodes == []
    assert PromptStore(tmp_path).load().texts == ("cup", "mug")
    store.save(StoredPrompts(texts=("mug",), images=images[:7] + (StoredImagePrompt("new", make_example(
        np.full((20, 20, 3), 9, np.uint8))),)))
    assert len(encodes) == 2  # only the new example's image and prompt image
