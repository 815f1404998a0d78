"""Objects from masks without ROS: exact answers on hand-made masks."""

import numpy as np
import pytest

from clipseg_ros.core.results.objects import find_objects


def mask_with(boxes, shape=(40, 60), value=200):
    m = np.zeros(shape, np.uint8)
    for x, y, w, h, *v in boxes:
        m[y:y + h, x:x + w] = v[0] if v else value
    return m


def test_two_cups_are_two_objects_sorted_by_score():
    m = mask_with([(5, 5, 10, 8, 180), (30, 20, 12, 10, 240)])
    (cup,) = find_objects(m[None], ["cup"], [0.4], (40, 60))
    first, second = cup.objects
    assert (first.bbox, first.area, first.max_score) == ((30, 20, 12, 10), 120, 240 / 255)
    assert first.centroid == (35.5, 24.5) and first.mean_score == 240 / 255
    assert (second.bbox, second.area, second.centroid) == ((5, 5, 10, 8), 80, (9.5, 8.5))
    assert cup.pixels(first).sum() == 120 and cup.pixels(second)[5, 5] and not cup.pixels(first)[5, 5]


def test_touching_regions_are_one_object_and_holes_are_not_part_of_it():
    ring = mask_with([(10, 10, 20, 20)])
    ring[15:25, 15:25] = 0  # a hole
    ring[30, 30] = 200  # touches the ring diagonally: 8-connected, so the same object
    (objs,) = find_objects(ring[None], ["frame"], [0.4], (40, 60))
    (obj,) = objs.objects
    assert obj.bbox == (10, 10, 21, 21) and obj.area == 400 - 100 + 1
    assert not objs.pixels(obj)[20, 20]


def test_min_area_max_objects_and_per_prompt_thresholds():
    m = mask_with([(0, 0, 2, 2, 250), (10, 10, 5, 5, 120), (30, 5, 6, 6, 90)])
    (objs,) = find_objects(m[None], ["x"], [0.3], (40, 60), min_area=10)
    assert [o.bbox for o in objs.objects] == [(10, 10, 5, 5), (30, 5, 6, 6)]  # the 2x2 one is too small
    (objs,) = find_objects(m[None], ["x"], [0.45], (40, 60))  # 90/255 < 0.45 now
    assert [o.bbox for o in objs.objects] == [(0, 0, 2, 2), (10, 10, 5, 5)]
    (objs,) = find_objects(m[None], ["x"], [0.3], (40, 60), max_objects=1)
    assert [o.bbox for o in objs.objects] == [(0, 0, 2, 2)]
    assert objs.pixels(objs.objects[0]).sum() == 4
    a, b = find_objects(np.stack([m, m]), ["a", "b"], [0.3, 0.99], (40, 60))
    assert len(a.objects) == 3 and b.objects == ()


def test_on_the_model_grid_boxes_centroids_and_areas_are_in_input_pixels():
    grid = mask_with([(2, 3, 4, 2)], shape=(10, 10))
    (objs,) = find_objects(grid[None], ["x"], [0.4], (100, 200))  # a grid pixel is 20 wide, 10 high
    (obj,) = objs.objects
    assert obj.bbox == (40, 30, 80, 20) and obj.area == 8 * 200
    assert obj.centroid == pytest.approx((79.5, 39.5))  # centre of input pixels 40..119, 30..49


def test_no_object_and_an_empty_prompt_set():
    (objs,) = find_objects(np.zeros((1, 8, 8), np.uint8), ["x"], [0.4], (8, 8))
    assert objs.objects == () and not objs.components.any()
    assert find_objects(np.zeros((0, 8, 8), np.uint8), [], [], (8, 8)) == []


def test_large_masks_are_found_on_the_model_sized_grid_within_one_sampled_pixel():
    masks = np.zeros((1, 1080, 1920), np.uint8)
    masks[0, 300:600, 900:1500] = 200
    (objs,) = find_objects(masks, ["x"], [0.4], (1080, 1920))
    (obj,) = objs.objects
    assert objs.components.shape == (198, 352)  # 352 on the long side: 5.5 input pixels per grid pixel
    assert np.allclose(obj.bbox, (900, 300, 600, 300), atol=6)
    assert abs(obj.area - 600 * 300) <= 6 * (600 + 300) * 2 and np.allclose(obj.centroid, (1199.5, 449.5), atol=6)
