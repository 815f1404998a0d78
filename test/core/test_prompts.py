"""The prompt owner without ROS: every change is checked, embedded and committed whole."""

import numpy as np
import pytest
import torch
from conftest import random_image

from clipseg_ros.core.prompts.keeper import restoring, stored_prompts
from clipseg_ros.core.prompts.prompt_book import (
    ImagePrompt,
    PromptBook,
    PromptChange,
    PromptError,
    apply_template,
    image_names_from_request,
    parse_prompt_text,
    texts_from_parameter,
    texts_from_request,
    texts_from_topic,
    thresholds_from_parameter,
    thresholds_to_parameter,
)
from clipseg_ros.core.prompts.visual_prompts import Box, make_example


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
    x = book.embed_image("x", random_image(rng))
    book.apply(PromptChange(added_images=(x,)))
    detached = book.detach()  # the model goes, and the image embeddings with it; the examples stay
    assert detached.names == ("mug", "x") and detached.prompt_set is None
    assert detached.images[0].embedding is None
    assert book.apply(PromptChange(texts=("cup",))).names == ("cup", "x")  # text changes still work
    again = book.attach(tiny_engine)  # embedded again from the kept example
    assert torch.equal(again.images[0].embedding, x.embedding)
    assert torch.equal(again.prompt_set.embeddings[1], x.embedding)


def test_bad_initial_prompts_are_refused():
    with pytest.raises(PromptError, match="exactly once"):
        PromptBook(["cup"], template="nothing")
    with pytest.raises(PromptError, match="2 prompts exceed max_prompts=1"):
        PromptBook(["cup", "mug"], max_prompts=1)


def test_per_prompt_thresholds(book, rng):
    state = book.apply(PromptChange(thresholds={"cup": 0.25}))
    assert state.thresholds == (("cup", 0.25),) and state.threshold_of("door handle") is None
    assert state.prompt_set.thresholds == (0.25, None)
    assert state.prompt_set.thresholds_or(0.4) == (0.25, 0.4)
    embeddings = state.prompt_set.embeddings
    # a threshold-only change keeps the embeddings (nothing is embedded again)
    state = book.apply(PromptChange(added_thresholds={"door handle": 0.7, "not active yet": 0.1}))
    assert state.prompt_set.embeddings is embeddings
    assert state.prompt_set.thresholds == (0.25, 0.7)
    assert thresholds_to_parameter(state.thresholds) == ["cup=0.25", "door handle=0.7", "not active yet=0.1"]
    state = book.apply(PromptChange(added_thresholds={"cup": None}))  # back to the default
    assert state.prompt_set.thresholds == (None, 0.7)
    for bad in (1.5, -0.1, float("nan"), "high"):
        with pytest.raises(PromptError, match="threshold for 'cup'"):
            book.apply(PromptChange(added_thresholds={"cup": bad}))
    assert book.state.thresholds == state.thresholds  # refused: nothing changed
    # a prompt that becomes active later gets its threshold
    assert book.apply(PromptChange(texts=("not active yet",))).prompt_set.thresholds == (0.1,)


def test_thresholds_parameter_format():
    assert thresholds_from_parameter(["cup=0.3", " door handle = 0.2", "a=b=1"]) == {
        "cup": 0.3, "door handle": 0.2, "a=b": 1.0}
    for bad, reason in [(["cup"], "is not 'name=value'"), (["=0.3"], "is not 'name=value'"),
                        (["cup=x"], "not a number"), (["cup=2"], r"must be in \[0, 1\]"),
                        (["cup=0.1", "cup=0.2"], "names 'cup' twice")]:
        with pytest.raises(PromptError, match=reason):
            thresholds_from_parameter(bad)


def test_text_and_example_combined_for_one_name(book, tiny_engine, rng):
    example = make_example(random_image(rng, 30, 30), box=Box(5, 5, 10, 10))
    mixed = book.embed_image("my mug", example.prompt_image, text="mug", text_weight=0.25)
    state = book.apply(PromptChange(added_images=(mixed,)))
    text = tiny_engine.embed_texts(["mug"])[0][0]
    image = tiny_engine.embed_image(example.prompt_image)
    assert torch.allclose(state.prompt_set.embeddings[2], 0.25 * text + 0.75 * image, atol=1e-6)
    # the template applies to the mixed-in text too
    templated = book.apply(PromptChange(template="a photo of a {}.")).prompt_set.embeddings[2]
    text = tiny_engine.embed_texts(["a photo of a mug."])[0][0]
    assert torch.allclose(templated, 0.25 * text + 0.75 * image, atol=1e-6)
    with pytest.raises(PromptError, match=r"text weight for 'x' must be in \[0, 1\]"):
        book.embed_image("x", example.prompt_image, text="mug", text_weight=1.5)


def test_restoring_a_stored_set_gives_the_same_prompts(book, tiny_engine, rng):
    example = make_example(random_image(rng, 30, 30), box=Box(5, 5, 10, 10))
    book.apply(PromptChange(added_images=(book.embed_image("my mug", example.prompt_image, "mug", 0.3, source=example),),
                            thresholds={"cup": 0.2}, template="a {}"))
    stored = stored_prompts(book.state)
    assert stored.names == ("cup", "door handle", "my mug") and stored.thresholds == (("cup", 0.2),)
    fresh = PromptBook()
    fresh.attach(tiny_engine)
    state = fresh.apply(restoring(fresh, stored))
    assert state == book.state
    assert torch.equal(state.prompt_set.embeddings, book.prompt_set.embeddings)
    assert state.prompt_set.thresholds == book.prompt_set.thresholds


def test_engine_segments_with_the_prompt_sets_own_thresholds(book, tiny_engine, rng):
    prompt_set = book.apply(PromptChange(thresholds={"door handle": 0.0})).prompt_set
    result = tiny_engine.segment(random_image(rng), prompt_set, threshold=0.99)
    assert [s.threshold for s in result.stats] == [0.99, 0.0]
    assert result.stats[1].detected and result.stats[1].area_fraction == 1.0  # threshold 0: every pixel
