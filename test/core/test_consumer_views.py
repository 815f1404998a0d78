"""Instance, confidence and target images, the pixel-aligned cloud and the objects cloud, on
synthetic scenes whose answer is known to a pixel."""

from dataclasses import replace

import numpy as np
import pytest

from clipseg_ros.core.motion.tracking import TrackId
from clipseg_ros.core.results.consumer_views import (
    aligned_cloud,
    confidence_image,
    instance_ids,
    instance_image,
    instance_value,
    objects_cloud,
    target_mask,
)
from clipseg_ros.core.results.geometry import PinholeCamera
from clipseg_ros.core.results.postprocess import SegmentationResult, label_from_masks, mask_stats
from clipseg_ros.core.results.scene import DepthFrame, SceneOptions, build_scene

H, W = 48, 64
CAMERA = PinholeCamera(60.0, 60.0, (W - 1) / 2, (H - 1) / 2, W, H)


def result_of(masks, prompts, image_size=(H, W), threshold=0.5):
    label = label_from_masks(masks, threshold)
    stats = mask_stats(masks, prompts, [float(m.max()) / 255 for m in masks], image_size, threshold)
    return SegmentationResult(prompts=list(prompts), masks=masks, label=label, stats=stats, threshold=threshold,
                              image_size=image_size)


@pytest.fixture
def scene_of_two_cups():
    """'cup': two separate cups (left one more probable), 'table': a band below them; depth: the
    cups at 1.0 and 1.5 m, the table at 2.0 m, the rest 3.0 m."""
    masks = np.zeros((2, H, W), np.uint8)
    masks[0, 10:20, 5:15] = 240  # left cup, best
    masks[0, 10:22, 40:52] = 200  # right cup
    masks[1, 30:40, :] = 180  # table
    depth = np.full((H, W), 3.0, np.float32)
    depth[10:20, 5:15] = 1.0
    depth[10:22, 40:52] = 1.5
    depth[30:40, :] = 2.0
    result = result_of(masks, ["cup", "table"])
    scene = build_scene(result, DepthFrame(depth, CAMERA, "cam", (1, 0)), SceneOptions(min_object_area=1))
    return result, scene


def test_each_object_has_one_id_in_the_instance_image(scene_of_two_cups):
    result, scene = scene_of_two_cups
    assert instance_ids(scene) == [[1, 2], [3]]  # untracked: its rank in the frame
    image = instance_image(result, scene)
    assert image.dtype == np.uint16 and image.shape == (H, W)
    expected = np.zeros((H, W), np.uint16)
    expected[10:20, 5:15], expected[10:22, 40:52], expected[30:40, :] = 1, 2, 3
    assert np.array_equal(image, expected)
    # tracked: the track ids, folded into the uint16 range
    tracked = replace(scene, objects=tuple(tuple(replace(o, track=TrackId(t, 1)) for o, t in zip(objs, ids))
                                           for objs, ids in zip(scene.objects, [[7, 65536 + 9], [65535]])))
    assert instance_ids(tracked) == [[7, 10], [65535]]
    assert set(np.unique(instance_image(result, tracked))) == {0, 7, 10, 65535}
    assert instance_value(65535) == 65535 and instance_value(65536) == 1


def test_confidence_is_the_labelled_prompts_probability(scene_of_two_cups):
    result, _ = scene_of_two_cups
    confidence = confidence_image(result)
    assert confidence[15, 10] == 240 and confidence[15, 45] == 200 and confidence[35, 3] == 180
    assert confidence[0, 0] == 0 and confidence.dtype == np.uint8
    assert np.array_equal(confidence > 0, result.label > 0)


def test_the_target_mask_is_the_best_object_or_all_at_the_frames_size(scene_of_two_cups):
    result, scene = scene_of_two_cups
    best = target_mask(result, scene, "cup")
    assert best.shape == (H, W) and best.dtype == np.uint8 and set(np.unique(best)) == {0, 255}
    assert np.array_equal(np.argwhere(best == 255).min(0), (10, 5)) and np.array_equal(
        np.argwhere(best == 255).max(0), (19, 14))
    both = target_mask(result, scene, "cup", all_objects=True)
    assert int((both == 255).sum()) == 10 * 10 + 12 * 12
    assert not target_mask(result, scene, "mug").any()  # not an active prompt: empty


def test_the_target_mask_of_a_model_grid_result_is_at_the_input_size():
    masks = np.zeros((1, 16, 22), np.uint8)
    masks[0, 4:8, 11:22] = 255  # the right half of rows 4..7 of the 22x16 grid
    result = result_of(masks, ["cup"], image_size=(32, 44))
    scene = build_scene(result, None, SceneOptions(min_object_area=1))
    mask = target_mask(result, scene, "cup")
    assert mask.shape == (32, 44)
    assert np.array_equal(np.argwhere(mask == 255).min(0), (8, 22)) and np.array_equal(
        np.argwhere(mask == 255).max(0), (15, 43))


def test_the_aligned_cloud_is_one_point_per_label_pixel_in_its_order(scene_of_two_cups):
    result, scene = scene_of_two_cups
    cloud = aligned_cloud(result, scene)
    assert cloud.shape == (H * W, 3) and cloud.dtype == np.float32
    grid = cloud.reshape(H, W, 3)
    assert grid[15, 10, 2] == pytest.approx(1.0) and grid[35, 0, 2] == pytest.approx(2.0)
    assert grid[15, 10, 0] == pytest.approx((10 - CAMERA.cx) / CAMERA.fx * 1.0)
    assert grid[0, 63, 1] == pytest.approx((0 - CAMERA.cy) / CAMERA.fy * 3.0)
    holed = replace(scene, depth=replace(scene.depth, metres=np.where(np.arange(W) < 8, np.nan,
                                                                        scene.depth.metres).astype(np.float32)))
    assert np.isnan(aligned_cloud(result, holed).reshape(H, W, 3)[:, :8]).all()
    assert aligned_cloud(result, replace(scene, depth=None)) is None


def test_a_depth_grid_of_another_size_is_sampled_under_each_label_pixels_centre():
    masks = np.zeros((1, 24, 32), np.uint8)  # the model grid: half the depth image
    masks[0, :, :16] = 255
    result = result_of(masks, ["wall"], image_size=(H, W))
    depth = np.tile(np.linspace(1.0, 2.0, W, dtype=np.float32), (H, 1))
    scene = build_scene(result, DepthFrame(depth, CAMERA, "cam", (1, 0)), SceneOptions(min_object_area=1))
    grid = aligned_cloud(result, scene).reshape(24, 32, 3)
    assert grid[5, 3, 2] == pytest.approx(depth[0, 7])  # label column 3: centre 3.5 -> depth column 7


def test_the_objects_cloud_holds_each_objects_surface_with_its_instance(scene_of_two_cups):
    result, scene = scene_of_two_cups
    cloud = objects_cloud(result, scene, stride=1)
    assert len(cloud) == 100 + 144 + 10 * W
    for value, z, count in ((1, 1.0, 100), (2, 1.5, 144), (3, 2.0, 10 * W)):
        mine = cloud.instance == value
        assert int(mine.sum()) == count and np.allclose(cloud.xyz[mine, 2], z)
    assert set(cloud.label[cloud.instance == 3]) == {2} and set(cloud.label[cloud.instance < 3]) == {1}
    assert np.allclose(cloud.score[cloud.instance == 1], 240 / 255)
    only_cups = objects_cloud(result, scene, prompts=("cup",), stride=2, max_points=30)
    assert len(only_cups) == 30 and set(only_cups.instance) == {1, 2}
    assert objects_cloud(result, replace(scene, depth=None)) is None


def test_two_touching_cups_are_one_object_and_depth_does_not_split_them_yet():
    # Said plainly: regions that touch in the mask are one object (objects.py), whatever the
    # depth. Their 3D keeps one surface (the larger cup's), so the objects cloud has one cup.
    masks = np.zeros((1, H, W), np.uint8)
    masks[0, 10:30, 10:30] = 230  # cup at 1.0 m
    masks[0, 10:30, 30:40] = 230  # a smaller cup touching it, at 1.6 m
    depth = np.full((H, W), 3.0, np.float32)
    depth[10:30, 10:30], depth[10:30, 30:40] = 1.0, 1.6
    result = result_of(masks, ["cup"])
    scene = build_scene(result, DepthFrame(depth, CAMERA, "cam", (1, 0)), SceneOptions(min_object_area=1))
    assert instance_ids(scene) == [[1]]
    assert set(np.unique(instance_image(result, scene))) == {0, 1}
    cloud = objects_cloud(result, scene, stride=1)
    assert len(cloud) == 400 and np.allclose(cloud.xyz[:, 2], 1.0)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (3, 40), (1, 100), (100, 1)])
def test_confidence_of_tiny_and_thin_images(shape):
    # a 1x1 frame reached OpenCV's compare as a scalar and dropped the frame
    masks = np.zeros((2, *shape), np.uint8)
    masks[0, ..., 0] = 200
    masks[1, ..., -1] = 250
    result = result_of(masks, ["a", "b"], image_size=shape)
    expected = np.where(result.label == 1, 200, np.where(result.label == 2, 250, 0))
    assert np.array_equal(confidence_image(result), expected)
