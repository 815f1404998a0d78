"""3D outputs over real DDS: colour + aligned depth + CameraInfo in; objects with positions,
per-prompt PointStamped, clouds and markers out; bad depth input leaves the 2D outputs alone.

The tiny random model's masks mean nothing, so the scene is made so the answer does not depend
on them: prompt 'cup' has threshold 0 (its one object is the whole image) and the depth is a
plane at 2.000 m facing the camera, principal point at the image centre. Its position is then
(0, 0, 2) exactly, its extent (W z / fx, H z / fy, 0) (every pixel's footprint). 'door handle' has threshold 1
(objects only where the random model saturates).
"""

import itertools
import math

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from clipseg_ros_interfaces.msg import Segmentation  # noqa: E402
from conftest import quaternion_matrix  # noqa: E402
from geometry_msgs.msg import PointStamped  # noqa: E402
from ros_helpers import RgbdCamera, assert_clean_exit, start_answering_node, wait_for  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from clipseg_ros.ros.conversions import cv2_to_imgmsg  # noqa: E402
from clipseg_ros.ros.spatial_messages import cloud_points  # noqa: E402

NODE = "clipseg_3d"
SEQUENCE = itertools.count()  # stamps never repeat across tests: the node keeps recent depth images
H, W, FX, FY = 48, 64, 80.0, 60.0
COLOUR, DEPTH, INFO = "/rgbd/color/image_raw", "/rgbd/aligned_depth_to_color/image_raw", \
    "/rgbd/aligned_depth_to_color/camera_info"
COLOUR_INFO = "/rgbd/color/camera_info"


@pytest.fixture(scope="module")
def node(tiny_checkpoint, tmp_path_factory, client):
    proc = start_answering_node(client, NODE, {"model": str(tiny_checkpoint), "prompts": ["cup", "door handle"],
                                               "rate": 0.0, "image_topics": [COLOUR], "depth_topics": [DEPTH],
                                               "prompt_thresholds": ["cup=0", "door handle=1"],
                                               "publish_cloud": True, "cloud_stride": 4,
                                               "obstacle_prompts": ["cup"], "min_object_area": 0.0,
                                               # one object across a depth edge is what some tests here are
                                               # about; splitting by depth: test_refinement_node.py
                                               "object_depth_step": 0.0},
                                tmp_path_factory.mktemp("logs"))
    yield proc
    assert_clean_exit(proc, proc.stop())


def rgbd_camera(client) -> RgbdCamera:
    return RgbdCamera(client, (COLOUR, DEPTH, INFO, COLOUR_INFO), (H, W), (FX, FY), "rgbd_depth_optical_frame",
                      SEQUENCE, 2000)


def test_objects_positions_clouds_and_markers(node, client):
    camera = rgbd_camera(client)
    segs = client.collect(Segmentation, f"/{NODE}/segmentation")
    markers = client.collect(MarkerArray, f"/{NODE}/markers")
    points = client.collect(PointStamped, f"/{NODE}/position/cup")
    clouds = client.collect(PointCloud2, f"/{NODE}/cloud")
    obstacles = client.collect(PointCloud2, f"/{NODE}/obstacle_cloud")

    def complete():
        camera.publish()
        return segs and segs[-1].objects and segs[-1].objects[0].has_position and markers and points and clouds \
            and obstacles
    wait_for(complete, 60, 0.05, "3D outputs")
    seg = segs[-1]
    (cup,) = [o for o in seg.objects if o.prompt == "cup"]  # threshold 0: the whole image is one object
    assert all(o.prompt_index == 1 for o in seg.objects[1:])
    assert cup.prompt == "cup" and cup.prompt_index == 0 and cup.area == H * W
    assert (cup.bbox.x_offset, cup.bbox.y_offset, cup.bbox.width, cup.bbox.height) == (0, 0, W, H)
    assert (cup.position.x, cup.position.y, cup.position.z) == pytest.approx((0.0, 0.0, 2.0), abs=1e-6)
    # the box covers every pixel's footprint: W x z / fx wide, centred on the image
    assert (cup.extent.x, cup.extent.y, cup.extent.z) == pytest.approx((W * 2 / FX, H * 2 / FY, 0), abs=1e-6)
    assert (cup.box_center.x, cup.box_center.y, cup.box_center.z) == pytest.approx((0.0, 0.0, 2.0), abs=1e-6)
    assert cup.valid_depth_fraction == 1.0
    assert seg.depth_header.frame_id == "rgbd_depth_optical_frame" and seg.depth_header.stamp.sec >= 2000
    point = points[-1]
    assert point.header.frame_id == "rgbd_depth_optical_frame" and point.point.z == pytest.approx(2.0)
    cloud = cloud_points(clouds[-1])
    # every pixel is labelled (cup passes everywhere); 'door handle' wins only where it saturates
    assert len(cloud) == (H // 4) * (W // 4) and np.allclose(cloud["z"], 2.0) and set(cloud["label"]) <= {1, 2}
    stamp = clouds[-1].header.stamp
    obstacle = wait_for(lambda: next((o for o in obstacles if o.header.stamp == stamp), None), 10,
                        what="the same frame's obstacle cloud")
    assert obstacle.point_step == 12 and obstacle.width == int((cloud["label"] == 1).sum())  # x, y, z of the cups
    cubes = [m for m in markers[-1].markers if m.type == Marker.CUBE and m.ns == "cup"]
    assert markers[-1].markers[0].action == Marker.DELETEALL and len(cubes) == 1
    # the marker is the oriented box: the plane's normal towards the camera, its size spanned by the
    # pixel centres ((W - 1) x 2 m / fx wide), no depth seen (a plane)
    assert (cubes[0].pose.position.z, cubes[0].scale.x) == pytest.approx((2.0, (W - 1) * 2 / FX))
    axes = quaternion_matrix(cup.box_pose.orientation)
    assert cup.box_oriented and np.allclose(axes[:, 2], (0, 0, -1), atol=1e-6)
    assert abs(axes[0, 0]) == pytest.approx(1.0, abs=1e-6)  # x along the image's width (the longer side)
    assert (cup.box_size.x, cup.box_size.y, cup.box_size.z) == pytest.approx(((W - 1) * 2 / FX, (H - 1) * 2 / FY, 0),
                                                                             abs=1e-5)
    assert (cup.box_pose.position.x, cup.box_pose.position.y, cup.box_pose.position.z) == pytest.approx(
        (0.0, 0.0, 2.0), abs=1e-5)


@pytest.mark.parametrize("publish, reason", [
    (dict(depth_offset_s=0.5), "out of sync"),  # half-way between two colour frames: pairs with none
    (dict(depth_mm=np.full((H, W, 3), 7, np.uint8), encoding="rgb8"), "is not 16UC1"),
    (dict(depth_mm=np.zeros((H, W), np.uint16)), "no valid pixel"),
    (dict(depth_mm=np.full((H, W // 2), 2000, np.uint16)), "is for 64x48 but the depth image is 32x48"),
])
def test_bad_depth_gives_a_warning_and_2d_outputs_still_go_out(node, client, publish, reason):
    camera = rgbd_camera(client)
    segs = client.collect(Segmentation, f"/{NODE}/segmentation")
    camera.publish()  # a good pair first (CameraInfo known from here on)
    out = camera.publish_until(segs, 2, **publish)[-1]
    assert len(out.masks) == 2  # 2D outputs as always
    assert not out.objects[0].has_position and math.isnan(out.objects[0].position.z)
    if reason != "no valid pixel":
        assert out.depth_header.frame_id == ""
    wait_for(lambda: reason in node.log(), 10, what=f"a warning containing {reason!r}")


def test_zero_focal_length_in_camera_info_is_refused(node, client):
    camera = rgbd_camera(client)
    segs = client.collect(Segmentation, f"/{NODE}/segmentation")
    camera.publish_until(segs, 2, fx=0.0)
    wait_for(lambda: "focal lengths fx=0" in node.log(), 10, what="the focal length warning")
    camera.publish()  # and a good CameraInfo brings 3D back
    wait_for(lambda: (camera.publish(), segs[-1].objects[0].has_position)[1], 30, 0.05, "3D back")


def test_depth_without_camera_info_and_pairing(client):
    from rclpy.qos import qos_profile_sensor_data

    from clipseg_ros.core.results.geometry import DepthError
    from clipseg_ros.ros.depth_inputs import DepthInput, camera_info_topic

    assert camera_info_topic("/cam/aligned_depth_to_color/image_raw") == "/cam/aligned_depth_to_color/camera_info"
    depth = DepthInput(client.node, "/lonely/depth", "/lonely/camera_info", qos_profile_sensor_data,
                       "/lonely/camera_info")  # the depth image is the colour image's own view
    try:
        with pytest.raises(DepthError, match="no depth image on /lonely/depth yet"):
            depth.depth_frame(Image().header.stamp, 0.05, (H, W))
        msg = cv2_to_imgmsg(np.full((H, W), 1000, np.uint16), "16UC1")
        msg.header.stamp.sec = 7
        depth._on_depth(msg)  # what the subscription calls on arrival
        with pytest.raises(DepthError, match="no CameraInfo on /lonely/camera_info yet"):
            depth.depth_frame(msg.header.stamp, 0.05, (H, W))
        depth._on_info(CameraInfo(width=W, height=H, k=[FX, 0.0, 1.0, 0.0, FY, 1.0, 0.0, 0.0, 1.0]))
        frame = depth.depth_frame(msg.header.stamp, 0.0, (H, W))
        assert frame.stamp == (7, 0) and np.all(frame.metres == 1.0)
        with pytest.raises(DepthError, match="is for 64x48 but the colour image is 64x64"):
            depth.depth_frame(msg.header.stamp, 0.0, (64, 64))
        depth.colour_info_topic = "/lonely/color/camera_info"
        depth._on_colour_info(CameraInfo(width=2 * W, height=2 * H, k=[2 * FX, 0.0, 2.5, 0.0, 2 * FY, 2.5, 0.0,
                                                                       0.0, 1.0]))
        assert depth.depth_frame(msg.header.stamp, 0.0, (2 * H, 2 * W)).camera.fx == FX  # half the colour size
        depth._on_colour_info(CameraInfo(width=2 * W, height=2 * H, k=[1.5 * FX, 0.0, 2.5, 0.0, 2 * FY, 2.5, 0.0,
                                                                       0.0, 1.0]))
        with pytest.raises(DepthError, match="is not the 128x96 colour image's view"):
            depth.depth_frame(msg.header.stamp, 0.0, (2 * H, 2 * W))
    finally:
        depth.destroy(client.node)


def test_a_depth_edge_through_the_object_keeps_the_frame_and_its_cloud_keeps_one_surface(node, client):
    """Issue 18, points 1 and 5, black-box: 'cup' is the whole image (threshold 0); its left half
    is at 1.000 m and its right half at 2.500 m. The median fell in the gap and the frame was
    dropped whole; every labelled pixel went into the clouds."""
    camera = rgbd_camera(client)
    segs = client.collect(Segmentation, f"/{NODE}/segmentation")
    clouds = client.collect(PointCloud2, f"/{NODE}/obstacle_cloud")
    depth = np.full((H, W), 2500, np.uint16)
    depth[:, :W // 2] = 1000

    # one of these frames, whose depth image had arrived when it was processed (rate 0: at once)
    out = camera.publish_until(segs, 1, accept=lambda m: m.depth_header.frame_id and m.objects[0].has_position,
                               depth_mm=depth)[-1]
    (cup,) = [o for o in out.objects if o.prompt == "cup"]
    assert cup.has_position and cup.position.z == pytest.approx(1.0)  # a tie: the nearer surface
    assert cup.extent.z == 0.0 and cup.extent.x == pytest.approx((W // 2) * 1.0 / FX, abs=1e-6)
    cloud = wait_for(lambda: next((c for c in clouds if c.header.stamp == out.depth_header.stamp), None), 10,
                     what="the frame's obstacle cloud")
    points = cloud_points(cloud)
    assert len(points) > 0 and np.allclose(points["z"], 1.0)  # none at the background's range


def test_lost_objects_and_frames_without_depth_leave_nothing_stale(node, client):
    """Issue 18, point 8: markers have a lifetime, a frame without usable depth clears them, and
    a prompt without a 3D object gets a NaN position instead of keeping the last one."""
    camera = rgbd_camera(client)
    markers = client.collect(MarkerArray, f"/{NODE}/markers")
    cups = client.collect(PointStamped, f"/{NODE}/position/cup")
    camera.publish_until(cups, 1)
    cube = wait_for(lambda: next((m for a in markers for m in a.markers if m.type == Marker.CUBE), None), 10,
                    what="a box marker")
    assert (cube.lifetime.sec, cube.lifetime.nanosec) == (3, 0)  # rate 0: 3 s
    markers.clear()
    cups.clear()

    def cleared():  # depth out of sync: no 3D for these frames
        camera.publish(depth_offset_s=0.5)
        return cups and math.isnan(cups[-1].point.z) and markers and \
            [m.action for m in markers[-1].markers] == [Marker.DELETEALL]
    wait_for(cleared, 30, 0.05, "a NaN position and a marker array that only clears")


def test_every_prompt_has_its_own_position_topic_and_gone_prompts_lose_theirs(node, client):
    """Issue 18, point 9: 'Cup' and 'cup', 'door handle' and 'door-handle', a CJK prompt and an
    emoji shared topics; a publisher stayed for every prompt ever placed."""
    from clipseg_ros.ros.spatial_messages import topic_slug

    prompts = ["cup", "Cup", "door handle", "door-handle", "杯子", "🍵", "café", "caf"]
    slugs = [topic_slug(p) for p in prompts]
    assert len(set(slugs)) == len(prompts)
    camera = rgbd_camera(client)
    segs = client.collect(Segmentation, f"/{NODE}/segmentation")
    try:
        assert all(r.successful for r in client.set_params(NODE, prompts=prompts))

        def all_topics():
            camera.publish()
            return all(client.node.count_publishers(f"/{NODE}/position/{s}") == 1 for s in slugs)
        wait_for(all_topics, 30, 0.05, "one position topic per prompt")
    finally:
        assert all(r.successful for r in client.set_params(NODE, prompts=["cup", "door handle"]))

    def gone():
        camera.publish()
        return all(client.node.count_publishers(f"/{NODE}/position/{s}") == 0 for s in slugs
                   if s not in ("cup", "door_handle"))
    wait_for(gone, 30, 0.05, "the publishers of the removed prompts destroyed")
    camera.publish_until(segs, 1)
