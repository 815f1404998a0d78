"""The consumer outputs over real DDS, against a scene whose answer is known: 'cup' has threshold
0 (its mask is the whole frame: one object), the depth image is a plane tilted about the camera's
y axis (z = 2 m + 0.5 X), so its normal, its extent and every pixel's point are known."""

import itertools
import math

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
vision_msgs = pytest.importorskip(
    "vision_msgs.msg", reason="vision_msgs is not installed and ../shared/vendor/vision_msgs was absent at setup "
    "(the node then runs without ~/detections, ~/detections_3d and ~/label_info)")

from clipseg_ros_interfaces.msg import Segmentation  # noqa: E402
from conftest import quaternion_matrix  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import RgbdCamera, assert_clean_exit, make_image, start_answering_node, wait_for  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from vision_msgs.msg import Detection2DArray, Detection3DArray, LabelInfo  # noqa: E402

from clipseg_ros.ros.conversions import cv2_to_imgmsg, imgmsg_to_numpy  # noqa: E402
from clipseg_ros.ros.spatial_messages import cloud_points  # noqa: E402

NODE = "clipseg_consumers"
H, W, FX, FY = 48, 64, 80.0, 60.0
CX, CY = (W - 1) / 2, (H - 1) / 2
SLOPE = 0.5  # z = Z0 + SLOPE * X
Z0 = 2.0
COLOUR, DEPTH, INFO = "/cons/color/image_raw", "/cons/depth/image_raw", "/cons/depth/camera_info"
COLOUR_INFO = "/cons/color/camera_info"
SEQUENCE = itertools.count()
LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def plane_depth_mm() -> np.ndarray:
    xn = (np.arange(W) - CX) / FX
    z = Z0 / (1.0 - SLOPE * xn)  # the ray (xn z, yn z, z) meets z = Z0 + SLOPE * X
    return np.tile(np.round(z * 1000), (H, 1)).astype(np.uint16)


@pytest.fixture(scope="module")
def node(tiny_checkpoint, tmp_path_factory, client):
    proc = start_answering_node(client, NODE, {
        "model": str(tiny_checkpoint), "prompts": ["cup", "door handle"], "rate": 0.0,
        "image_topics": [COLOUR], "depth_topics": [DEPTH], "prompt_thresholds": ["cup=0", "door handle=1"],
        "min_object_area": 0.0, "publish_instances": True, "publish_objects_cloud": True, "cloud_stride": 1,
        "publish_aligned_cloud": True, "target_prompt": "cup", "tracking": True}, tmp_path_factory.mktemp("logs"))
    yield proc
    assert_clean_exit(proc, proc.stop())


def Camera(client) -> RgbdCamera:
    """The tilted plane's depth with every frame."""
    return RgbdCamera(client, (COLOUR, DEPTH, INFO, COLOUR_INFO), (H, W), (FX, FY), "cons_depth_optical_frame",
                      SEQUENCE, 3000, default_depth_mm=plane_depth_mm())


def by_stamp(messages, stamp):
    return next((m for m in messages if m.header.stamp == stamp), None)


def test_every_consumer_topic_holds_the_known_scene(node, client):
    camera = Camera(client)
    topics = {name: client.collect(kind, f"/{NODE}/{name}") for name, kind in (
        ("segmentation", Segmentation), ("label", Image), ("confidence", Image), ("instances", Image),
        ("target_mask", Image), ("detections", Detection2DArray), ("detections_3d", Detection3DArray),
        ("objects_cloud", PointCloud2), ("aligned_cloud", PointCloud2))}

    def one_frame_everywhere():
        camera.publish()
        segs = [s for s in topics["segmentation"] if s.objects and s.objects[0].has_position]
        for seg in reversed(segs):
            found = {name: by_stamp(msgs, seg.header.stamp) for name, msgs in topics.items() if name != "segmentation"}
            if all(found.values()):
                return seg, found
        return None
    seg, got = wait_for(one_frame_everywhere, 60, 0.05, "one frame on every consumer topic")
    label = imgmsg_to_numpy(got["label"])
    masks = np.stack([imgmsg_to_numpy(m) for m in seg.masks])
    cup = seg.objects[0]
    assert cup.prompt == "cup" and cup.track_id > 0
    ident = str(cup.track_id)

    (det,) = [d for d in got["detections"].detections if d.results[0].hypothesis.class_id == "cup"]
    assert det.id == ident and det.results[0].hypothesis.score == pytest.approx(cup.max_score)
    assert (det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.size_x, det.bbox.size_y) == (
        W / 2, H / 2, W, H)
    assert got["detections"].header.stamp == seg.header.stamp

    instances = imgmsg_to_numpy(got["instances"])
    assert got["instances"].encoding == "mono16" and instances.shape == (H, W)
    assert np.array_equal(instances == cup.track_id, label == 1) and set(np.unique(instances)) <= {0, cup.track_id}
    confidence = imgmsg_to_numpy(got["confidence"])
    expected = np.where(label > 0, np.take_along_axis(masks, np.maximum(label.astype(int) - 1, 0)[None], 0)[0], 0)
    assert np.array_equal(confidence, expected)
    target = imgmsg_to_numpy(got["target_mask"])
    assert got["target_mask"].encoding == "mono8" and np.array_equal(target, (label == 1) * 255)

    # the plane z = Z0 + SLOPE X: normal (SLOPE, 0, -1) / |.| towards the camera
    (det3,) = [d for d in got["detections_3d"].detections if d.results[0].hypothesis.class_id == "cup"]
    assert det3.id == ident and det3.header.frame_id == "cons_depth_optical_frame"
    axes = quaternion_matrix(det3.bbox.center.orientation)
    normal = np.array([SLOPE, 0.0, -1.0]) / math.hypot(SLOPE, 1.0)
    assert math.degrees(math.acos(min(1.0, float(axes[:, 2] @ normal)))) < 2.0
    assert det3.bbox.size.z < 0.01  # a plane: no depth behind its face
    pose = det3.results[0].pose
    assert (pose.pose.position.x, pose.pose.position.y, pose.pose.position.z) == pytest.approx(
        (cup.position.x, cup.position.y, cup.position.z))
    covariance = np.array(pose.covariance).reshape(6, 6)
    assert covariance[0, 0] > 0 and np.allclose(covariance, covariance.T)

    aligned = got["aligned_cloud"]
    assert (aligned.height, aligned.width) == (H, W) and not aligned.is_dense
    assert aligned.header.stamp == got["label"].header.stamp == got["confidence"].header.stamp  # exact sync
    assert aligned.header.frame_id == "cons_depth_optical_frame"
    points = cloud_points(aligned).reshape(H, W)
    assert np.allclose(points["z"], plane_depth_mm() / 1000.0)
    assert np.allclose(points["x"], (np.arange(W) - CX) / FX * points["z"])

    objects = cloud_points(got["objects_cloud"])
    assert [f.name for f in got["objects_cloud"].fields] == ["x", "y", "z", "score", "label", "instance"]
    assert set(objects["instance"]) == {cup.track_id} and set(objects["label"]) == {1}
    assert len(objects) == int((label == 1).sum())  # stride 1: every cup pixel is on the plane
    assert np.allclose(objects["z"], Z0 + SLOPE * objects["x"], atol=0.003)


def test_label_info_is_latched_and_follows_the_prompts(node, client):
    camera = Camera(client)
    late = client.collect(LabelInfo, f"/{NODE}/label_info", LATCHED)  # joins after the node published it
    wait_for(lambda: late, 20, what="the latched label info")
    assert [(c.class_id, c.class_name) for c in late[-1].class_map] == [(1, "cup"), (2, "door handle")]
    assert late[-1].threshold == pytest.approx(0.4)
    prompts = client.node.create_publisher(String, f"/{NODE}/prompts", 10)
    segs = client.collect(Segmentation, f"/{NODE}/segmentation")

    def changed():
        prompts.publish(String(data="cup;plate"))
        camera.publish()
        return late and [c.class_name for c in late[-1].class_map] == ["cup", "plate"] and any(
            s.prompts == ["cup", "plate"] for s in segs)
    wait_for(changed, 30, 0.1, "label info for the new prompts")
    later = client.collect(LabelInfo, f"/{NODE}/label_info", LATCHED)
    wait_for(lambda: later, 20, what="the latched label info, for a second late subscriber")
    assert [(c.class_id, c.class_name) for c in later[-1].class_map] == [(1, "cup"), (2, "plate")]
    prompts.publish(String(data="cup;door handle"))


def test_an_inactive_target_prompt_gives_an_empty_mask_and_one_warning(node, client):
    camera = Camera(client)
    masks = client.collect(Image, f"/{NODE}/target_mask")
    assert client.set_params(NODE, target_prompt="mug")[0].successful
    segs = client.collect(Segmentation, f"/{NODE}/segmentation")

    def empty_one():
        camera.publish()
        return len(segs) >= 3 and any(not imgmsg_to_numpy(m).any() and m.header.stamp == segs[-1].header.stamp
                                      for m in masks)
    wait_for(empty_one, 30, 0.05, "an empty target mask")
    assert node.log().count("target_prompt 'mug' is not an active prompt") == 1
    assert client.set_params(NODE, target_prompt="cup")[0].successful


def test_without_vision_msgs_the_node_says_so_once_and_publishes_the_rest(tiny_checkpoint, tmp_path, client):
    # a vision_msgs package that cannot be imported, first on the path: a robot without it
    blocker = tmp_path / "blocker" / "vision_msgs"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('vision_msgs is blocked for this test')\n")
    import os

    name = "clipseg_no_vision"
    path = os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])
    proc = start_answering_node(client, name, {"model": str(tiny_checkpoint), "prompts": ["cup"], "rate": 0.0,
                                               "image_topics": ["/novision/image"], "publish_instances": True},
                                tmp_path, env={"PYTHONPATH": path})
    try:
        from diagnostic_msgs.msg import DiagnosticArray

        labels = client.collect(Image, f"/{name}/instances")
        diagnostics = client.collect(DiagnosticArray, "/diagnostics")
        camera = client.node.create_publisher(Image, "/novision/image", 10)

        def flowing():
            camera.publish(cv2_to_imgmsg(make_image(H, W, 1), "rgb8"))
            return labels
        wait_for(flowing, 30, 0.05, "instances without vision_msgs")

        def said():
            return next((v.value for a in diagnostics for s in a.status if s.name.startswith(name)
                         for v in s.values if v.key == "vision_msgs"), None)
        reason = wait_for(said, 20, what="the diagnostics' vision_msgs entry")
        assert "vision_msgs is blocked for this test" in reason
        assert proc.log().count("~/detections, ~/detections_3d and ~/label_info are not published") == 1
        topics = {t for t, _ in client.node.get_topic_names_and_types()}
        assert f"/{name}/detections" not in topics and f"/{name}/label_info" not in topics
    finally:
        assert_clean_exit(proc, proc.stop())


def test_without_depth_the_2d_detections_go_out_and_the_3d_ones_do_not():
    from std_msgs.msg import Header

    from clipseg_ros.core.results.postprocess import SegmentationResult, label_from_masks, mask_stats
    from clipseg_ros.core.results.scene import SceneOptions, build_scene
    from clipseg_ros.ros.messages import OutputOptions, build_outputs

    masks = np.zeros((1, H, W), np.uint8)
    masks[0, 5:15, 5:25] = 230
    label = label_from_masks(masks, 0.5)
    result = SegmentationResult(prompts=["cup"], masks=masks, label=label, threshold=0.5, image_size=(H, W),
                                stats=mask_stats(masks, ["cup"], [0.9], (H, W), 0.5))
    scene = build_scene(result, None, SceneOptions(min_object_area=1))
    options = OutputOptions(detections=True, confidence=True, instances=True, target_prompt="cup",
                            objects_cloud=True, aligned_cloud=True)
    out = build_outputs(result, np.zeros((H, W, 3), np.uint8), Header(frame_id="cam"), options, scene)
    (det,) = out.detections.detections
    assert det.id == "1" and (det.bbox.size_x, det.bbox.size_y) == (20, 10)
    assert out.detections_3d is None and out.objects_cloud is None and out.aligned_cloud is None
    assert out.instances is not None and out.target_mask is not None and out.confidence is not None


def test_an_axis_aligned_box_says_its_orientation_is_unknown():
    from clipseg_ros.ros.vision_messages import ORIENTED_ANGLE_VARIANCE, UNKNOWN_ANGLE_VARIANCE, pose_covariance

    spread = np.diag([0.01, 0.02, 0.03])
    unknown = np.array(pose_covariance(spread, oriented=False)).reshape(6, 6)
    known = np.array(pose_covariance(spread, oriented=True)).reshape(6, 6)
    assert np.array_equal(unknown[:3, :3], spread) and np.allclose(np.diag(unknown)[3:], UNKNOWN_ANGLE_VARIANCE)
    assert np.allclose(np.diag(known)[3:], ORIENTED_ANGLE_VARIANCE) and ORIENTED_ANGLE_VARIANCE < 0.01
