"""Prompt messages -> core values, without a node: polygons, masks, weights, thresholds."""

import numpy as np
import pytest
from sensor_msgs.msg import RegionOfInterest

from clipseg_ros.core.prompts.prompt_book import DEFAULT_TEXT_WEIGHT, PromptError
from clipseg_ros.core.prompts.visual_prompts import Box
from clipseg_ros.ros.conversions import cv2_to_imgmsg
from clipseg_ros.ros.prompt_requests import (
    alpha_mask,
    box_from_roi,
    mask_from_msg,
    region_from_polygon,
    text_weight_from_request,
    thresholds_from_request,
)


def test_polygon_point_box_and_outline():
    size = (48, 64)
    assert region_from_polygon([(10.0, 20.0)], size, 8) == (Box(6, 16, 8, 8), None)
    assert region_from_polygon([(1.0, 1.0)], size, 8) == (Box(0, 0, 5, 5), None)  # clipped at the corner
    assert region_from_polygon([(30.0, 5.0), (10.0, 25.0)], size, 8) == (Box(10, 5, 21, 21), None)
    box, mask = region_from_polygon([(10, 10), (20, 10), (20, 20), (10, 20)], size, 8)
    assert box is None and mask.shape == size
    assert np.array_equal(np.argwhere(mask)[[0, -1]], [[10, 10], [20, 20]]) and (mask > 0).sum() == 121
    for points, reason in [([], "no point"), ([(64.0, 1.0)], "outside the 64x48 image"),
                           ([(float("nan"), 1.0)], "not finite")]:
        with pytest.raises(PromptError, match=reason):
            region_from_polygon(points, size, 8)


def test_masks_boxes_weights_and_thresholds_from_messages():
    assert box_from_roi(RegionOfInterest(x_offset=1, y_offset=2, width=3, height=4)) == Box(1, 2, 3, 4)
    assert box_from_roi(RegionOfInterest(x_offset=1, y_offset=2, width=0, height=4)) is None
    assert mask_from_msg(cv2_to_imgmsg(np.zeros((0, 0), np.uint8), "mono8"), 100) is None
    mask = mask_from_msg(cv2_to_imgmsg(np.eye(4, dtype=np.uint8), "mono8"), 100)
    assert mask.tolist() == np.eye(4, dtype=np.uint8).tolist()
    with pytest.raises(PromptError, match="send mono8"):
        mask_from_msg(cv2_to_imgmsg(np.zeros((4, 4, 3), np.uint8), "rgb8"), 100)
    with pytest.raises(PromptError, match="over max_image_pixels=10"):
        mask_from_msg(cv2_to_imgmsg(np.zeros((4, 4), np.uint8), "mono8"), 10)
    assert text_weight_from_request(0.0) == DEFAULT_TEXT_WEIGHT and text_weight_from_request(0.25) == 0.25
    with pytest.raises(PromptError, match="text_weight"):
        text_weight_from_request(-0.5)
    found = thresholds_from_request(["cup", " mug "], [0.5, float("nan")])
    assert found == {"cup": 0.5, "mug": None}
    with pytest.raises(PromptError, match="'cup' is given twice"):
        thresholds_from_request(["cup", "cup"], [0.1, 0.2])


def test_alpha_channel_of_an_example_image_is_its_mask():
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 3] = 255
    assert alpha_mask(cv2_to_imgmsg(rgba, "rgba8")) is None  # opaque: the image as sent
    rgba[1:3, 1:4, 3] = 0
    assert (alpha_mask(cv2_to_imgmsg(rgba, "bgra8")) == rgba[..., 3]).all()
    assert alpha_mask(cv2_to_imgmsg(rgba[..., :3].copy(), "rgb8")) is None

