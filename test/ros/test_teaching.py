"""Teaching prompts over real DDS: ~/teach from a camera's newest frame, ~/teach_region polygons,
regions in ~/set_prompts, per-prompt thresholds, and the prompt store across restarts."""

import json

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from clipseg_ros_interfaces.msg import Segmentation  # noqa: E402
from clipseg_ros_interfaces.srv import SetPrompts, SetThresholds, Teach  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import Point32, PolygonStamped  # noqa: E402
from ros_helpers import CameraPublisher, NodeProcess, assert_clean_exit, make_image, start_answering_node, wait_for  # noqa: E402
from sensor_msgs.msg import RegionOfInterest  # noqa: E402

from clipseg_ros.core.model.engine import SegmentationEngine  # noqa: E402
from clipseg_ros.core.prompts.visual_prompts import Box, make_example  # noqa: E402
from clipseg_ros.core.results.refinement import RefineOptions, refine_result  # noqa: E402
from clipseg_ros.ros.conversions import cv2_to_imgmsg, imgmsg_to_cv2  # noqa: E402

NODE = "clipseg_teach"
FRONT, SIDE = "/teach_front/image_raw", "/teach_side/image_raw"
H, W = 48, 64
FRAME = make_image(H, W, 77)  # every frame the front camera sends in this module


def params(checkpoint, store, prompts=("cup", "door handle")):
    return {"model": str(checkpoint), "prompts": list(prompts), "rate": 0.0, "image_topics": [FRONT, SIDE],
            "prompt_store": str(store)}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("prompt_store")


@pytest.fixture(scope="module")
def node(tiny_checkpoint, tmp_path_factory, store_dir, client):
    proc = start_answering_node(client, NODE, params(tiny_checkpoint, store_dir), tmp_path_factory.mktemp("logs"))
    yield proc
    if proc.proc.poll() is None:
        assert_clean_exit(proc, proc.stop())


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return SegmentationEngine.from_pretrained(str(tiny_checkpoint), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def front(client):
    return CameraPublisher(client, FRONT, h=H, w=W)


def newest_segmentation(client, front, count=2):
    """Send FRAME until ``count`` results came back; the last one."""
    segs = client.collect(Segmentation, f"/{NODE}/teach_front/segmentation")
    for _ in range(count):
        wait_for(lambda: (front.publish(FRAME), len(segs))[1] > 0, 30, 0.05, "a segmentation")
        segs.clear()
        wait_for(lambda: (front.publish(FRAME), len(segs))[1] > 0, 30, 0.05, "a segmentation")
    return segs[-1]


def teach(client, **fields):
    srv = client.node.create_client(Teach, f"/{NODE}/teach")
    try:
        return client.call(srv, Teach.Request(**fields), timeout=60)
    finally:
        client.node.destroy_client(srv)


def roi(x, y, w, h):
    return RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h)


def test_teach_from_the_newest_frame_of_a_camera(node, client, front, engine):
    newest_segmentation(client, front, count=1)  # the node has seen FRAME
    reply = teach(client, camera="teach_front", name="my thing", box=roi(10, 8, 30, 20))
    assert reply.success, reply.message
    assert list(reply.active_prompts) == ["cup", "door handle", "my thing"]
    expected = make_example(FRAME, box=Box(10, 8, 30, 20))  # crop_darken_blur, the default
    assert reply.prompt_image.header.frame_id == "my thing"
    assert np.array_equal(imgmsg_to_cv2(reply.prompt_image), expected.prompt_image)
    # the published mask is the engine's mask for that prompt image (same tiny weights here)
    seg = newest_segmentation(client, front)
    assert list(seg.prompts) == ["cup", "door handle", "my thing"]
    local = refine_result(engine.segment(FRAME, engine.make_prompt_set(images={"my thing": expected.prompt_image})),
                          FRAME, None, RefineOptions())  # refined with the frame, as the node does by default
    published = imgmsg_to_cv2(seg.masks[2]).astype(int)
    assert np.abs(published - local.masks[0].astype(int)).max() <= 1
    # a mask (any size-matching mono8) and a text mix, by topic name of the camera
    mask = np.zeros((H, W), np.uint8)
    mask[5:30, 20:50] = 255
    reply = teach(client, camera=FRONT, name="my thing", mask=cv2_to_imgmsg(mask, "mono8"), text="thing",
                  style="crop")
    assert reply.success, reply.message
    assert np.array_equal(imgmsg_to_cv2(reply.prompt_image), make_example(FRAME, mask=mask, style="crop").prompt_image)
    assert list(reply.active_prompts) == ["cup", "door handle", "my thing"]  # replaced, not added twice


def test_teach_uses_the_frame_the_stamp_names(node, client, front):
    """Issue 19, point 7: the region's frame (its header.stamp) was ignored: whatever frame came
    last was taught from."""
    drawn_on = front.publish(FRAME)
    later = np.ascontiguousarray(FRAME[::-1, ::-1])
    segs = client.collect(Segmentation, f"/{NODE}/teach_front/segmentation")
    wait_for(lambda: (front.publish(later), len(segs))[1] >= 2, 30, 0.05, "frames after the drawn-on one")
    reply = teach(client, camera="teach_front", name="drawn", box=roi(10, 8, 30, 20), stamp=drawn_on.header.stamp)
    assert reply.success, reply.message
    assert np.array_equal(imgmsg_to_cv2(reply.prompt_image), make_example(FRAME, box=Box(10, 8, 30, 20)).prompt_image)
    newest = teach(client, camera="teach_front", name="drawn", box=roi(10, 8, 30, 20))  # zero stamp: the newest
    assert np.array_equal(imgmsg_to_cv2(newest.prompt_image), make_example(later, box=Box(10, 8, 30, 20)).prompt_image)
    gone = drawn_on.header.stamp
    gone.sec -= 1000
    refused = teach(client, camera="teach_front", name="drawn", box=roi(10, 8, 30, 20), stamp=gone)
    assert not refused.success and "has no frame stamped" in refused.message, refused.message


@pytest.mark.parametrize("fields, reason", [
    (dict(camera="teach_front", name="x", box=roi(50, 40, 30, 20)), "not inside the 64x48 image"),
    (dict(camera="teach_front", name="x", box=roi(5, 5, 0, 10)), "no region"),
    (dict(camera="teach_front", name="x", mask=cv2_to_imgmsg(np.full((10, 10), 255, np.uint8), "mono8")),
     "mask is 10x10 but the image is 64x48"),
    (dict(camera="teach_front", name="x", mask=cv2_to_imgmsg(np.zeros((H, W), np.uint8), "mono8")), "has no pixel"),
    (dict(camera="teach_back", name="x", box=roi(1, 1, 5, 5)), "unknown camera 'teach_back'"),
    (dict(camera="teach_side", name="x", box=roi(1, 1, 5, 5)), "no frame from camera 'teach_side'"),
    (dict(camera="", name="x", box=roi(1, 1, 5, 5)), "2 cameras: name one of"),
    (dict(camera="teach_front", name="cup", box=roi(1, 1, 5, 5)), "both a text prompt and an image prompt"),
    (dict(camera="teach_front", name=" ", box=roi(1, 1, 5, 5)), "has no name"),
    (dict(camera="teach_front", name="x", box=roi(1, 1, 5, 5), style="outline"), "unknown visual prompt style"),
    (dict(camera="teach_front", name="x", box=roi(1, 1, 5, 5), text="x", text_weight=2.0), "text_weight"),
    # issue 19, point 9: a weight without a text was silently ignored
    (dict(camera="teach_front", name="x", box=roi(1, 1, 5, 5), text_weight=0.3), "without a text to mix in"),
])
def test_bad_teach_requests_are_refused_with_a_reason_and_change_nothing(node, client, front, fields, reason):
    newest_segmentation(client, front, count=1)
    before = teach(client, camera="nowhere", name="probe")  # a refused call reports what is active
    reply = teach(client, **fields)
    assert not reply.success and reason in reply.message, reply.message
    assert list(reply.active_prompts) == list(before.active_prompts)
    assert reply.prompt_image.width == 0


def test_teach_region_polygon_from_a_drawing_tool(node, client, front):
    newest_segmentation(client, front, count=1)
    pub = client.node.create_publisher(PolygonStamped, f"/{NODE}/teach_region", 10)
    try:
        assert client.set_params(NODE, teach_name="drawn")[0].successful
        poly = PolygonStamped()
        poly.header.frame_id = "teach_front"  # the camera, by name
        poly.polygon.points = [Point32(x=4.0, y=4.0), Point32(x=30.0, y=6.0), Point32(x=20.0, y=40.0)]

        def taught():
            pub.publish(poly)
            seg = newest_segmentation(client, front, count=1)
            return "drawn" in seg.prompts

        wait_for(taught, 60, 0.2, "the drawn prompt to become active")
    finally:
        client.node.destroy_publisher(pub)


def test_set_prompts_with_regions_returns_the_engineered_images(node, client):
    srv = client.node.create_client(SetPrompts, f"/{NODE}/set_prompts")
    example = make_image(40, 50, 5)
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 10:40] = 200
    req = SetPrompts.Request(prompts=["cup", "door handle"],
                             image_prompts=[cv2_to_imgmsg(example, "rgb8"), cv2_to_imgmsg(example, "rgb8")],
                             image_prompt_names=["boxed", "as sent"],
                             image_prompt_boxes=[roi(5, 5, 20, 20), roi(0, 0, 0, 0)],
                             image_prompt_masks=[cv2_to_imgmsg(mask, "mono8"), cv2_to_imgmsg(np.zeros((0, 0), np.uint8), "mono8")],
                             visual_prompt_style="crop_darken")
    reply = client.call(srv, req, timeout=60)
    assert reply.success, reply.message
    boxed = make_example(example, box=Box(5, 5, 20, 20), mask=mask, style="crop_darken").prompt_image
    assert np.array_equal(imgmsg_to_cv2(reply.prompt_images[0]), boxed)
    assert np.array_equal(imgmsg_to_cv2(reply.prompt_images[1]), example)
    bad = SetPrompts.Request(prompts=["cup"], image_prompts=[cv2_to_imgmsg(example, "rgb8")] * 2,
                             image_prompt_names=["a", "b"], image_prompt_boxes=[roi(1, 1, 5, 5)])
    refused = client.call(srv, bad, timeout=60)
    assert not refused.success and "1 image_prompt_boxes for 2 image_prompts" in refused.message
    assert list(refused.active_prompts) == list(reply.active_prompts)
    client.node.destroy_client(srv)


def test_per_prompt_thresholds_by_service_and_parameter(node, client, front):
    srv = client.node.create_client(SetThresholds, f"/{NODE}/set_thresholds")
    reply = client.call(srv, SetThresholds.Request(prompts=["cup"], thresholds=[0.0]))
    assert reply.success and list(reply.thresholds) == ["cup=0"]
    assert client.get_param(NODE, "prompt_thresholds") == ["cup=0"]
    seg = newest_segmentation(client, front)
    cup = seg.confidences[0]
    assert cup.prompt == "cup" and cup.threshold == 0.0 and cup.area_fraction == 1.0 and cup.detected
    assert abs(seg.confidences[1].threshold - seg.threshold) < 1e-7  # the others keep the default
    for prompts, values, reason in [(["cup"], [1.5], "must be in [0, 1]"), (["cup", "x"], [0.1], "one threshold per"),
                                    ([""], [0.1], "empty")]:
        refused = client.call(srv, SetThresholds.Request(prompts=prompts, thresholds=values))
        assert not refused.success and reason in refused.message, refused.message
        assert list(refused.thresholds) == ["cup=0"]
    results = client.set_params(NODE, prompt_thresholds=["cup=0.3", "door handle=0.2"])
    assert results[0].successful
    assert [c.threshold for c in newest_segmentation(client, front).confidences[:2]] == pytest.approx([0.3, 0.2])
    results = client.set_params(NODE, prompt_thresholds=["cup=high"])
    assert not results[0].successful and "not a number" in results[0].reason
    back = client.call(srv, SetThresholds.Request(prompts=["door handle"], thresholds=[float("nan")]))
    assert back.success and list(back.thresholds) == ["cup=0.3"]
    assert client.get_param(NODE, "prompt_thresholds") == ["cup=0.3"]
    client.node.destroy_client(srv)


def store_files(directory):
    """What the store holds (kept/ is each open process's working copy of its examples)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).parts[0] != "kept"}


def test_prompts_survive_a_restart_byte_for_byte(node, client, front, store_dir, tiny_checkpoint, tmp_path):
    # what the tests above left active
    reply = teach(client, camera="teach_front", name="my thing", box=roi(10, 8, 30, 20), text="thing",
                  text_weight=0.4)
    assert reply.success, reply.message
    before_seg = newest_segmentation(client, front)
    active = list(before_seg.prompts)
    saved = store_files(store_dir)
    doc = json.loads(saved["prompts.json"])
    assert doc["texts"] == ["cup", "door handle"] and doc["thresholds"] == {"cup": 0.3}
    assert [i["name"] for i in doc["image_prompts"]] == active[2:]
    assert_clean_exit(node, node.stop())

    # started again with other prompt parameters: the store takes precedence
    again = NodeProcess(NODE, params(tiny_checkpoint, store_dir, prompts=("something else",)), tmp_path)
    try:
        again.wait_ready()
        assert "restored" in again.log() and "takes precedence" in again.log()
        assert client.get_param(NODE, "prompts") == ["cup", "door handle"]
        assert client.get_param(NODE, "prompt_thresholds") == ["cup=0.3"]
        after_seg = newest_segmentation(client, front)
        assert list(after_seg.prompts) == active
        assert [c.threshold for c in after_seg.confidences] == [c.threshold for c in before_seg.confidences]
        for before_mask, after_mask in zip(before_seg.masks, after_seg.masks, strict=True):
            assert np.array_equal(imgmsg_to_cv2(before_mask), imgmsg_to_cv2(after_mask))
        assert store_files(store_dir) == saved  # restoring rewrote nothing
    finally:
        assert_clean_exit(again, again.stop())


def test_a_corrupt_store_is_set_aside_and_the_node_starts_with_its_parameters(tiny_checkpoint, tmp_path, client):
    store = tmp_path / "store"
    store.mkdir()
    (store / "prompts.json").write_text('{"format": "clipseg_ros prompt store", "version": 1, "texts": 5}')
    proc = NodeProcess("clipseg_corrupt_store", params(tiny_checkpoint, store, prompts=("mug",)), tmp_path)
    try:
        proc.wait_ready()
        log = proc.log()
        assert log.count("not used") == 1 and "moved aside to" in log, log
        assert client.get_param("clipseg_corrupt_store", "prompts") == ["mug"]
        aside = [p for p in store.iterdir() if p.name.startswith("rejected-")]
        assert len(aside) == 1
        assert (aside[0] / "prompts.json").read_text().endswith('"texts": 5}')  # untouched
        assert json.loads((store / "prompts.json").read_text())["texts"] == ["mug"]  # a fresh store
    finally:
        assert_clean_exit(proc, proc.stop())


def test_an_unwritable_store_warns_once_and_the_node_keeps_working(tiny_checkpoint, tmp_path, client):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    name = "clipseg_readonly_store"
    proc = NodeProcess(name, params(tiny_checkpoint, blocker / "store", prompts=("mug",)), tmp_path)
    try:
        proc.wait_ready()
        assert client.set_params(name, prompts=["mug", "bowl"])[0].successful
        assert client.set_params(name, prompts=["bowl"])[0].successful
        wait_for(lambda: "active prompts: ['bowl']" in proc.log(), 10, what="the last change to apply")
        assert proc.log().count("not saved") == 1, proc.log()
        diagnostics = client.collect(DiagnosticArray, "/diagnostics")

        def store_value():
            for array in list(diagnostics):
                for status in array.status:
                    if status.name == f"{name}: model":
                        return {kv.key: kv.value for kv in status.values}["prompt store"]
        assert wait_for(store_value, 10, what="diagnostics").endswith("store (last save failed)")
    finally:
        assert_clean_exit(proc, proc.stop())


def stored_store(directory, texts=("stored a", "stored b", "stored c")):
    from clipseg_ros.core.prompts.store import PromptStore, StoredPrompts

    PromptStore(directory).save(StoredPrompts(texts=tuple(texts), thresholds=(("stored a", 0.25),)))
    return store_files(directory)


def test_lifecycle_mode_restores_the_store_after_parameter_changes_before_configure(tiny_checkpoint, tmp_path,
                                                                                    client):
    """Issue 19, point 2: a prompt-parameter change before the first configure (even max_prompts)
    saved the parameters over the store, so configure 'restored' what was just written."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    store = tmp_path / "store"
    saved = stored_store(store)
    name = "clipseg_lifecycle_store"
    proc = start_answering_node(client, name, dict(params(tiny_checkpoint, store, prompts=("mug",)), lifecycle=True),
                                tmp_path, ready_text="waiting for the configure")
    try:
        assert client.set_params(name, max_prompts=10)[0].successful
        assert client.set_params(name, prompts=["mug", "bowl"])[0].successful
        assert store_files(store) == saved  # nothing written before the store was read
        srv = client.node.create_client(ChangeState, f"/{name}/change_state")
        assert client.call(srv, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)),
                           timeout=60).success
        assert client.get_param(name, "prompts") == ["stored a", "stored b", "stored c"]
        assert client.get_param(name, "prompt_thresholds") == ["stored a=0.25"]
        assert store_files(store) == saved
    finally:
        assert_clean_exit(proc, proc.stop())


def test_a_readable_store_that_does_not_fit_now_is_kept_as_it_is(tiny_checkpoint, tmp_path, client):
    """Issue 19, point 3: a store with more prompts than max_prompts was set aside as 'rejected'
    (and then overwritten): it is readable, just not applicable now. Kept, not written, one
    warning, diagnostics say so."""
    store = tmp_path / "store"
    saved = stored_store(store)
    name = "clipseg_store_too_big"
    proc = start_answering_node(client, name, dict(params(tiny_checkpoint, store, prompts=("mug",)), max_prompts=2),
                                tmp_path)
    try:
        log = proc.log()
        assert log.count("not applicable now") == 1 and "kept as it is" in log and "moved aside" not in log, log
        assert client.get_param(name, "prompts") == ["mug"]
        assert client.set_params(name, prompts=["bowl"])[0].successful
        wait_for(lambda: "active prompts: ['bowl']" in proc.log(), 10, what="the change to apply")
        assert store_files(store) == saved and not [p for p in store.iterdir() if p.name.startswith("rejected-")]
    finally:
        assert_clean_exit(proc, proc.stop())


def test_a_store_that_cannot_be_read_now_is_kept_as_it_is(tiny_checkpoint, tmp_path, client):
    """Issue 19, point 3: EACCES/EIO set the store aside as damaged."""
    import os

    if os.geteuid() == 0:  # root reads anything: a directory where the file should be gives EISDIR
        store = tmp_path / "store"
        (store / "prompts.json").mkdir(parents=True)
    else:
        store = tmp_path / "store"
        stored_store(store)
        (store / "prompts.json").chmod(0)
    name = "clipseg_store_unreadable"
    proc = start_answering_node(client, name, params(tiny_checkpoint, store, prompts=("mug",)), tmp_path)
    try:
        log = proc.log()
        assert "cannot read" in log and "kept as it is" in log and "moved aside" not in log, log
        assert client.get_param(name, "prompts") == ["mug"]
        assert (store / "prompts.json").exists() and not [p for p in store.iterdir() if p.name.startswith("rejected-")]
    finally:
        assert_clean_exit(proc, proc.stop())
