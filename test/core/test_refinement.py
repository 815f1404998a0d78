"""Refinement with the camera and depth images, and objects split by depth: exact answers on
synthetic scenes, with the known-answer checkpoint's block masks (the model's worst case) as input."""

import cv2
import numpy as np
import pytest

from clipseg_ros.core.model.known_answer_checkpoint import is_red
from clipseg_ros.core.results.geometry import PinholeCamera
from clipseg_ros.core.results.objects import find_objects
from clipseg_ros.core.results.postprocess import SegmentationResult, mask_level, result_from_masks
from clipseg_ros.core.results.refinement import (
    REFINE_MODES,
    DepthSteps,
    RefineOptions,
    fast_guided_filter,
    mode_that_runs,
    refine_masks,
    refine_result,
)
from clipseg_ros.core.results.scene import DepthFrame, SceneOptions, build_scene
from clipseg_ros.tools.mask_scores import boundary_f_score, iou
from clipseg_ros.tools.synthetic_scenes import RED, scenes

LEVEL = mask_level(0.4)


def test_the_known_answer_checkpoint_marks_exactly_the_red_patches(known_answer_engine, rng):
    image = rng.integers(0, 256, (352, 352, 3), np.uint8)
    image[..., 0] = np.minimum(image[..., 0], 120)  # noise that is never red
    truth = np.zeros((22, 22), bool)
    for i, j in [(0, 0), (5, 7), (10, 10), (21, 21), (3, 15)]:
        image[i * 16:(i + 1) * 16, j * 16:(j + 1) * 16] = RED
        truth[i, j] = True
    image[16 * 12:16 * 13, 16 * 2:16 * 3] = (255, 255, 255)  # white, black: not red
    image[16 * 13:16 * 14, 16 * 2:16 * 3] = 0
    prompts = known_answer_engine.make_prompt_set(["cup", "a door handle"])
    result = known_answer_engine.segment(image, prompts, output_size="model")
    expected = np.kron(truth, np.ones((16, 16), bool))
    assert np.array_equal(result.masks[0] >= LEVEL, expected) and np.array_equal(result.masks[0], result.masks[1])
    assert set(np.unique(result.masks[0])) == {0, 255}  # saturated: +-8 logits
    assert is_red(RED) and not is_red((255, 255, 255)) and not is_red((200, 80, 70))


def test_the_guided_filter_matches_opencv_ximgproc(rng):
    """Without subsampling and on a guide with structure everywhere, the filter is He et al.'s;
    OpenCV's contrib implementation is the independent reference."""
    guide = rng.random((120, 160, 3), dtype=np.float32)
    mask = np.zeros((1, 120, 160), np.uint8)
    cv2.circle(mask[0], (80, 60), 35, 255, -1)
    ours = fast_guided_filter(guide, mask, (4, 4), 1e-2, small_grid=10_000)[0].astype(float)
    reference = cv2.ximgproc.guidedFilter(guide, mask[0].astype(np.float32) / 255, 4, 1e-2) * 255
    inner = (slice(10, -10), slice(10, -10))  # border rules differ
    assert np.abs(ours[inner] - np.clip(reference[inner], 0, 255)).max() <= 2.0  # uint8 rounding + 1%


@pytest.mark.parametrize("size", [(480, 640), (720, 1280)])
def test_refinement_on_the_synthetic_set(known_answer_engine, size):
    prompts = known_answer_engine.make_prompt_set(["red thing"])
    scores = {mode: [] for mode in REFINE_MODES}
    for scene in scenes(size):
        masks = known_answer_engine.segment(scene.image, prompts).masks
        by_mode = {}
        for mode in REFINE_MODES:
            predicted = refine_masks(masks, scene.image, scene.depth, RefineOptions(mode=mode)).masks[0] >= LEVEL
            by_mode[mode] = iou(predicted, scene.truth), boundary_f_score(predicted, scene.truth)
            scores[mode].append(by_mode[mode][0])
        for mode in REFINE_MODES:  # never worse than the block masks by more than 0.01
            assert by_mode[mode][0] >= by_mode["none"][0] - 0.01, (scene.name, mode, by_mode)
        if "handle" not in scene.name and "bar" not in scene.name:  # thin parts the blocks miss: see docs
            assert by_mode["guided+depth"][0] >= 0.99 and by_mode["guided+depth"][1] >= 0.9, (scene.name, by_mode)
        if "0.5 m in front" in scene.name:
            assert by_mode["depth"] >= (0.99, 0.99)
    assert np.mean(scores["none"]) < 0.83 and np.mean(scores["guided+depth"]) >= 0.95


def test_a_mask_does_not_leak_across_a_depth_step():
    """A square 1 m in front of a 2 m wall of the same colour: a mask 12 px too large everywhere
    loses every wall pixel and keeps every square pixel."""
    h, w = 240, 320
    depth = np.full((h, w), 2.0, np.float32)
    depth[60:180, 100:220] = 1.0
    image = np.full((h, w, 3), 128, np.uint8)
    coarse = np.zeros((1, h, w), np.uint8)
    coarse[0, 48:192, 88:232] = 255
    out = refine_masks(coarse, image, depth, RefineOptions(mode="depth"))
    assert out.mode == "depth"
    inside = out.masks[0] >= LEVEL
    assert not inside[depth == 2.0].any() and inside[depth == 1.0].all()


def test_depth_refinement_leaves_a_mask_alone_where_the_depth_is_flat(rng):
    masks = (rng.random((2, 96, 128)) * 255).astype(np.uint8)
    out = refine_masks(masks, np.zeros((96, 128, 3), np.uint8), np.full((96, 128), 1.5, np.float32),
                       RefineOptions(mode="depth"))
    assert np.abs(out.masks.astype(int) - masks).max() <= 1


def test_probabilities_stay_probabilities_and_empty_masks_stay_empty(rng):
    image = rng.integers(0, 256, (96, 128, 3), np.uint8)
    masks = np.zeros((2, 96, 128), np.uint8)
    masks[0] = 128  # p = 0.5 everywhere
    out = refine_masks(masks, image, None, RefineOptions(mode="guided"))
    assert np.abs(out.masks[0].astype(int) - 128).max() <= 1 and not out.masks[1].any()


def test_depth_modes_without_depth_run_what_they_can():
    assert [mode_that_runs(m, False) for m in REFINE_MODES] == ["none", "guided", "none", "guided"]
    assert [mode_that_runs(m, True) for m in REFINE_MODES] == list(REFINE_MODES)
    masks = np.full((1, 8, 8), 200, np.uint8)
    out = refine_masks(masks, np.zeros((8, 8, 3), np.uint8), None, RefineOptions(mode="depth"))
    assert out.mode == "none" and out.masks is masks
    with pytest.raises(ValueError, match="none, guided, depth, guided\\+depth"):
        RefineOptions(mode="bilateral")


def test_refine_result_recomputes_label_and_stats_and_says_what_ran(known_answer_engine):
    scene = scenes((480, 640))[1]  # disc on plain
    prompts = known_answer_engine.make_prompt_set(["red thing"])
    raw = known_answer_engine.segment(scene.image, prompts)
    refined = refine_result(raw, scene.image, None, RefineOptions(mode="guided+depth"))
    assert raw.refinement == "none" and refined.refinement == "guided" and "refine" in refined.timings_ms
    assert np.array_equal(refined.label == 1, refined.masks[0] >= LEVEL)
    assert refined.stats[0].area_fraction == pytest.approx(np.count_nonzero(refined.masks[0] >= LEVEL) / (480 * 640))
    assert refined.stats[0].max_score == raw.stats[0].max_score  # the model's own
    assert iou(refined.label == 1, scene.truth) > iou(raw.label == 1, scene.truth) + 0.1


def test_touching_objects_at_different_depths_are_two_objects():
    scene = next(s for s in scenes((480, 640)) if s.name.startswith("touching"))
    masks = (scene.truth * 255).astype(np.uint8)[None]
    (whole,) = find_objects(masks, ["red"], [0.4], (480, 640))
    (split,) = find_objects(masks, ["red"], [0.4], (480, 640), depth_metres=scene.depth, depth_step=0.1)
    assert len(whole.objects) == 1 and len(split.objects) == 2
    for truth in scene.objects:  # each true object is one found object, to the object grid's 1.8 px
        ys, xs = np.nonzero(truth)
        box = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        found = min(split.objects, key=lambda o: abs(o.bbox[0] - box[0]) + abs(o.bbox[1] - box[1]))
        assert np.abs(np.subtract(found.bbox, box)).max() <= 2 and found.area == pytest.approx(truth.sum(), rel=0.02)
    # and in 3D: each at its own depth
    camera = PinholeCamera.from_k([500.0, 0, 319.5, 0, 500.0, 239.5, 0, 0, 1], 640, 480)
    frame = DepthFrame(scene.depth, camera, "depth", (0, 0))
    like = SegmentationResult(["red"], masks, masks[0] // 255, [], 0.4, (480, 640), thresholds=(0.4,))
    placed = build_scene(result_from_masks(masks, like), frame, SceneOptions(object_depth_step=0.1))
    assert sorted(round(o.location.position[2], 3) for o in placed.objects[0]) == [1.0, 1.5]


def test_a_ramp_is_not_split_and_invalid_depth_never_splits():
    h, w = 120, 160
    masks = np.zeros((1, h, w), np.uint8)
    masks[0, 20:100, 20:140] = 255
    ramp = np.tile(np.linspace(1.0, 3.0, w, dtype=np.float32), (h, 1))  # 1.3 cm between neighbours
    (found,) = find_objects(masks, ["x"], [0.4], (h, w), depth_metres=ramp, depth_step=0.1)
    assert len(found.objects) == 1
    gap = np.full((h, w), 1.0, np.float32)
    gap[:, 80:] = 2.0
    gap[:, 78:82] = np.nan  # a shadow between the steps: no valid pair of neighbours crosses it
    (found,) = find_objects(masks, ["x"], [0.4], (h, w), depth_metres=gap, depth_step=0.1)
    assert len(found.objects) == 1
    assert DepthSteps(gap, 0.1).edges.sum() == 0
