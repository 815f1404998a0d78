"""Scene (objects + depth -> 3D, clouds) and its messages, without a node."""

import math
import re

import numpy as np
import pytest
from visualization_msgs.msg import Marker

from clipseg_ros.core.results.geometry import PinholeCamera
from clipseg_ros.core.results.postprocess import SegmentationResult, label_from_masks, mask_stats
from clipseg_ros.core.results.scene import DepthFrame, SceneOptions, build_scene
from clipseg_ros.ros.messages import build_outputs
from clipseg_ros.ros.spatial_messages import cloud_points, topic_slug

H, W = 120, 160
CAM = PinholeCamera(200.0, 200.0, 79.5, 59.5, W, H)


def two_box_result(grid=(H, W)):
    """'box' masks the 1 m box A and the 1.5 m box B (two objects); 'floor' the rest at 2 m."""
    gh, gw = grid
    box = np.zeros(grid, np.uint8)
    box[10 * gh // H:40 * gh // H, 20 * gw // W:60 * gw // W] = 230
    box[60 * gh // H:100 * gh // H, 100 * gw // W:140 * gw // W] = 200
    floor = np.where(box == 0, 180, 0).astype(np.uint8)
    masks = np.stack([box, floor])
    thresholds = (0.4, 0.4)
    stats = mask_stats(masks, ["box", "floor"], [0.9, 0.7], (H, W), thresholds)
    return SegmentationResult(prompts=["box", "floor"], masks=masks, label=label_from_masks(masks, thresholds),
                              stats=stats, threshold=0.4, image_size=(H, W), thresholds=thresholds)


def depth_frame(size=(H, W)):
    h, w = size
    metres = np.full((h, w), 2.0, np.float32)
    metres[10 * h // H:40 * h // H, 20 * w // W:60 * w // W] = 1.0
    metres[60 * h // H:100 * h // H, 100 * w // W:140 * w // W] = 1.5
    camera = PinholeCamera(200.0 * w / W, 200.0 * h / H, (w - 1) / 2, (h - 1) / 2, w, h)
    return DepthFrame(metres, camera, "camera_depth_optical_frame", (1000, 5))


def test_objects_get_3d_positions_from_depth():
    scene = build_scene(two_box_result(), depth_frame(), SceneOptions())
    box_a, box_b = scene.objects[0]
    assert box_a.object.bbox == (20, 10, 40, 30) and box_b.object.bbox == (100, 60, 40, 40)
    assert box_a.location.position == pytest.approx((-0.2, -0.175, 1.0), abs=1e-6)
    assert box_b.location.position[2] == pytest.approx(1.5)
    (floor,) = scene.objects[1]
    assert floor.location.position[2] == pytest.approx(2.0) and floor.location.valid_fraction == 1.0
    assert scene.best(0) is box_a


def test_masks_on_the_model_grid_and_depth_at_another_resolution():
    # masks at 60x80 (like mask_resolution=model), depth decimated to 60x80 too, image 120x160
    scene = build_scene(two_box_result(grid=(60, 80)), depth_frame(size=(60, 80)), SceneOptions())
    box_a = scene.objects[0][0]
    assert box_a.object.bbox == (20, 10, 40, 30)
    assert box_a.location.position == pytest.approx((-0.2, -0.175, 1.0), abs=0.006)  # within a (coarser) pixel


def test_without_depth_objects_have_no_position_and_no_3d_messages():
    result = two_box_result()
    scene = build_scene(result, None, SceneOptions(cloud=True))
    assert not scene.objects[0][0].location.has_position and scene.cloud is None
    out = build_outputs(result, np.zeros((H, W, 3), np.uint8), None, scene=scene)
    assert len(out.segmentation.objects) == 3 and out.segmentation.depth_header.frame_id == ""
    assert not out.segmentation.objects[0].has_position
    # a frame without depth clears the markers and says each prompt has no position (NaN)
    assert [m.action for m in out.markers.markers] == [Marker.DELETEALL] and out.cloud is None
    assert set(out.positions) == {"box", "floor"} and all(math.isnan(p.point.z) for p in out.positions.values())


def test_clouds_markers_and_positions_as_messages():
    result = two_box_result()
    scene = build_scene(result, depth_frame(), SceneOptions(cloud=True, cloud_prompts=("box",), cloud_stride=2,
                                                            obstacle_prompts=("floor",)))
    out = build_outputs(result, np.zeros((H, W, 3), np.uint8), None, scene=scene)
    header = out.segmentation.depth_header
    assert header.frame_id == "camera_depth_optical_frame" and (header.stamp.sec, header.stamp.nanosec) == (1000, 5)
    assert [o.prompt for o in out.confidences.objects] == ["box", "box", "floor"]
    assert out.confidences.objects[0].position.z == pytest.approx(1.0)
    cloud = cloud_points(out.cloud)
    assert out.cloud.width == len(cloud) == 300 + 400 and set(cloud["label"].tolist()) == {1}
    assert set(np.round(cloud["z"], 3).tolist()) == {1.0, 1.5} and set(np.round(cloud["score"], 3).tolist()) == {np.float32(0.902).item(), np.float32(0.784).item()}
    obstacle = cloud_points(out.obstacle_cloud)
    assert out.obstacle_cloud.point_step == 12 and [f.name for f in out.obstacle_cloud.fields] == ["x", "y", "z"]
    assert len(obstacle) == (60 * 80) - 300 - 400 and np.allclose(obstacle["z"], 2.0)
    markers = out.markers.markers
    assert markers[0].action == Marker.DELETEALL
    cubes = [m for m in markers if m.type == Marker.CUBE]
    assert len(cubes) == 3 and cubes[0].pose.position.z == pytest.approx(1.0)
    assert cubes[0].scale.x == pytest.approx(39 / 200)  # the oriented box: pixel centres 39 px apart at 1 m
    assert set(out.positions) == {"box", "floor"} and out.positions["box"].point.z == pytest.approx(1.0)
    assert out.positions["box"].header.frame_id == "camera_depth_optical_frame"


def test_all_invalid_depth_is_flagged():
    frame = depth_frame()
    frame.metres[:] = np.nan
    scene = build_scene(two_box_result(), frame, SceneOptions())
    assert scene.all_depth_invalid and not scene.objects[0][0].location.has_position


def test_topic_slugs():
    assert topic_slug("door handle") == "door_handle" and topic_slug("3 cups") == "p_3_cups"
    assert re.fullmatch(r"p_3_cups_h[0-9a-f]{8}", topic_slug("3 Cups!"))
    assert re.fullmatch(r"prompt_h[0-9a-f]{8}", topic_slug("?!"))
