"""Propagation, smoothing and tracks without ROS, on synthetic motion with exact ground truth."""

import cv2
import numpy as np
import pytest

from clipseg_ros.core.motion.propagation import FlowOptions, MaskPropagator, PropagationStopped, TemporalSmoother
from clipseg_ros.core.motion.tracking import ObjectTracker
from clipseg_ros.core.results.objects import find_objects
from clipseg_ros.tools.synthetic_motion import iou, moving_scene, sample_picture

H, W = 240, 320


@pytest.fixture(scope="module")
def picture():
    return sample_picture(H, W)


@pytest.fixture(scope="module")
def mask():
    m = np.zeros((H, W), np.uint8)
    cv2.ellipse(m, (150, 120), (50, 35), 20, 0, 360, 255, -1)
    return m


def propagated_ious(picture, mask, frames, **move):
    scene = list(moving_scene(picture, mask, frames, **move))
    propagator = MaskPropagator(FlowOptions(flow_width=W))
    key = object()
    propagator.reset(scene[0][0], mask[None], key)
    return [iou(propagator.propagate(frame, key).masks[0], true) for frame, true in scene[1:]]


@pytest.mark.parametrize("move", [dict(shift=(3.0, 1.0)), dict(rotation_deg=1.0), dict(zoom=1.01)])
def test_masks_follow_known_motion(picture, mask, move):
    ious = propagated_ious(picture, mask, 15, **move)
    assert min(ious) >= 0.9, ious
    still = propagated_ious(picture, mask, 15, shift=(0.0, 0.0))
    assert min(still) >= 0.98, still  # a static scene stays put


def test_propagation_stops_on_a_cut_other_prompts_or_another_size(picture, mask):
    propagator = MaskPropagator()
    with pytest.raises(PropagationStopped, match="no model frame yet"):
        propagator.propagate(picture, None)
    key = object()
    propagator.reset(picture, mask[None], key)
    with pytest.raises(PropagationStopped, match="prompts changed"):
        propagator.propagate(picture, object())
    with pytest.raises(PropagationStopped, match="prompts changed"):  # stays stopped
        propagator.propagate(picture, key)
    propagator.reset(picture, mask[None], key)
    with pytest.raises(PropagationStopped, match="size changed from 320x240 to 160x240"):
        propagator.propagate(picture[:, :160].copy(), key)
    propagator.reset(picture, mask[None], key)
    other = np.ascontiguousarray(picture[::-1, ::-1])  # a different view: a scene cut
    with pytest.raises(PropagationStopped, match="scene cut"):
        propagator.propagate(other, key)
    propagator.reset(picture, mask[None], key)  # the next model frame starts again
    assert propagator.propagate(picture, key).frames == 1


def test_smoothing_follows_motion_and_damps_flicker(picture, mask):
    smoother = TemporalSmoother(0.5, FlowOptions(flow_width=W))
    key = object()
    scene = list(moving_scene(picture, mask, 4, shift=(4.0, 0.0)))
    first = smoother.update(scene[0][0], mask[None], key)
    assert np.array_equal(first[0], mask)  # nothing to average yet
    for frame, true in scene[1:]:
        smoothed = smoother.update(frame, true[None], key)
        assert iou(smoothed[0], true) >= 0.9  # the older average moved with the object
    # flicker on a static scene: a region whose probability jitters around just above the threshold
    rng = np.random.default_rng(0)
    flicker = TemporalSmoother(0.3, FlowOptions(flow_width=W))
    raw, smooth = [], []
    for _ in range(40):
        noisy = mask.copy()
        noisy[:, :40] = np.clip(140 + rng.normal(0, 20), 0, 255)  # one value per frame: the model's jitter
        raw.append(noisy[0, 0] > 127)
        smooth.append(flicker.update(picture, noisy[None], key)[0][0, 0] > 127)
    flips = lambda xs: sum(a != b for a, b in zip(xs, xs[1:])) / (len(xs) - 1)  # noqa: E731
    assert flips(smooth[5:]) < 0.5 * flips(raw[5:]), (flips(raw[5:]), flips(smooth[5:]))
    # other prompts start afresh
    assert np.array_equal(flicker.update(picture, mask[None], object())[0], mask)


def test_tracks_keep_ids_across_frames_and_lose_them_after_max_missed():
    tracker = ObjectTracker(max_missed=2)

    def objects(boxes, prompt="cup"):
        m = np.zeros((100, 200), np.uint8)
        for x, y, w, h in boxes:
            m[y:y + h, x:x + w] = 200
        return [list(find_objects(m[None], [prompt], [0.4], (100, 200))[0].objects)]

    def ids(frame_objects, frame_ids):  # track id by the object's left edge
        return {o.bbox[0]: t.id for o, t in zip(frame_objects[0], frame_ids[0])}

    frame = objects([(10, 10, 20, 20), (100, 50, 30, 30)])
    first = tracker.update(frame, (100, 200))
    assert ids(frame, first) == {100: 1, 10: 2} and all(t.age == 1 for t in first[0])  # best (larger) first
    frame = objects([(14, 12, 20, 20), (104, 50, 30, 30)])
    moved = tracker.update(frame, (100, 200))
    assert ids(frame, moved) == {104: 1, 14: 2} and all(t.age == 2 for t in moved[0])  # same ids, older
    # a jump with too little overlap (IoU 0.1) but within 10% of the diagonal matches by centroid
    frame = objects([(30, 14, 20, 20)])
    assert ids(frame, tracker.update(frame, (100, 200))) == {30: 2}
    tracker.update(frame, (100, 200))  # the large one unseen for 2 frames (this and the jump): kept
    assert {t.id for t in tracker.tracks["cup"]} == {1, 2}
    tracker.update(frame, (100, 200))  # a 3rd: lost
    assert {t.id for t in tracker.tracks["cup"]} == {2}
    frame = objects([(30, 14, 20, 20), (104, 50, 30, 30)])
    assert ids(frame, tracker.update(frame, (100, 200))) == {104: 3, 30: 2}  # ids are never reused
    tracker.forget(keep=["mug"])
    assert tracker.tracks == {}


def test_propagation_rate_keeps_to_its_budget_only_when_the_model_has_no_spare_time():
    from clipseg_ros.core.motion.temporal import MODEL_SPARE_MIN, propagation_rate

    assert propagation_rate(15.0, None, 0.0125, 0.1) == 15.0  # nothing known yet
    assert propagation_rate(15.0, 0.35, 0.0125, 0.1) == 15.0  # a throttled model: spare time
    assert propagation_rate(15.0, MODEL_SPARE_MIN, 0.0125, 0.1) == 15.0
    assert propagation_rate(15.0, 0.02, 0.0125, 0.1) == pytest.approx(8.0)  # 10% of a core at 12.5 ms
    assert propagation_rate(15.0, 0.02, 0.004, 0.1) == 15.0  # cheap enough: the target fits the budget
    assert propagation_rate(15.0, 0.0, None, 0.1) == 15.0  # its own CPU cost not known yet
    with pytest.raises(ValueError):
        propagation_rate(15.0, 0.0, 0.01, 0.0)


def test_panning_camera_moves_two_pixels_a_frame_and_comes_back():
    from clipseg_ros.tools.synthetic_motion import panning_camera

    picture = sample_picture(48, 64)
    pan = panning_camera(picture, frames=5)
    assert len(pan) == 10 and np.array_equal(pan[0], picture) and np.array_equal(pan[-1], picture)
    for a, b in zip(pan[:4], pan[1:5]):  # forwards: each frame is the previous one moved 2 px
        assert np.array_equal(b[:, 2:], a[:, :-2]) or np.array_equal(b[:, :-2], a[:, 2:])
