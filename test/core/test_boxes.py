"""Oriented 3D boxes on synthetic scenes with a known answer: a box rotated by known angles, ray
cast into a depth image with known intrinsics."""

import math

import numpy as np
import pytest
from conftest import quaternion_matrix

from clipseg_ros.core.results.boxes import (
    MIN_ORIENTED_POINTS,
    fit_oriented_box,
    rotation_to_quaternion,
    surface_normals,
)
from clipseg_ros.core.results.geometry import PinholeCamera, locate

W, H, F = 320, 240, 300.0
CAMERA = PinholeCamera(F, F, (W - 1) / 2, (H - 1) / 2, W, H)


def rotation(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    rx, ry, rz = (math.radians(a) for a in (rx_deg, ry_deg, rz_deg))
    x = np.array([[1, 0, 0], [0, math.cos(rx), -math.sin(rx)], [0, math.sin(rx), math.cos(rx)]])
    y = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
    z = np.array([[math.cos(rz), -math.sin(rz), 0], [math.sin(rz), math.cos(rz), 0], [0, 0, 1]])
    return z @ y @ x


def render_box(center, rot, size, background=np.nan):
    """Depth (H, W) of a box (centre, rotation columns = its axes, full size) seen by CAMERA,
    and the mask of the pixels that see it (slab intersection of each pixel-centre ray)."""
    us, vs = np.meshgrid(np.arange(W), np.arange(H))
    rays = np.stack([(us - CAMERA.cx) / F, (vs - CAMERA.cy) / F, np.ones_like(us, float)], axis=-1).reshape(-1, 3)
    local_dir = rays @ rot  # the rays in the box's frame (origin: camera)
    local_origin = -np.asarray(center) @ rot
    half = np.asarray(size) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - local_origin) / local_dir
        t2 = (half - local_origin) / local_dir
    t_near = np.nanmax(np.minimum(t1, t2), axis=1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=1)
    hit = (t_near <= t_far) & (t_far > 0)
    depth = np.where(hit, t_near * rays[:, 2], background).reshape(H, W).astype(np.float32)
    return depth, hit.reshape(H, W)


def angle_deg(a, b) -> float:
    return math.degrees(math.acos(min(1.0, abs(float(np.dot(a, b)) / np.linalg.norm(a) / np.linalg.norm(b)))))


CASES = [  # rotations about each axis, alone and together; a face-on and a corner view
    ((25, 0, 0), (0.30, 0.20, 0.15)),
    ((0, 35, 0), (0.30, 0.20, 0.15)),
    ((0, 0, 30), (0.30, 0.20, 0.15)),
    ((30, -40, 20), (0.25, 0.18, 0.12)),
    ((-35, 45, 10), (0.20, 0.20, 0.20)),
]


@pytest.mark.parametrize("angles, size", CASES)
def test_a_rotated_box_seen_in_depth(angles, size):
    rot = rotation(*angles)
    centre = np.array([0.05, -0.03, 1.2])
    depth, mask = render_box(centre, rot, size)
    position = locate(depth, mask, CAMERA, depth_band=0.3)
    box = position.box
    assert box.oriented
    # the faces the camera sees: their outward normals point towards it
    visible = [sign * rot[:, k] for k in range(3) for sign in (1, -1)
               if np.dot(sign * rot[:, k], centre + sign * rot[:, k] * size[k] / 2) < 0]
    dominant = box.rotation[:, 2]
    assert min(angle_deg(dominant, n) for n in visible) < 2.0
    # every box axis within 2 degrees of one of the true ones
    for k in range(3):
        assert min(angle_deg(box.rotation[:, k], rot[:, j]) for j in range(3)) < 2.0, (k, box.rotation, rot)
    # sizes along the matching true axes: within one pixel's footprint on the face that shows that
    # extent (samples are pixel centres; a face seen at an angle spreads them by 1 / cos)
    matched = [int(np.argmin([angle_deg(box.rotation[:, k], rot[:, j]) for j in range(3)])) for k in range(3)]
    view = centre / np.linalg.norm(centre)
    spacing = []
    for k in range(3):
        axis = rot[:, matched[k]]
        showing = [abs(np.dot(n, view)) for n in visible if abs(np.dot(axis, n)) < 1e-9]
        if showing:  # some visible face runs along this axis: the whole extent is in view
            footprint = (centre[2] + max(size)) / F / max(showing)
            spacing.append(footprint)
            assert abs(box.size[k] - size[matched[k]]) <= footprint, (k, box.size, size)
    if len(spacing) == 3:  # every extent in view: the centre is the box's, to half a footprint
        assert np.linalg.norm(box.center - centre) <= max(0.005, max(spacing) / 2)
    assert np.isclose(np.linalg.det(box.rotation), 1.0)


def test_a_face_on_box_has_no_seen_depth_and_its_face_exactly():
    size = (0.30, 0.20, 0.15)
    centre = np.array([0.0, 0.0, 1.0])
    depth, mask = render_box(centre, rotation(0, 0, 20), size)  # only the front face is visible
    box = locate(depth, mask, CAMERA, depth_band=0.3).box
    assert angle_deg(box.rotation[:, 2], (0, 0, -1)) < 0.5  # towards the camera
    assert angle_deg(box.rotation[:, 0], rotation(0, 0, 20)[:, 0]) < 1.0  # x along the longer side
    footprint = (centre[2] - size[2] / 2) / F
    assert abs(box.size[0] - 0.30) <= footprint and abs(box.size[1] - 0.20) <= footprint
    assert box.size[2] == pytest.approx(0.0, abs=1e-5)  # one view cannot see the back: size.z = 0
    assert box.center[2] == pytest.approx(centre[2] - size[2] / 2, abs=1e-4)  # on the visible face


def test_too_few_points_for_an_orientation_fall_back_to_an_axis_aligned_box():
    points = np.array([[0, 0, 1.0], [0.1, 0.05, 1.1]] * (MIN_ORIENTED_POINTS // 2))
    normals = np.full(points.shape, np.nan)
    box = fit_oriented_box(points, normals)
    assert not box.oriented and np.array_equal(box.rotation, np.eye(3))
    assert np.allclose(box.size, (0.1, 0.05, 0.1)) and np.allclose(box.center, (0.05, 0.025, 1.05))
    assert box.quaternion == (0.0, 0.0, 0.0, 1.0)


def test_normals_point_at_the_camera_and_edges_have_none():
    depth = np.full((H, W), 2.0, np.float32)
    depth[:, W // 2:] = 3.0  # a step: the column before it has no normal
    vs, us = np.nonzero(np.ones((H, W), bool))
    normals = surface_normals(depth, CAMERA, vs, us).reshape(H, W, 3)
    assert np.allclose(normals[10, 10], (0, 0, -1))
    assert np.isnan(normals[10, W // 2 - 1]).all() and np.allclose(normals[10, W // 2 + 3], (0, 0, -1))


@pytest.mark.parametrize("angles", [(0, 0, 0), (90, 0, 0), (0, 180, 0), (30, -40, 20), (170, 5, -120)])
def test_quaternions_of_known_rotations(angles):
    rot = rotation(*angles)
    quaternion = rotation_to_quaternion(rot)
    # back to a matrix: the same rotation
    assert np.allclose(quaternion_matrix(quaternion), rot, atol=1e-9) and quaternion[3] >= 0
