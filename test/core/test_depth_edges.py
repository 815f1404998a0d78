"""3D where robots live: depth edges, sub-pixel masks, distorted and rectified cameras, oblique
surfaces, background in the mask, registration (issue 18, points 1-5 and 7). No ROS: every
scene is synthetic and its answer known."""

import math

import cv2
import numpy as np
import pytest

from clipseg_ros.core.results.geometry import (
    DepthError,
    PinholeCamera,
    check_same_view,
    fit_surface,
    locate,
    mask_to_depth_grid,
    masked_cloud,
)
from clipseg_ros.core.results.grids import centre_indices, resample_nearest
from clipseg_ros.core.results.objects import find_objects
from clipseg_ros.core.results.postprocess import SegmentationResult, label_from_masks, mask_stats
from clipseg_ros.core.results.scene import DepthFrame, SceneOptions, build_scene


def result_of(masks: np.ndarray, prompts, image_size, threshold=0.5) -> SegmentationResult:
    label = label_from_masks(masks, threshold)
    stats = mask_stats(masks, prompts, [float(m.max()) / 255 for m in masks], image_size, threshold)
    return SegmentationResult(prompts=list(prompts), masks=masks, label=label, stats=stats, threshold=threshold,
                              image_size=image_size)


# ----------------------------------------------------------------------------- point 1
def test_an_even_split_across_a_depth_edge_keeps_a_surface_instead_of_raising():
    """Half the mask at 1.0 m, half at 2.5 m: the median (1.75 m) lies in the gap; the old rule
    kept no point and raised ValueError from points.max()."""
    cam = PinholeCamera(100.0, 100.0, 19.5, 9.5, 40, 20)
    depth = np.full((20, 40), 2.5, np.float32)
    depth[:, :20] = 1.0
    where = locate(depth, np.ones((20, 40), bool), cam, depth_band=0.3)
    assert where.has_position and where.inliers == 400
    assert where.position[2] == 1.0  # a tie goes to the nearer surface


def test_the_larger_cluster_wins_at_a_depth_edge():
    cam = PinholeCamera(100.0, 100.0, 19.5, 9.5, 40, 20)
    depth = np.full((20, 40), 1.0, np.float32)
    depth[:, :14] = 2.5  # 280 px far, 520 px near
    where = locate(depth, np.ones((20, 40), bool), cam, depth_band=0.3)
    assert (where.inliers, where.position[2]) == (520, 1.0)


def test_random_blobs_across_a_depth_edge_never_lose_a_frame():
    """The review's measurement: random blobs straddling a 1.5 m depth edge with noise crashed in
    9-21 frames per 1000. Every frame now has a position on one of the two surfaces."""
    rng = np.random.default_rng(18)
    h, w = 60, 80
    cam = PinholeCamera(80.0, 80.0, (w - 1) / 2, (h - 1) / 2, w, h)
    near, far = 1.0, 2.5
    for _ in range(1000):
        edge = int(rng.integers(10, w - 10))
        depth = np.where(np.arange(w)[None, :] < edge, near, far).astype(np.float32) * np.ones((h, 1), np.float32)
        depth += rng.normal(0, 0.01, depth.shape).astype(np.float32)
        depth[rng.random(depth.shape) < 0.1] = np.nan
        blob = np.zeros((h, w), np.uint8)
        cv2.ellipse(blob, (edge + int(rng.integers(-4, 5)), int(rng.integers(15, 45))),
                    (int(rng.integers(2, 12)), int(rng.integers(2, 12))), 0, 0, 360, 1, -1)
        where = locate(depth, blob > 0, cam, depth_band=0.3)
        if where.has_position:
            assert min(abs(where.position[2] - near), abs(where.position[2] - far)) < 0.05


# ----------------------------------------------------------------------------- point 2
def test_masks_are_resampled_by_pixel_centres_everywhere():
    rng = np.random.default_rng(2)
    mask = rng.integers(0, 2, (352, 352)).astype(bool)
    big = mask_to_depth_grid(mask, (1080, 1920))
    assert np.array_equal(big, mask[np.ix_(centre_indices(1080, 352), centre_indices(1920, 352))])
    # the rule itself: output pixel j takes input pixel floor((j + 0.5) * n / N)
    assert centre_indices(4, 2).tolist() == [0, 0, 1, 1] and centre_indices(2, 4).tolist() == [1, 3]
    small = resample_nearest(np.arange(12, dtype=np.uint16).reshape(3, 4), (3, 2))
    assert small.tolist() == [[1, 3], [5, 7], [9, 11]]


def test_a_thin_pole_in_front_of_a_wall_is_found_on_the_pole_at_every_sub_pixel_offset():
    """A 6 px pole 0.8 m in front of a wall at 3 m in a 1920 px wide frame; its mask at the
    camera's size (mask_resolution input), so objects are found on a 352 px grid and placed back
    on the depth grid. At 40 offsets across one grid pixel the old resampling put it on the wall 3
    times and crashed 5 times."""
    dh, dw = 64, 1920
    cam = PinholeCamera(1400.0, 1400.0, (dw - 1) / 2, (dh - 1) / 2, dw, dh)
    for k in range(40):
        left = 900 + round(k * (dw / 352) / 40 * 8) / 8  # sub-grid-pixel offsets across one grid pixel
        cols = np.arange(dw)
        pole = (cols >= math.floor(left)) & (cols < math.floor(left) + 6)
        depth = np.where(pole[None, :], 2.2, 3.0).astype(np.float32) * np.ones((dh, 1), np.float32)
        masks = np.zeros((1, dh, dw), np.uint8)
        masks[0][:, pole] = 255
        result = result_of(masks, ["pole"], (dh, dw))
        scene = build_scene(result, DepthFrame(depth, cam, "f", (0, 0)), SceneOptions(min_object_area=0))
        (obj,) = scene.objects[0]
        assert obj.location.has_position and obj.location.position[2] == pytest.approx(2.2), k


def test_object_centroids_on_a_downsampled_1080p_mask_are_not_biased():
    """At 1080p masks are sampled down to 352 for objects: by pixel centres the centroid is off by
    well under one grid pixel on average (the old rule: +2.7 px), box edges by at most one
    sampled pixel (5.5 px at 1920)."""
    errors, edges = [], []
    rng = np.random.default_rng(4)
    for _ in range(40):
        cx, cy, r = rng.uniform(300, 1600), rng.uniform(200, 880), rng.uniform(40, 150)
        mask = np.zeros((1080, 1920), np.uint8)
        cv2.circle(mask, (int(round(cx * 8)), int(round(cy * 8))), int(round(r * 8)), 255, -1, shift=3)
        m = cv2.moments(mask, binaryImage=True)
        true = (m["m10"] / m["m00"], m["m01"] / m["m00"])
        x, y, w, h = cv2.boundingRect(mask)
        (found,) = find_objects(mask[None], ["disc"], [0.5], (1080, 1920))[0].objects
        errors.append(np.subtract(found.centroid, true))
        edges += [abs(found.bbox[0] - x), abs(found.bbox[1] - y), abs(found.bbox[0] + found.bbox[2] - x - w),
                  abs(found.bbox[1] + found.bbox[3] - y - h)]
    bias = np.mean(errors, axis=0)
    assert np.all(np.abs(bias) < 0.5), bias
    assert max(edges) <= 1920 / 352 + 0.5


# ----------------------------------------------------------------------------- point 3
def _grid_points(rng, n=200):
    return np.stack([rng.uniform(-1.2, 1.2, n), rng.uniform(-0.9, 0.9, n), rng.uniform(0.8, 3.0, n)], axis=1)


def test_raw_distorted_pixels_are_undistorted_with_k_and_d():
    w, h = 1280, 720
    k = [640.0, 0, 639.5, 0, 640.0, 359.5, 0, 0, 1]
    d = [-0.3, 0.09, 0.001, -0.0005, -0.01]
    cam = PinholeCamera.from_camera_info(k, d, [0.0] * 12, "plumb_bob", w, h)  # auto: D is non-zero -> raw
    assert cam.distortion == tuple(d)
    points = _grid_points(np.random.default_rng(3))
    pixels, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), np.array(k).reshape(3, 3), np.array(d))
    inside = (pixels[:, 0, 0] > 0) & (pixels[:, 0, 0] < w - 1) & (pixels[:, 0, 1] > 0) & (pixels[:, 0, 1] < h - 1)
    got = cam.points(pixels[inside, 0, 0], pixels[inside, 0, 1], points[inside, 2])
    assert inside.sum() > 100 and np.abs(got - points[inside]).max() < 1e-4  # 0.1 mm
    # K only (the old model) is off by up to ~0.1 m at the corners
    plain = PinholeCamera.from_k(k, w, h).points(pixels[inside, 0, 0], pixels[inside, 0, 1], points[inside, 2])
    assert np.abs(plain - points[inside]).max() > 0.05
    # whole pixels use a table of every pixel's ray: the same answer
    us, vs = np.array([0, 100, 1279]), np.array([0, 300, 719])
    table = cam.points(us, vs, np.ones(3))
    direct = cam.points(us.astype(np.float64), vs.astype(np.float64), np.ones(3))
    assert np.abs(table - direct).max() < 1e-5


def test_fisheye_pixels_are_undistorted():
    k = [300.0, 0, 319.5, 0, 300.0, 239.5, 0, 0, 1]
    d = [0.05, -0.01, 0.002, -0.0003]
    cam = PinholeCamera.from_camera_info(k, d, [0.0] * 12, "equidistant", 640, 480)
    points = _grid_points(np.random.default_rng(5), 100) * np.array([0.5, 0.5, 1.0])
    pixels, _ = cv2.fisheye.projectPoints(points.reshape(-1, 1, 3), np.zeros(3), np.zeros(3),
                                          np.array(k).reshape(3, 3), np.array(d))
    got = cam.points(pixels[:, 0, 0], pixels[:, 0, 1], points[:, 2])
    assert np.abs(got - points).max() < 1e-4


def test_a_rectified_image_uses_p():
    """P from getOptimalNewCameraMatrix (what a rectified image is in): with K the image edge was
    53 mm off at 1 m."""
    w, h = 1280, 720
    k = np.array([[640.0, 0, 639.5], [0, 640.0, 359.5], [0, 0, 1]])
    d = np.array([-0.3, 0.09, 0.0, 0.0, 0.0])
    new_k, _ = cv2.getOptimalNewCameraMatrix(k, d, (w, h), 1.0)
    p = np.hstack([new_k, np.zeros((3, 1))])
    cam = PinholeCamera.from_camera_info(k.ravel(), d, p.ravel(), "plumb_bob", w, h, mode="rectified")
    points = _grid_points(np.random.default_rng(6))
    pixels, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), new_k, None)
    got = cam.points(pixels[:, 0, 0], pixels[:, 0, 1], points[:, 2])
    assert np.abs(got - points).max() < 1e-5
    # auto without distortion coefficients also means rectified: P
    auto = PinholeCamera.from_camera_info(k.ravel(), [0.0] * 5, p.ravel(), "plumb_bob", w, h)
    assert (auto.fx, auto.cx) == (new_k[0, 0], new_k[0, 2])
    with pytest.raises(DepthError, match="distortion model 'kannala'"):
        PinholeCamera.from_camera_info(k.ravel(), [0.1] * 4, p.ravel(), "kannala", w, h)


# ----------------------------------------------------------------------------- point 4
def test_a_box_holds_every_inlier_and_covers_the_pixels_footprints():
    """A 174 px wide box at 1.5 m with fx 500 is 0.522 m wide (the old extent: 0.516)."""
    h, w = 200, 400
    cam = PinholeCamera(500.0, 500.0, 199.5, 99.5, w, h)
    depth = np.full((h, w), 4.0, np.float32)
    depth[50:150, 100:274] = 1.5
    mask = np.zeros((1, h, w), np.uint8)
    mask[0, 50:150, 100:274] = 255
    scene = build_scene(result_of(mask, ["box"], (h, w)), DepthFrame(depth, cam, "f", (0, 0)), SceneOptions())
    where = scene.objects[0][0].location
    assert where.extent[0] == pytest.approx(174 * 1.5 / 500, abs=1e-6)
    assert where.extent[1] == pytest.approx(100 * 1.5 / 500, abs=1e-6)
    # a large object is sampled, but the box is the same
    big_depth = np.full((1080, 1920), 1.5, np.float32)
    big_cam = PinholeCamera(1000.0, 1000.0, 959.5, 539.5, 1920, 1080)
    big = np.zeros((1, 1080, 1920), np.uint8)
    big[0, 100:900, 200:1700] = 255
    place = build_scene(result_of(big, ["wall"], (1080, 1920)), DepthFrame(big_depth, big_cam, "f", (0, 0)),
                        SceneOptions()).objects[0][0].location
    assert place.inliers < 800 * 1500  # it was sampled
    assert place.extent[:2] == pytest.approx((1500 * 1.5 / 1000, 800 * 1.5 / 1000), abs=0.02)


def test_an_oblique_table_is_kept_whole_and_its_box_holds_every_point():
    """A table seen at a slant, 1.0 m to 2.6 m away: a fixed band around one depth kept 31% of
    it and 7% of the inliers fell outside the box centred on the median."""
    h, w = 120, 160
    cam = PinholeCamera(150.0, 150.0, 79.5, 59.5, w, h)
    # the plane y = 0.5 m (a floor 0.5 m below the camera): depth z = 0.5 fy / (v - cy) below the horizon
    vs, us = np.mgrid[0:h, 0:w]
    with np.errstate(divide="ignore"):
        depth = np.where(vs > 85, 0.5 * 150.0 / (vs - 59.5), np.nan).astype(np.float32)
    mask = np.zeros((h, w), bool)
    mask[88:120, 30:130] = True
    valid = mask & np.isfinite(depth)
    where = locate(depth, mask, cam, depth_band=0.3)
    assert where.inliers == int(valid.sum())  # all of it
    z = depth[valid]
    assert z.max() - z.min() > 1.0  # far more than 2 x depth_band
    points = cam.points(us[valid], vs[valid], z)
    low = np.asarray(where.box_center) - np.asarray(where.extent) / 2
    high = np.asarray(where.box_center) + np.asarray(where.extent) / 2
    assert np.all(points >= low - 1e-6) and np.all(points <= high + 1e-6)
    assert where.position[1] == pytest.approx(0.5, abs=1e-4)  # on the floor


def test_a_surface_fit_is_exact_on_a_plane_and_keeps_a_one_depth_object_one_depth():
    rng = np.random.default_rng(7)
    us, vs = rng.uniform(0, 100, 500), rng.uniform(0, 100, 500)
    zs = 1.0 / (0.002 * us - 0.001 * vs + 0.5)
    surface = fit_surface(us, vs, zs, 0.05)
    assert surface.inliers(us, vs, zs).all()
    assert np.abs(surface.depth_at(us, vs) - zs).max() < 1e-9
    flat = fit_surface(us, vs, np.full(500, 2.0), 0.05)
    assert np.allclose(flat.depth_at(us, vs), 2.0)


# ----------------------------------------------------------------------------- point 5
def test_clouds_keep_only_points_on_the_objects_surface():
    """A chair-like object: its mask bleeds onto the wall at 3 m and covers the gap between its
    legs, where depth is the wall too. No cloud point may be at the wall's range."""
    h, w = 80, 120
    cam = PinholeCamera(100.0, 100.0, 59.5, 39.5, w, h)
    depth = np.full((h, w), 3.0, np.float32)
    depth[10:40, 30:90] = 1.2  # seat and back
    depth[40:75, 30:38] = 1.2  # legs
    depth[40:75, 82:90] = 1.2
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 8:77, 27:93] = 255  # the chair's mask, 2-3 px of bleed, and the gap between the legs
    masks[1, :, :] = 100  # 'wall' below threshold: nothing labelled but the chair
    result = result_of(masks, ["chair", "wall"], (h, w))
    options = SceneOptions(cloud=True, obstacle_prompts=("chair",), cloud_stride=1, min_object_area=0)
    scene = build_scene(result, DepthFrame(depth, cam, "f", (0, 0)), options)
    chair = int((depth[8:77, 27:93] == np.float32(1.2)).sum())
    for cloud in (scene.cloud, scene.obstacle_cloud):
        assert len(cloud) == chair and np.allclose(cloud.xyz[:, 2], 1.2)
    assert scene.objects[0][0].location.position[2] == pytest.approx(1.2)


def test_masked_cloud_without_keep_is_every_labelled_pixel():
    h, w = 20, 30
    cam = PinholeCamera(50.0, 50.0, 14.5, 9.5, w, h)
    label = np.ones((h, w), np.uint8)
    cloud = masked_cloud(np.full((h, w), 2.0, np.float32), label, np.full((1, h, w), 255, np.uint8), cam, [1])
    assert len(cloud) == h * w


# ----------------------------------------------------------------------------- point 7
def test_depth_with_its_own_intrinsics_is_not_taken_for_registered_depth():
    """1280x720 colour beside a D4xx's raw 848x480 depth: the aspect ratios differ by 0.6%, so the
    old 1% aspect tolerance took them for one view."""
    colour = PinholeCamera(910.0, 910.0, 640.0, 360.0, 1280, 720)
    raw_depth = PinholeCamera(425.0, 425.0, 424.0, 240.0, 848, 480)
    with pytest.raises(DepthError, match="is not the 1280x720 colour image's view"):
        check_same_view(colour, raw_depth)
    aligned = PinholeCamera(910.0, 910.0, 640.0, 360.0, 1280, 720)
    check_same_view(colour, aligned)
    decimated = PinholeCamera(455.0, 455.0, (640.0 + 0.5) / 2 - 0.5, (360.0 + 0.5) / 2 - 0.5, 640, 360)
    check_same_view(colour, decimated)
    with pytest.raises(DepthError, match="register depth to colour"):
        check_same_view(colour, PinholeCamera(455.0, 455.0, 300.0, 180.0, 640, 360))  # centre 20 px off
