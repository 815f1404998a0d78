"""Visual prompt engineering without ROS: exact answers on synthetic pictures."""

import cv2
import numpy as np
import pytest
import torch

from clipseg_ros.core.prompts.visual_prompts import (
    DEFAULT_STYLE,
    MEAN_RGB,
    STYLES,
    Box,
    RegionError,
    crop_bounds,
    engineer,
    make_example,
    region_mask,
    style_named,
)

H, W = 60, 80


@pytest.fixture
def picture():
    """A smooth, non-trivial picture: blur must change its background, so it is not constant."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([(x * 3) % 256, (y * 4) % 256, ((x + y) * 2) % 256], axis=2).astype(np.uint8)


def test_styles_are_the_papers_variants_and_the_default_is_its_best():
    assert set(STYLES) == {"plain", "crop", "darken", "blur", "crop_blur", "crop_darken", "crop_darken_blur"}
    best = STYLES[DEFAULT_STYLE]
    assert DEFAULT_STYLE == "crop_darken_blur"
    assert (best.crop, best.context, best.background_factor, best.blur_sigma, best.blur_kernel) == (True, 0.1, 0.1, 3.0, 15)
    assert style_named("") is best
    with pytest.raises(RegionError, match="unknown visual prompt style 'outline': one of plain, crop"):
        style_named("outline")


def test_region_from_box_mask_or_both():
    box = Box(10, 5, 20, 30)
    region = region_mask((H, W), box=box)
    assert region.sum() == 600 and region[5, 10] and region[34, 29] and not region[35, 29] and not region[5, 30]
    mask = np.zeros((H, W), np.uint8)
    mask[0:20, 0:20] = 1  # any non-zero value marks the object
    both = region_mask((H, W), box=box, mask=mask)
    assert both.sum() == 15 * 10  # rows 5..19, columns 10..19
    assert region_mask((H, W), mask=mask).sum() == 400


@pytest.mark.parametrize("box, mask_shape, reason", [
    (Box(0, 0, 0, 10), None, "is empty"),
    (Box(70, 0, 20, 10), None, "not inside the 80x60 image"),
    (Box(-1, 0, 5, 5), None, "not inside"),
    (None, (60, 81), "mask is 81x60 but the image is 80x60"),
    (None, (60, 80), "has no pixel"),
    (Box(0, 0, 5, 5), "far", "has no pixel"),
])
def test_bad_regions_are_refused_with_a_reason(box, mask_shape, reason):
    mask = None
    if mask_shape == "far":
        mask = np.zeros((H, W), np.uint8)
        mask[50:, 70:] = 255
    elif mask_shape is not None:
        mask = np.zeros(mask_shape, np.uint8)
    with pytest.raises(RegionError, match=reason):
        region_mask((H, W), box=box, mask=mask)
    with pytest.raises(RegionError, match="no region"):
        region_mask((H, W))


def test_darken_and_blur_touch_only_the_background_exactly(picture):
    region = region_mask((H, W), box=Box(20, 10, 30, 25))
    out = engineer(picture, region, STYLES["crop_darken_blur"].__class__("t", background_factor=0.1, blur_sigma=3.0))
    # Hand computation: blur the whole picture (15x15, sigma 3, reflected borders), scale its
    # contrast to 10% around the normalisation mean, round; the object's pixels stay as they are.
    blurred = cv2.GaussianBlur(picture.astype(np.float32), (15, 15), 3.0, borderType=cv2.BORDER_REFLECT_101)
    mean = np.asarray(MEAN_RGB, np.float32)
    expected = np.clip(np.rint(mean + 0.1 * (blurred - mean)), 0, 255).astype(np.uint8)
    expected[region] = picture[region]
    assert np.array_equal(out, expected)
    assert np.array_equal(out[region], picture[region])
    assert not np.array_equal(out[~region], picture[~region])
    # darken alone: no blur, factor 0.1
    dark = engineer(picture, region, STYLES["darken"])
    by_hand = np.clip(np.rint(mean + 0.1 * (picture.astype(np.float32) - mean)), 0, 255).astype(np.uint8)
    assert np.array_equal(dark[~region], by_hand[~region]) and np.array_equal(dark[region], picture[region])


def test_crop_box_margin_and_square_padding(picture):
    box = Box(20, 10, 30, 20)  # 30 wide, 20 high
    region = region_mask((H, W), box=box)
    # widened by 10% of its width (3 px) left and right and 10% of its height (2 px) above and below
    assert crop_bounds(box, 0.1, (H, W)) == (17, 8, 53, 32)
    out = engineer(picture, region, STYLES["crop"])
    assert out.shape == (36, 36, 3)  # 36 x 24 crop padded to a square
    assert np.array_equal(out[6:30], picture[8:32, 17:53])  # centred: 6 rows above, 6 below
    fill = np.rint(MEAN_RGB).astype(np.uint8)
    assert (out[:6] == fill).all() and (out[30:] == fill).all()
    # clipped at the image border
    assert crop_bounds(Box(0, 0, 10, 10), 0.1, (H, W)) == (0, 0, 11, 11)
    assert crop_bounds(Box(70, 50, 10, 10), 0.5, (H, W)) == (65, 45, 80, 60)


def test_best_style_is_background_then_crop(picture):
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, (40, 30), 12, 255, -1)
    region = region_mask((H, W), mask=mask)
    out = engineer(picture, region, STYLES[DEFAULT_STYLE])
    treated = engineer(picture, region, STYLES["darken"].__class__("t", background_factor=0.1, blur_sigma=3.0))
    x0, y0, x1, y1 = crop_bounds(Box(28, 18, 25, 25), 0.1, (H, W))
    assert (x0, y0, x1, y1) == (25, 15, 55, 45)
    assert np.array_equal(out, treated[y0:y1, x0:x1])  # already square: no padding


def test_plain_example_and_example_without_region_are_the_image_as_sent(picture):
    example = make_example(picture)
    assert example.style == "plain" and not example.has_region
    assert example.prompt_image is picture
    full = np.full((H, W), 255, np.uint8)
    assert np.array_equal(make_example(picture, mask=full, style="crop_darken_blur").prompt_image[10:70], picture)
    with pytest.raises(RegionError, match="unknown visual prompt style"):
        make_example(picture, style="nope")
    with pytest.raises(RegionError, match="uint8 RGB"):
        make_example(picture[:, :, 0])


def test_embedding_of_an_engineered_prompt_is_the_engines_embedding_of_that_image(tiny_engine, picture):
    from clipseg_ros.core.prompts.prompt_book import PromptBook, PromptChange

    book = PromptBook()
    book.attach(tiny_engine)
    example = make_example(picture, box=Box(20, 10, 30, 25))
    image = book.embed_image("thing", example.prompt_image)
    assert torch.equal(image.embedding, tiny_engine.embed_image(example.prompt_image))
    assert not torch.equal(image.embedding, tiny_engine.embed_image(picture))
    state = book.apply(PromptChange(added_images=(image,)))
    assert torch.equal(state.prompt_set.embeddings[0], tiny_engine.embed_image(example.prompt_image))
