"""3D from depth without ROS: a synthetic scene whose answer is known.

A plane at 2.000 m; box A (columns 20..59, rows 10..39) at 1.000 m; box B (columns 100..139,
rows 60..99) at 1.500 m; fx = fy = 200, principal point at the image centre (79.5, 59.5).
"""

import math

import numpy as np
import pytest

from clipseg_ros.core.results.geometry import (
    DepthError,
    PinholeCamera,
    check_same_view,
    depth_in_metres,
    locate,
    mask_to_depth_grid,
    masked_cloud,
    nearest_stamp,
)

H, W = 120, 160
CAM = PinholeCamera(200.0, 200.0, 79.5, 59.5, W, H)
A = (slice(10, 40), slice(20, 60))
B = (slice(60, 100), slice(100, 140))


def scene_mm():
    depth = np.full((H, W), 2000, np.uint16)
    depth[A] = 1000
    depth[B] = 1500
    return depth


def region(box, grow=0):
    m = np.zeros((H, W), bool)
    m[box[0].start - grow:box[0].stop + grow, box[1].start - grow:box[1].stop + grow] = True
    return m


def test_positions_and_extents_of_two_boxes():
    depth = depth_in_metres(scene_mm(), "16UC1")
    a = locate(depth, region(A), CAM, depth_band=0.3)
    assert a.position == pytest.approx((-0.2, -0.175, 1.0), abs=1e-6)  # centre of columns 20..59, rows 10..39
    # the box covers the pixels' footprints: 40 px x z / f wide (pixel edges 19.5 .. 59.5), centred on them
    assert a.extent == pytest.approx((40 / 200, 30 / 200, 0.0), abs=1e-6)
    assert a.box_center == pytest.approx((-0.2, -0.175, 1.0), abs=1e-6)
    assert (a.valid_fraction, a.inliers) == (1.0, 1200)
    b = locate(depth, region(B), CAM, depth_band=0.3)
    assert b.position == pytest.approx(((119.5 - 79.5) * 1.5 / 200, (79.5 - 59.5) * 1.5 / 200, 1.5), abs=1e-6)
    assert b.extent[0] == pytest.approx(40 * 1.5 / 200, abs=1e-6)


def test_background_inside_the_mask_is_rejected_by_the_depth_band():
    depth = depth_in_metres(scene_mm(), "16UC1")
    grown = locate(depth, region(A, grow=3), CAM, depth_band=0.3)  # 3 px of the 2 m plane around it
    assert grown.position == pytest.approx((-0.2, -0.175, 1.0), abs=1e-6)
    assert grown.inliers == 1200 and grown.extent[2] == 0.0


def test_invalid_depth_holes_count_against_the_valid_share_only():
    depth_mm = scene_mm()
    depth_mm[10:40, 20:30] = 0  # a quarter of box A without depth
    depth = depth_in_metres(depth_mm, "16UC1")
    a = locate(depth, region(A), CAM, depth_band=0.3)
    assert a.valid_fraction == 0.75 and a.inliers == 900
    assert a.position[2] == 1.0 and a.position[0] == pytest.approx((44.5 - 79.5) / 200, abs=1e-6)
    depth[A] = np.nan
    none = locate(depth, region(A), CAM, depth_band=0.3)
    assert not none.has_position and math.isnan(none.position[0]) and none.valid_fraction == 0.0


def test_millimetres_and_metres_give_the_same_answer():
    metres = scene_mm().astype(np.float32) / 1000
    metres[0, 0], metres[0, 1], metres[0, 2] = np.nan, np.inf, -1.0
    from_m = depth_in_metres(metres, "32FC1")
    from_mm = depth_in_metres(scene_mm(), "16UC1")
    assert np.isnan(from_m[0, :3]).all()
    assert np.array_equal(from_m[1:], from_mm[1:])
    assert locate(from_m, region(A), CAM, 0.3) == locate(from_mm, region(A), CAM, 0.3)
    with pytest.raises(DepthError, match="not 16UC1"):
        depth_in_metres(metres, "rgb8")


def test_camera_info_and_views():
    k = [200.0, 0, 79.5, 0, 200.0, 59.5, 0, 0, 1]
    assert PinholeCamera.from_k(k, W, H) == CAM
    with pytest.raises(DepthError, match="focal lengths fx=0"):
        PinholeCamera.from_k([0.0] * 9, W, H)
    half = PinholeCamera(100.0, 100.0, 39.5, 29.5, W // 2, H // 2)
    check_same_view(CAM, half)  # decimated depth (pixel centres kept): fine
    with pytest.raises(DepthError, match="register depth to colour"):
        check_same_view(CAM, PinholeCamera(100.0, 100.0, 39.5, 29.5, W // 2, H))
    small = mask_to_depth_grid(region(A), (60, 80))
    assert small.shape == (60, 80) and small[5:20, 10:30].all() and small.sum() == 300


def test_masked_cloud_stride_cap_labels_and_scores():
    depth = depth_in_metres(scene_mm(), "16UC1")
    label = np.zeros((H, W), np.uint8)
    label[A], label[B] = 1, 2
    masks = np.zeros((2, H, W), np.uint8)
    masks[0][A], masks[1][B] = 255, 51
    cloud = masked_cloud(depth, label, masks, CAM, labels=[1])
    assert len(cloud) == 1200 and set(cloud.label.tolist()) == {1} and (cloud.score == 1.0).all()
    assert np.allclose(cloud.xyz[:, 2], 1.0) and cloud.xyz[:, 0].min() == pytest.approx((20 - 79.5) / 200)
    both = masked_cloud(depth, label, masks, CAM, labels=[1, 2], stride=2)
    assert len(both) == 300 + 400 and set(both.label.tolist()) == {1, 2}
    assert set(both.score[both.label == 2].tolist()) == {np.float32(0.2)}
    capped = masked_cloud(depth, label, masks, CAM, labels=[1, 2], max_points=100)
    assert len(capped) == 100 and set(capped.label.tolist()) == {1, 2}
    assert len(masked_cloud(depth, label, masks, CAM, labels=[])) == 0
    # masks on a coarser grid (e.g. 352x352 model output, here 60x80): the nearest grid pixel
    coarse = masked_cloud(depth, label[::2, ::2], masks[:, ::2, ::2], CAM, labels=[1])
    assert len(coarse) == 1200 and np.allclose(coarse.xyz[:, 2], 1.0)


def test_depth_pairing_by_stamp():
    stamps = [10.00, 10.033, 10.066, 10.10]
    assert nearest_stamp(stamps, 10.066, slop=0.0) == 2  # exact
    assert nearest_stamp(stamps, 10.07, slop=0.01) == 2
    assert nearest_stamp(stamps, 10.2, slop=0.05) is None  # far out of sync
    assert nearest_stamp([], 1.0, 1.0) is None
