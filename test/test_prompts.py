"""The prompt owner without ROS: every change is checked, embedded and committed whole."""

import numpy as np
import pytest
import torch

from clipseg_ros.prompts import (ImagePrompt, PromptBook, PromptChange, PromptError, apply_template,
                                 image_names_from_request, parse_prompt_text, texts_from_parameter,
                                 texts_from_request, texts_from_topic)
from conftest import random_image


@pytest.fixture
def book(tiny_engine):
    book = PromptBook(["cup", "door handle"])
    book.attach(tiny_engine)
    return book


def test_source_rules():
    assert parse_prompt_text(" cup; door handle\n\n;cup ;  ") == ["cup", "door handle"]
    assert texts_from_topic("a;b") == ("a", "b")
    with pytest.raises(PromptError, match="holds no prompt"):
        texts_from_topic(" ;\n ")
    assert texts_from_request([" cup", "cup ", "mug"]) == ("cup", "mug")
    with pytest.raises(PromptError, match="prompt 1 is empty"):
        texts_from_request(["cup", " "])
    for bad, reason in [(["a", ""], "prompt 1 is empty"), (["a", "a"], "duplicate prompts"),
                        ([" a"], "whitespace")]:
        with pytest.raises(PromptError, match=reason):
            texts_from_parameter(bad)
    assert image_names_from_request(["", " mug "], 2) == ("image_prompt_0", "mug")
    with pytest.raises(PromptError, match="give one name per image"):
        image_names_from_request(["a"], 2)
    with pytest.raises(PromptError, match="duplicate image prompt names"):
        image_names_from_request(["a", "a"], 2)


def test_prompt_set_order_and_embeddings(book, tiny_engine, rng):
    example = random_image(rng, 30, 30)
    image = book.embed_image("img:mug", example)
    state = book.apply(PromptChange(added_images=(image,)))
    assert state.names == ("cup", "door handle", "img:mug")
    expected = tiny_engine.make_prompt_set(["cup", "door handle"], {"img:mug": example}).embeddings
    assert torch.equal(state.prompt_set.embeddings, expected)


def test_template_applies_to_text_prompts_only(book, tiny_engine):
    plain = book.prompt_set.embeddings
    templated = book.apply(PromptChange(template="a photo of a {}.")).prompt_set
    assert templated.names == ("cup", "door handle")  # names stay untemplated
    assert not torch.equal(plain, templated.embeddings)
    direct = tiny_engine.embed_texts(["a photo of a cup.", "a photo of a door handle."])[0]
    assert torch.equal(templated.embeddings, direct)
    assert apply_template("{} {x}", "cup") == "cup {x}"  # other braces are no placeholders
    with pytest.raises(PromptError, match="exactly once"):
        book.apply(PromptChange(template="no placeholder"))
    assert book.state.template == "a photo of a {}."


def test_a_refused_change_changes_nothing_not_even_a_stored_embedding(book, rng):
    # Review defect 1: a request whose second image was unreadable was refused, but its first
    # image had already replaced the stored embedding of that name, which the next text-only
    # change then activated.
    first = book.embed_image("mug", random_image(rng, 30, 30))
    book.apply(PromptChange(added_images=(first,)))
    before = book.prompt_set.embeddings.clone()
    replacement = book.embed_image("mug", random_image(rng, 40, 40))
    with pytest.raises(PromptError, match="both a text prompt and an image prompt"):
        book.apply(PromptChange(texts=("cup", "door handle", "mug"), images=(replacement,)))
    with pytest.raises(PromptError):
        book.embed_image("bad", np.zeros((4, 4), np.float32))
    assert book.state.names == ("cup", "door handle", "mug")
    assert torch.equal(book.prompt_set.embeddings, before)
    after = book.apply(PromptChange(texts=("cup", "door handle"))).prompt_set  # text-only change
    assert torch.equal(after.embeddings, before)
    with pytest.raises(PromptError, match="3 prompts exceed max_prompts=2"):
        book.apply(PromptChange(max_prompts=2))
    assert book.state.max_prompts == 32


def test_a_name_is_either_text_or_image(book, rng):
    # Review defect 2: text "mug" and image "mug" were both active: two masks, one name.
    mug = book.embed_image("mug", random_image(rng, 30, 30))
    book.apply(PromptChange(added_images=(mug,)))
    with pytest.raises(PromptError, match=r"\['mug'\] would be both a text prompt and an image prompt"):
        book.apply(PromptChange(texts=("cup", "mug")))
    with pytest.raises(PromptError, match="both a text prompt and an image prompt"):
        book.check(PromptChange(texts=("cup",), added_images=(ImagePrompt("cup"),)))
    assert book.state.names == ("cup", "door handle", "mug")


def test_as_many_image_prompts_as_max_prompts_allows(tiny_engine, rng):
    # Review defect 3: the engine's image cache held 64 while max_prompts allows 255, so a
    # request with more images failed with a misleading "not known: send its image first".
    book = PromptBook(max_prompts=255)
    book.attach(tiny_engine)
    images = tuple(book.embed_image(f"example {k}", random_image(rng, 8, 8)) for k in range(70))
    state = book.apply(PromptChange(images=images))
    assert len(state.names) == 70 and state.prompt_set.embeddings.shape[0] == 70
    again = book.apply(PromptChange(texts=("cup",)))  # later changes keep all 70
    assert len(again.names) == 71


def test_check_refuses_before_any_embedding(book, monkeypatch, tiny_engine):
    monkeypatch.setattr(tiny_engine, "embed_image", lambda *a: pytest.fail("embedded before the check"))
    many = tuple(ImagePrompt(f"img {k}") for k in range(40))
    with pytest.raises(PromptError, match="42 prompts exceed max_prompts=32"):
        book.check(PromptChange(added_images=many))


def test_unattached_book_checks_and_keeps_texts_and_refuses_images(tiny_engine, rng):
    book = PromptBook(["cup"])
    assert book.prompt_set is None
    assert book.apply(PromptChange(texts=("mug",))).texts == ("mug",)
    with pytest.raises(PromptError, match="no model is loaded"):
        book.embed_image("x", random_image(rng))
    with pytest.raises(PromptError, match="need a loaded model"):
        book.apply(PromptChange(added_images=(ImagePrompt("x"),)))
    state = book.attach(tiny_engine)
    assert state.prompt_set.names == ("mug",)
    book.apply(PromptChange(added_images=(book.embed_image("x", random_image(rng)),)))
    detached = book.detach()  # the model goes, and the image embeddings with it
    assert detached.names == ("mug",) and detached.prompt_set is None


def test_bad_initial_prompts_are_refused():
    with pytest.raises(PromptError, match="exactly once"):
        PromptBook(["cup"], template="nothing")
    with pytest.raises(PromptError, match="2 prompts exceed max_prompts=1"):
        PromptBook(["cup", "mug"], max_prompts=1)
