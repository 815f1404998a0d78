"""Post-processing on hand-made probability maps where the answers are known exactly."""

import math

import numpy as np
import pytest
import torch

from clipseg_ros.core.results.overlay import palette, render_overlay
from clipseg_ros.core.results.postprocess import empty_result, label_from_masks, mask_level, postprocess_logits


def logits_from_probs(probs):
    p = torch.as_tensor(np.clip(probs, 1e-6, 1 - 1e-6), dtype=torch.float32)
    return torch.log(p / (1 - p))


def square_map(grid=(8, 8), box=(2, 1, 3, 4), inside=0.9, outside=0.1):
    """Probability grid with a box (x, y, w, h) at ``inside`` and the rest at ``outside``."""
    p = np.full(grid, outside, np.float32)
    x, y, w, h = box
    p[y:y + h, x:x + w] = inside
    return p


def test_stats_of_a_box_on_the_input_grid():
    probs = square_map()[None]
    r = postprocess_logits(logits_from_probs(probs), ["box"], (8, 8), threshold=0.5)
    s = r.stats[0]
    assert s.bbox == (2, 1, 3, 4)
    assert s.centroid == pytest.approx((3.0, 2.5))
    assert s.area_fraction == pytest.approx(12 / 64)
    assert s.mean_score == pytest.approx(0.9, abs=1 / 255)  # from the published uint8 masks
    assert s.max_score == pytest.approx(0.9, abs=1e-5)
    assert s.detected
    assert r.masks.shape == (1, 8, 8) and r.masks[0, 1, 2] == round(0.9 * 255) and r.masks[0, 0, 0] == round(0.1 * 255)
    assert (r.label == (r.masks[0] >= 128)).all()


def test_stats_scale_to_input_pixels():
    probs = square_map()[None]  # model grid 8x8, input 32x16 (w x h): x*4, y*2
    m = postprocess_logits(logits_from_probs(probs), ["box"], (16, 32), threshold=0.5, output_size=(8, 8))
    s = m.stats[0]
    assert m.masks.shape == (1, 8, 8) and m.image_size == (16, 32)
    assert s.bbox == (8, 2, 12, 8)
    assert s.centroid == pytest.approx((13.5, 5.5))  # pixel centres of the covered input block
    assert s.area_fraction == pytest.approx(12 / 64)
    # Masks at input size: stats of the upsampled masks, close to the model-grid ones.
    r = postprocess_logits(logits_from_probs(probs), ["box"], (16, 32), threshold=0.5)
    t = r.stats[0]
    assert r.masks.shape == (1, 16, 32) and r.label.shape == (16, 32)
    assert np.abs(np.subtract(t.bbox, s.bbox)).max() <= 2
    assert t.centroid == pytest.approx(s.centroid, abs=0.5)
    assert t.area_fraction == pytest.approx((r.masks[0] >= 128).mean())


def test_stats_agree_with_published_masks_on_noisy_maps():
    rng = np.random.default_rng(3)
    probs = rng.random((3, 352, 352), dtype=np.float32)
    r = postprocess_logits(logits_from_probs(probs), ["a", "b", "c"], (300, 500), threshold=0.4)
    for k, s in enumerate(r.stats):
        inside = r.masks[k] >= 102
        ys, xs = np.nonzero(inside)
        assert s.area_fraction == pytest.approx(inside.mean())
        assert s.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert s.centroid == pytest.approx((xs.mean(), ys.mean()), abs=1e-3)
        assert s.mean_score == pytest.approx(r.masks[k][inside].mean() / 255, abs=1e-6)
        assert s.max_score == pytest.approx(float(probs[k].max()), abs=1e-5)


def test_empty_mask_stats():
    probs = np.full((1, 8, 8), 0.2, np.float32)
    s = postprocess_logits(logits_from_probs(probs), ["none"], (8, 8), threshold=0.5).stats[0]
    assert s.bbox == (0, 0, 0, 0) and math.isnan(s.centroid[0]) and math.isnan(s.centroid[1])
    assert s.area_fraction == 0 and s.mean_score == 0 and not s.detected
    assert s.max_score == pytest.approx(0.2, abs=1e-5)


def test_label_argmax_and_threshold():
    a = square_map(box=(0, 0, 4, 8), inside=0.8, outside=0.05)
    b = square_map(box=(2, 0, 4, 8), inside=0.9, outside=0.05)
    r = postprocess_logits(logits_from_probs(np.stack([a, b])), ["a", "b"], (8, 8), threshold=0.5)
    assert (r.label[:, 0:2] == 1).all()  # only a
    assert (r.label[:, 2:6] == 2).all()  # b wins the overlap
    assert (r.label[:, 6:] == 0).all()  # neither reaches the threshold


def test_label_ties_go_to_lower_index_and_threshold_is_inclusive():
    masks = np.array([[[102, 50]], [[102, 101]]], np.uint8)
    assert label_from_masks(masks, 0.4).tolist() == [[1, 0]]
    assert label_from_masks(np.zeros((0, 2, 3), np.uint8), 0.4).shape == (2, 3)


def test_label_matches_numpy_argmax_on_random_masks():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 256, (7, 30, 40), dtype=np.uint8)
    ref = masks.argmax(0).astype(np.uint8) + 1
    ref[masks.max(0) < 128] = 0
    assert np.array_equal(label_from_masks(masks, 0.5), ref)


@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (4, 1), (2, 2), (1, 3), (10, 4000)])
def test_tiny_and_thin_images(shape):
    # OpenCV's binding reads a Python scalar as an array when a plane has 1-4 pixels.
    rng = np.random.default_rng(1)
    masks = rng.integers(0, 256, (3, *shape), dtype=np.uint8)
    ref = masks.argmax(0).astype(np.uint8) + 1
    ref[masks.max(0) < 102] = 0
    assert np.array_equal(label_from_masks(masks, 0.4), ref)
    probs = rng.random((3, 8, 8)).astype(np.float32)
    result = postprocess_logits(logits_from_probs(probs), ["a", "b", "c"], shape, threshold=0.4)
    assert result.masks.shape == (3, *shape) and result.label.shape == shape
    for k, st in enumerate(result.stats):
        assert st.area_fraction == pytest.approx((result.masks[k] >= 102).mean())
    overlay = render_overlay(np.zeros((*shape, 3), np.uint8), result.label, result.prompts)
    assert overlay.shape == (*shape, 3)


def test_upsampling_is_bilinear_half_pixel():
    probs = np.array([[[0.0, 1.0]]], np.float32)  # 1x2 grid -> 1x4: 0, .25, .75, 1
    r = postprocess_logits(logits_from_probs(probs), ["p"], (1, 4), threshold=0.5)
    assert r.masks[0, 0].tolist() == pytest.approx([0, 64, 191, 255], abs=1)


def test_fp16_logits_are_processed_in_float32():
    probs = square_map()[None]
    r16 = postprocess_logits(logits_from_probs(probs).half(), ["box"], (8, 8), threshold=0.5)
    assert r16.stats[0].bbox == (2, 1, 3, 4)


def test_empty_result():
    r = empty_result((5, 7), 0.4)
    assert r.masks.shape == (0, 5, 7) and r.label.shape == (5, 7) and r.stats == []


def test_overlay_tints_labelled_pixels_and_draws_legend():
    img = np.full((120, 160, 3), 100, np.uint8)
    label = np.zeros((120, 160), np.uint8)
    label[60:, 80:] = 1
    out = render_overlay(img, label, ["cup"], alpha=0.5)
    colour = palette(1)[0].astype(int)
    expected = (100 * 0.5 + colour * 0.5).round()
    assert np.abs(out[100, 140].astype(int) - expected).max() <= 1
    assert (out[100, 10] == 100).all()  # background untouched
    assert (out[8:14, 8:14] == colour).all(axis=-1).any()  # legend swatch
    assert img[100, 140].tolist() == [100, 100, 100]  # input not modified
    # A label on the model grid is resized to the image.
    small = np.zeros((12, 16), np.uint8)
    small[6:, 8:] = 1
    out2 = render_overlay(img, small, ["cup"], alpha=0.5)
    assert np.abs(out2[100, 140].astype(int) - expected).max() <= 1


def test_palette_distinct():
    p = palette(8)
    assert p.shape == (8, 3) and len({tuple(c) for c in p}) == 8


def test_detected_is_exactly_whether_the_published_mask_has_a_pixel_at_the_threshold():
    # Review defect 8: a peak of probability 0.399 rounds to mask value 102 = the level of
    # threshold 0.4, so the mask shows a pixel while max_score < threshold said "not detected".
    probs = np.full((1, 8, 8), 0.1)
    probs[0, 3, 3] = 0.399
    result = postprocess_logits(logits_from_probs(probs), ["cup"], (8, 8), threshold=0.4,
                                output_size=(8, 8))
    s = result.stats[0]
    assert result.masks[0, 3, 3] == mask_level(0.4) == 102
    assert s.max_score < 0.4
    assert s.detected and s.area_fraction > 0 and result.label[3, 3] == 1
    # and the other way round: just above the threshold in probability but rounding below the level
    probs[0, 3, 3] = 0.3985  # 101.6 -> 102 (inside); 0.3975 -> 101.4 -> 101 (outside)
    probs[0, 3, 3] = 0.3975
    result = postprocess_logits(logits_from_probs(probs), ["cup"], (8, 8), threshold=0.3975,
                                output_size=(8, 8))
    s = result.stats[0]
    assert s.detected == (s.area_fraction > 0) == bool((result.masks[0] >= mask_level(0.3975)).any())


def test_per_prompt_thresholds_label_is_the_most_probable_prompt_that_passes_its_own():
    # pixel 0: a=0.3 (own 0.2: passes), b=0.5 (own 0.6: fails) -> a, although b is more probable
    # pixel 1: both pass -> the more probable, b; pixel 2: none passes -> 0
    # pixel 3: threshold 0 passes everything, even a zero mask value
    masks = np.array([[[77, 77, 10, 0]], [[128, 200, 100, 0]]], np.uint8)
    assert label_from_masks(masks, [0.2, 0.6]).tolist() == [[1, 2, 0, 0]]
    assert label_from_masks(masks, [0.0, 0.6]).tolist() == [[1, 2, 1, 1]]
    assert label_from_masks(np.array([[[5]], [[5]]], np.uint8), [0.0, 0.0]).tolist() == [[1]]  # tie: lower index


def test_per_prompt_thresholds_equal_for_all_match_the_single_threshold_rule():
    rng = np.random.default_rng(3)
    masks = rng.integers(0, 256, (6, 40, 50), dtype=np.uint8)
    levels = [0.1, 0.9, 0.5, 0.3, 0.7, 0.4]
    ref = np.zeros((40, 50), np.uint8)
    best = np.full((40, 50), -1, np.int32)
    for k, t in enumerate(levels):  # numpy reference: most probable among those passing their own
        passing = masks[k] >= mask_level(t)
        better = passing & (masks[k].astype(np.int32) > best)
        ref[better], best[better] = k + 1, masks[k][better]
    assert np.array_equal(label_from_masks(masks, levels), ref)
    assert np.array_equal(label_from_masks(masks, [0.5] * 6), label_from_masks(masks, 0.5))


def test_stats_and_detected_use_each_prompts_threshold():
    probs = np.stack([square_map(inside=0.5), square_map(inside=0.5)])
    result = postprocess_logits(logits_from_probs(probs), ["low", "high"], (8, 8), threshold=0.4,
                                thresholds=[0.3, 0.6])
    low, high = result.stats
    assert (low.detected, high.detected) == (True, False)
    assert (low.threshold, high.threshold) == (0.3, 0.6) and result.thresholds == (0.3, 0.6)
    assert result.threshold == 0.4  # the default stays what it was
    assert low.area_fraction == 12 / 64 and high.area_fraction == 0
    with pytest.raises(ValueError, match="1 thresholds for 2 prompts"):
        postprocess_logits(logits_from_probs(probs), ["low", "high"], (8, 8), threshold=0.4, thresholds=[0.3])


def test_the_legend_is_backed_and_names_prompts_in_their_own_script():
    # the issue: a small legend without backing, and every non-ASCII prompt drawn as '?'
    from clipseg_ros.core.results.overlay import legend_font

    img = np.full((480, 640, 3), 230, np.uint8)  # a bright, busy-free picture: text must still show
    label = np.zeros((480, 640), np.uint8)
    out = render_overlay(img, label, ["cup", "чашка"], scores=[0.5, 0.25])
    legend = out[2:40, 2:120]
    assert legend.mean() < 0.6 * 230  # a dark backing behind the legend
    assert (legend > 200).any()  # light text on it
    assert (out[300:, 300:] == 230).all()  # nothing drawn elsewhere
    font, text = legend_font("чашка", 16)
    if text == "чашка":  # a font with Cyrillic is here (DejaVu on the CI image): drawn as written
        assert not np.array_equal(render_overlay(img, label, ["чашка"]), render_overlay(img, label, ["?????"]))
    else:  # no such font: each character says what it is
        assert text == "<U+0447><U+0430><U+0448><U+043A><U+0430>"
    # a character no font has is written as its code point, never as '?'
    _, unknown = legend_font("cup \U000F0001", 16)
    assert unknown == "cup <U+F0001>"


def test_the_overlay_carries_a_note_across_its_bottom():
    img = np.full((240, 320, 3), 200, np.uint8)
    label = np.zeros((240, 320), np.uint8)
    plain = render_overlay(img, label, ["cup"])
    noted = render_overlay(img, label, ["cup"], note="untrained weights: masks are meaningless")
    assert np.array_equal(plain[:200], noted[:200])  # only the bottom band changes
    assert noted[225:].mean() < 0.5 * 200 and (noted[225:] != plain[225:]).any()
