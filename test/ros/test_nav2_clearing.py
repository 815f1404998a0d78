"""Nav2 frees cells only by raytracing a clearing source (issue 18, point 6).

A small 2D model of nav2_costmap_2d's ObstacleLayer (its own rules, read from its source): in
each update every clearing observation raytraces from the sensor's cell to each of its points'
cells and frees the cells on the line, the last one excepted (Bresenham, as raytraceLine); then
every marking observation marks its points' cells LETHAL. Marking alone (the README's old YAML,
``clearing: false``) never frees a cell, so a person who walked away stayed an obstacle.

The scene: a camera looking along the floor at a wall 4 m away; a person 2 m away walks from the
left of the image to the right. The node's clouds go through the real messages.
"""

import numpy as np

from clipseg_ros.core.results.geometry import PinholeCamera
from clipseg_ros.core.results.postprocess import SegmentationResult, label_from_masks, mask_stats
from clipseg_ros.core.results.scene import DepthFrame, SceneOptions, build_scene
from clipseg_ros.ros.spatial_messages import cloud_msg, cloud_points, xyz_cloud_msg

H, W = 60, 80
CAM = PinholeCamera(60.0, 60.0, (W - 1) / 2, (H - 1) / 2, W, H)
RESOLUTION = 0.05  # m per cell
FREE, LETHAL = 0, 254


class ObstacleLayerModel:
    """A rolling window around the sensor at the origin; x forward, y left (REP 103 base frame)."""

    def __init__(self, size_m: float = 10.0):
        self.cells = int(size_m / RESOLUTION)
        self.grid = np.full((self.cells, self.cells), FREE, np.uint8)
        self.origin = self.cells // 2

    def cell(self, x: float, y: float) -> tuple[int, int]:
        return self.origin + int(np.floor(x / RESOLUTION)), self.origin + int(np.floor(y / RESOLUTION))

    def update(self, marking: list[np.ndarray], clearing: list[np.ndarray]) -> None:
        for cloud in clearing:
            for x, y in _ground(cloud):
                self._raytrace_free((self.origin, self.origin), self.cell(x, y))
        for cloud in marking:
            for x, y in _ground(cloud):
                i, j = self.cell(x, y)
                self.grid[i, j] = LETHAL

    def _raytrace_free(self, start: tuple[int, int], end: tuple[int, int]) -> None:
        """Bresenham from start to end; every cell but the end one becomes FREE."""
        (x0, y0), (x1, y1) = start, end
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x1 > x0 else -1), (1 if y1 > y0 else -1)
        error = dx + dy
        while (x0, y0) != (x1, y1):
            self.grid[x0, y0] = FREE
            twice = 2 * error
            if twice >= dy:
                error += dy
                x0 += sx
            if twice <= dx:
                error += dx
                y0 += sy

    def lethal(self, x: float, y: float) -> bool:
        return bool(self.grid[self.cell(x, y)] == LETHAL)


def _ground(points: np.ndarray) -> list[tuple[float, float]]:
    """Optical frame (x right, y down, z forward) -> base frame (x forward, y left) on the floor."""
    return [(float(z), float(-x)) for x, z in zip(points["x"], points["z"])]


def frame(person_columns: slice) -> tuple[SegmentationResult, DepthFrame]:
    depth = np.full((H, W), 4.0, np.float32)
    depth[10:50, person_columns] = 2.0
    masks = np.zeros((1, H, W), np.uint8)
    masks[0, 10:50, person_columns] = 255
    stats = mask_stats(masks, ["person"], [1.0], (H, W), 0.5)
    result = SegmentationResult(prompts=["person"], masks=masks, label=label_from_masks(masks, 0.5), stats=stats,
                                threshold=0.5, image_size=(H, W))
    return result, DepthFrame(depth, CAM, "camera_optical", (1, 0))


def clouds(person_columns: slice) -> tuple[np.ndarray, np.ndarray]:
    result, depth = frame(person_columns)
    scene = build_scene(result, depth, SceneOptions(obstacle_prompts=("person",), clearing_cloud=True,
                                                    cloud_stride=1, min_object_area=0))
    obstacle = cloud_points(cloud_msg(scene.obstacle_cloud, None, xyz_only=True))
    clearing = cloud_points(xyz_cloud_msg(scene.clearing_cloud, None))
    return obstacle, clearing


def person_cell_centre(columns: slice) -> tuple[float, float]:
    u = (columns.start + columns.stop - 1) / 2
    return 2.0, -(u - CAM.cx) * 2.0 / CAM.fx


def test_a_person_who_walks_away_is_cleared_with_the_clearing_cloud():
    before, after = slice(10, 20), slice(55, 65)
    layer = ObstacleLayerModel()
    for columns in (before, after):
        obstacle, clearing = clouds(columns)
        assert len(clearing) == H * W and np.all(np.isfinite(clearing["z"]))  # every valid depth point
        layer.update(marking=[obstacle], clearing=[clearing])
        assert layer.lethal(*person_cell_centre(columns))
    assert not layer.lethal(*person_cell_centre(before))  # freed within one update
    assert not layer.lethal(4.0, 0.0)  # the wall is not in the obstacle cloud: never marked


def test_marking_alone_leaves_the_person_where_it_was():
    """The contract the clearing cloud is for: without it the old cells stay LETHAL."""
    before, after = slice(10, 20), slice(55, 65)
    layer = ObstacleLayerModel()
    for columns in (before, after):
        obstacle, _ = clouds(columns)
        layer.update(marking=[obstacle], clearing=[])
    assert layer.lethal(*person_cell_centre(before)) and layer.lethal(*person_cell_centre(after))
