"""The interfaces built from msg/ and srv/ import and round-trip through serialization."""

import math

from clipseg_ros_interfaces.msg import Confidences, PromptConfidence, Segmentation
from clipseg_ros_interfaces.srv import SetPrompts
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image, RegionOfInterest


def confidence(prompt="cup"):
    return PromptConfidence(prompt=prompt, max_score=0.9, mean_score=0.7, area_fraction=0.25, detected=True,
                            bbox=RegionOfInterest(x_offset=3, y_offset=4, width=5, height=6),
                            centroid_x=5.5, centroid_y=float("nan"))


def test_segmentation_round_trip():
    msg = Segmentation(prompts=["cup", "door handle"], confidences=[confidence(), confidence("door handle")],
                       masks=[Image(height=2, width=3, encoding="mono8", step=3, data=bytes(range(6)))],
                       label=Image(height=2, width=3, encoding="mono8", step=3, data=bytes(6)),
                       threshold=0.4, inference_ms=12.5)
    msg.header.frame_id = "camera"
    msg.header.stamp.sec = 42
    back = deserialize_message(serialize_message(msg), Segmentation)
    assert back.header.frame_id == "camera" and back.header.stamp.sec == 42
    assert list(back.prompts) == ["cup", "door handle"]
    assert back.confidences[1].prompt == "door handle" and back.confidences[0].bbox.width == 5
    assert math.isnan(back.confidences[0].centroid_y) and back.confidences[0].detected
    assert bytes(back.masks[0].data) == bytes(range(6))
    assert abs(back.threshold - 0.4) < 1e-6 and back.inference_ms == 12.5


def test_confidences_round_trip():
    back = deserialize_message(serialize_message(Confidences(confidences=[confidence()])), Confidences)
    assert abs(back.confidences[0].max_score - 0.9) < 1e-6  # float32 on the wire


def test_set_prompts_service_types():
    req = SetPrompts.Request(prompts=["a"], image_prompts=[Image(width=1)], image_prompt_names=["x"])
    back = deserialize_message(serialize_message(req), SetPrompts.Request)
    assert list(back.prompts) == ["a"] and back.image_prompts[0].width == 1 and list(back.image_prompt_names) == ["x"]
    resp = deserialize_message(serialize_message(SetPrompts.Response(success=True, message="ok",
                                                                     active_prompts=["a", "x"])),
                               SetPrompts.Response)
    assert resp.success and list(resp.active_prompts) == ["a", "x"]
