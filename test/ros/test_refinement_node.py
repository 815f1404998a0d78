"""Refinement over real DDS with a known answer: the known-answer checkpoint's block masks (every
prompt's mask is the red 16 px patches) refined by the node with the camera and depth images,
against the synthetic scenes' truth; objects split by depth, each at its own 3D position."""

import itertools

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from clipseg_ros_interfaces.msg import Segmentation  # noqa: E402
from ros_helpers import RgbdCamera, assert_clean_exit, start_answering_node  # noqa: E402

from clipseg_ros.ros.conversions import imgmsg_to_numpy  # noqa: E402
from clipseg_ros.tools.mask_scores import iou  # noqa: E402
from clipseg_ros.tools.synthetic_scenes import scenes  # noqa: E402

NODE = "clipseg_refine"
SEQUENCE = itertools.count()
H, W, F = 480, 640, 500.0
COLOUR, DEPTH, INFO = "/refine_cam/color/image_raw", "/refine_cam/depth/image_raw", "/refine_cam/depth/camera_info"
COLOUR_INFO = "/refine_cam/color/camera_info"
SCENES = {s.name: s for s in scenes((H, W))}
LEVEL = 102  # threshold 0.4


@pytest.fixture(scope="module")
def node(known_answer_checkpoint, tmp_path_factory, client):
    proc = start_answering_node(client, NODE, {"model": str(known_answer_checkpoint), "prompts": ["red thing"],
                                               "rate": 0.0, "image_topics": [COLOUR], "depth_topics": [DEPTH],
                                               "camera_info_topics": [INFO], "image_camera_info_topics": [COLOUR_INFO],
                                               "refine": "guided+depth", "object_depth_step": 0.1,
                                               "min_object_area": 0.0, "publish_overlay": False},
                                tmp_path_factory.mktemp("logs"))
    yield proc
    assert_clean_exit(proc, proc.stop())


def output_of(client, name, depth=True):
    """Publishes scene ``name`` until the node's output of one of those frames arrives."""
    scene = SCENES[name]
    camera = RgbdCamera(client, (COLOUR, DEPTH, INFO, COLOUR_INFO), (H, W), (F, F), "refine_depth", SEQUENCE, 5000)
    segs = client.collect(Segmentation, f"/{NODE}/segmentation")
    depth_mm = np.round(scene.depth * 1000).astype(np.uint16) if depth else False
    # with depth: an output whose depth image had arrived when it was processed (rate 0: at once)
    outputs = camera.publish_until(segs, 1, accept=lambda s: not depth or s.depth_header.frame_id, timeout=60,
                                   period=0.2, depth_mm=depth_mm, colour_rgb=scene.image)
    return scene, outputs[0]


def mask_of(seg) -> np.ndarray:
    return imgmsg_to_numpy(seg.masks[0]) >= LEVEL


def test_refined_masks_objects_split_by_depth_and_their_positions(node, client):
    scene, seg = output_of(client, "touching squares at 1.0 and 1.5 m")
    assert seg.refinement == "guided+depth" and seg.depth_header.frame_id == "refine_depth"
    assert iou(mask_of(seg), scene.truth) >= 0.99
    assert iou(imgmsg_to_numpy(seg.label) == 1, scene.truth) >= 0.99  # the label follows the refined masks
    assert len(seg.objects) == 2  # one red region, two depths
    assert sorted(round(o.position.z, 3) for o in seg.objects) == [1.0, 1.5]
    for obj in seg.objects:  # each object's box is its own square's, to the object grid's 2 px
        truth = next(t for t in scene.objects if abs(float(scene.depth[t][0]) - obj.position.z) < 0.01)
        ys, xs = np.nonzero(truth)
        box = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        got = (obj.bbox.x_offset, obj.bbox.y_offset, obj.bbox.width, obj.bbox.height)
        assert np.abs(np.subtract(got, box)).max() <= 2, (got, box)


def test_without_a_depth_image_guided_refinement_runs(node, client):
    scene, seg = output_of(client, "disc on texture", depth=False)
    assert seg.refinement == "guided" and seg.depth_header.frame_id == ""
    assert iou(mask_of(seg), scene.truth) >= 0.99


def test_refine_is_a_parameter_and_a_bad_value_is_refused(node, client):
    try:
        assert client.set_params(NODE, refine="none")[0].successful
        scene, seg = output_of(client, "disc on plain")
        assert seg.refinement == "none"
        blocks = iou(mask_of(seg), scene.truth)
        assert blocks < 0.9  # the model's 16 px blocks
        (refused,) = client.set_params(NODE, refine="bilateral")
        assert not refused.successful and "none, guided, depth, guided+depth" in refused.reason
        assert client.get_param(NODE, "refine") == "none"
        assert client.set_params(NODE, refine="depth")[0].successful
        scene, seg = output_of(client, "disc on plain")
        assert seg.refinement == "depth" and iou(mask_of(seg), scene.truth) >= 0.99 > blocks
    finally:
        client.set_params(NODE, refine="guided+depth")
