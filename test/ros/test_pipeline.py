"""The pipelined node (``pipeline``, default true): a frame's outputs are made on their own thread
while the model segments the next frame; what goes out, and in which order, stays the same.

In-process nodes over real DDS with the known-answer checkpoint (every prompt's mask is the red
16 px patches), so the content is checked against the truth, not only between the two modes."""

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from clipseg_ros_interfaces.msg import Segmentation  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_helpers import CameraPublisher, wait_for  # noqa: E402

from clipseg_ros.ros.conversions import imgmsg_to_numpy  # noqa: E402
from clipseg_ros.ros.node import ClipSegNode  # noqa: E402
from clipseg_ros.ros.spinner import BackgroundSpinner  # noqa: E402

H = W = 352  # the model's own size: the red 16 px patches are the truth at every output pixel


def red_blocks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with red 16 px blocks on the model's grid, and its true mask."""
    rng = np.random.default_rng(seed)
    cells = rng.random((H // 16, W // 16)) < 0.3
    truth = np.kron(cells, np.ones((16, 16), bool))
    image = np.full((H, W, 3), 90, np.uint8)
    image[truth] = (230, 20, 20)
    return image, truth


class LiveNode:
    def __init__(self, checkpoint, name: str, topic: str, **params):
        values = {"model": str(checkpoint), "prompts": ["red thing"], "rate": 0.0, "dtype": "float32",
                  "image_topics": [topic], "refine": "none", "publish_overlay": False, **params}
        self.node = ClipSegNode(name, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        self.spinner = BackgroundSpinner(self.node)

    def close(self):
        self.spinner.stop()
        self.node.destroy_node()


@pytest.fixture
def nodes(known_answer_checkpoint, ros):
    made = []

    def make(name, topic, **params):
        made.append(LiveNode(known_answer_checkpoint, name, topic, **params))
        return made[-1].node

    yield make
    for live in made:
        live.close()


@pytest.mark.parametrize("pipeline", [True, False])
def test_the_model_segments_the_next_frame_while_a_frame_s_outputs_are_made(nodes, client, pipeline):
    """Outputs of the first model frame are held (post-processing blocked): a pipelined node's
    model thread takes the next frame meanwhile; a node with pipeline false cannot (one thread
    does both: the model stood idle through every frame's outputs before)."""
    topic = f"/pipe_overlap_{pipeline}/image"
    node = nodes(f"clipseg_pipe_overlap_{pipeline}", topic, pipeline=pipeline)
    segs = client.collect(Segmentation, f"/clipseg_pipe_overlap_{pipeline}/segmentation")
    inferred, held, release = [], threading.Event(), threading.Event()
    real_infer, real_finish = node.engine.infer_batch, node.engine.finish_batch

    def infer_batch(*args, **kwargs):
        inferred.append(args[0][0].shape)
        return real_infer(*args, **kwargs)

    def finish_batch(*args, **kwargs):
        if not held.is_set():
            held.set()
            release.wait(30)
        return real_finish(*args, **kwargs)

    node.engine.infer_batch, node.engine.finish_batch = infer_batch, finish_batch
    camera = CameraPublisher(client, topic, h=H, w=W, stamp_period=1 / 30)
    image, truth = red_blocks(0)
    wait_for(lambda: (camera.publish(image), held.is_set())[-1], 30, 0.03, "the first frame's outputs held")
    if pipeline:  # the first frame's model call, then the next frame's (which then waits to hand over)
        wait_for(lambda: (camera.publish(image), len(inferred) >= 2)[-1], 10, 0.03,
                 "the model on a later frame while the first one's outputs are held")
    else:
        deadline = time.monotonic() + 1.5  # a window to show nothing happens in it
        while time.monotonic() < deadline:
            camera.publish(image)
            time.sleep(0.03)  # the camera's period
        assert len(inferred) == 1
    assert not segs  # nothing went out while the first frame's outputs were held
    release.set()
    wait_for(lambda: (camera.publish(image), len(segs) >= 2)[-1], 30, 0.03, "outputs after the release")
    assert np.array_equal(imgmsg_to_numpy(segs[0].label) == 1, truth)


def test_pipelined_and_one_thread_nodes_publish_the_same_outputs_in_the_same_order(nodes, client):
    """The same frames through both modes: the same label and masks (the truth), every output's
    stamp later than the one before, under a 30 Hz camera that outruns the model."""
    from diagnostic_msgs.msg import DiagnosticArray

    diagnostics = client.collect(DiagnosticArray, "/diagnostics")
    received = {}
    for pipeline in (True, False):
        topic = f"/pipe_same_{pipeline}/image"
        nodes(f"clipseg_pipe_same_{pipeline}", topic, pipeline=pipeline)
        received[pipeline] = (CameraPublisher(client, topic, h=H, w=W, stamp_period=1 / 30),
                              client.collect(Segmentation, f"/clipseg_pipe_same_{pipeline}/segmentation"))
    images = [red_blocks(seed) for seed in range(3)]
    by_frame = {True: {}, False: {}}
    for pipeline, (camera, segs) in received.items():
        def step():
            image, _ = images[camera.seq % len(images)]
            camera.publish(image)
            time.sleep(1 / 30)  # the camera's period
            return len({int(s.header.frame_id.split(":")[1]) % len(images) for s in segs}) == len(images)

        wait_for(step, 60, 0, f"an output of every image (pipeline {pipeline})")
        stamps = [s.header.stamp.sec + s.header.stamp.nanosec * 1e-9 for s in segs]
        assert all(later > earlier for earlier, later in zip(stamps, stamps[1:])), stamps
        for seg in segs:
            by_frame[pipeline].setdefault(int(seg.header.frame_id.split(":")[1]) % len(images), seg)
    for k, (_, truth) in enumerate(images):
        one, other = by_frame[True][k], by_frame[False][k]
        assert np.array_equal(imgmsg_to_numpy(one.label) == 1, truth)
        assert bytes(one.label.data) == bytes(other.label.data)
        assert bytes(one.masks[0].data) == bytes(other.masks[0].data)
        assert [c.max_score for c in one.confidences] == [c.max_score for c in other.confidences]

    def thread_report(pipeline):  # the node says what each thread spends a cycle on
        for array in reversed(diagnostics):
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if status.name == f"clipseg_pipe_same_{pipeline}: model" and values.get("frames processed") != "0":
                    return values["model thread"], values["outputs thread"]
        return None

    model, outputs = wait_for(lambda: thread_report(True), 10, what="diagnostics of the pipelined node")
    assert "ms a cycle" in model and "ms a cycle" in outputs
    model, outputs = wait_for(lambda: thread_report(False), 10, what="diagnostics of the one-thread node")
    assert "ms a cycle" in model and outputs.startswith("off")
