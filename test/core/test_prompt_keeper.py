"""The prompt keeper without ROS: examples live on disk, not in memory, and the store follows
every commit; another writer or a dead process cannot take away what a live one still needs."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import random_image

from clipseg_ros.core.prompts.keeper import PromptKeeper
from clipseg_ros.core.prompts.prompt_book import PromptBook, PromptChange, PromptError
from clipseg_ros.core.prompts.store import KeptExample, PromptStore, StoredPrompts
from clipseg_ros.core.prompts.visual_prompts import Box, make_example


class Log:
    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(("info", message))

    def warning(self, message):
        self.lines.append(("warning", message))


@pytest.fixture
def example(rng):
    mask = np.zeros((240, 320), np.uint8)
    mask[60:180, 80:240] = 255
    return make_example(random_image(rng, 240, 320), box=Box(70, 50, 180, 140), mask=mask)


def keeper_for(tiny_engine, store_dir, log=None, texts=("cup",)):
    keeper = PromptKeeper(PromptBook(texts), None if store_dir is None else str(store_dir), log or Log())
    keeper.attach(tiny_engine)
    return keeper


def test_a_taught_example_is_kept_on_disk_and_only_its_prompt_image_in_memory(tiny_engine, tmp_path, example):
    keeper = keeper_for(tiny_engine, tmp_path / "store")
    state = keeper.commit(PromptChange(added_images=(keeper.embed_example("mug", example, "mug", 0.3),)))
    (mug,) = state.images
    assert isinstance(mug.source, KeptExample)
    assert not hasattr(mug.source, "image") and not hasattr(mug.source, "mask")  # no full-size pixels held
    assert mug.prompt_image.nbytes == example.prompt_image.nbytes < example.image.nbytes + example.mask.nbytes
    # the store holds the whole example, exactly
    reader = PromptStore(tmp_path / "store")
    (stored,) = reader.load().images
    back = reader.read_example(stored.example)
    assert np.array_equal(back.image, example.image) and np.array_equal(back.mask, example.mask)
    assert np.array_equal(back.prompt_image, example.prompt_image) and back.box == example.box
    assert (stored.text, stored.text_weight) == ("mug", 0.3)


def test_without_a_store_the_example_is_dropped(tiny_engine, example):
    keeper = keeper_for(tiny_engine, None)
    (mug,) = keeper.commit(PromptChange(added_images=(keeper.embed_example("mug", example),))).images
    assert mug.source is None and mug.prompt_image is not None
    keeper.detach()
    assert keeper.attach(tiny_engine).names == ("cup", "mug")  # embedded again from its prompt image


def test_a_refused_change_writes_nothing(tiny_engine, tmp_path, example):
    keeper = keeper_for(tiny_engine, tmp_path / "store")
    with pytest.raises(PromptError):
        keeper.commit(PromptChange(added_images=(keeper.embed_example("cup", example),)))  # a text prompt's name
    assert not (tmp_path / "store" / "kept").exists() or not any((tmp_path / "store" / "kept").rglob("*.png"))


def test_another_writer_removing_the_images_cannot_strand_a_live_prompt(tiny_engine, tmp_path, example):
    keeper = keeper_for(tiny_engine, tmp_path / "store")
    keeper.commit(PromptChange(added_images=(keeper.embed_example("mug", example),)))
    PromptStore(tmp_path / "store").save(StoredPrompts(texts=("other",)))  # another node: its images only
    assert not list((tmp_path / "store" / "images").iterdir())
    log = keeper.log
    keeper.commit(PromptChange(added_thresholds={"mug": 0.7}))  # our next save: whole again
    assert not [line for line in log.lines if line[0] == "warning"], log.lines
    reader = PromptStore(tmp_path / "store")
    (stored,) = reader.load().images
    assert np.array_equal(reader.read_example(stored.example).image, example.image)


def test_a_restored_prompt_survives_another_writer_too(tiny_engine, tmp_path, example):
    first = keeper_for(tiny_engine, tmp_path / "store")
    first.commit(PromptChange(added_images=(first.embed_example("mug", example),)))
    first.close()
    second = keeper_for(tiny_engine, tmp_path / "store")  # restores "mug" from the store
    assert second.state.names == ("cup", "mug")
    PromptStore(tmp_path / "store").save(StoredPrompts(texts=("other",)))
    second.commit(PromptChange(texts=("cup", "plate")))
    reader = PromptStore(tmp_path / "store")
    loaded = reader.load()
    assert loaded.names == ("cup", "plate", "mug")
    assert np.array_equal(reader.read_example(loaded.images[0].example).mask, example.mask)


def test_a_dead_process_session_is_removed_and_a_live_one_kept(tiny_engine, tmp_path, example):
    store_dir = tmp_path / "store"
    live = keeper_for(tiny_engine, store_dir)
    live.commit(PromptChange(added_images=(live.embed_example("mug", example),)))
    script = textwrap.dedent(f"""
        import os, numpy as np
        from clipseg_ros.core.prompts.store import PromptStore
        from clipseg_ros.core.prompts.visual_prompts import make_example
        store = PromptStore({str(store_dir)!r})
        store.keep(make_example(np.full((8, 8, 3), 9, np.uint8)))
        os._exit(0)  # dies without closing its session
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    sessions = sorted(p.name for p in (store_dir / "kept").iterdir() if p.is_dir())
    assert len(sessions) == 2
    PromptStore(store_dir).load(reclaim=True)  # a writer starting
    remaining = [p for p in (store_dir / "kept").iterdir() if p.is_dir()]
    assert len(remaining) == 1 and len(list(remaining[0].iterdir())) == 3  # ours: image, mask, prompt image
    live.close()
    assert not any((store_dir / "kept").iterdir())
