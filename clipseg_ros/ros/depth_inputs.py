"""A camera's depth input: the aligned depth image and its CameraInfo, paired with colour frames.

The ROS side of 3D: it keeps the recent depth images of one camera by stamp and the newest
CameraInfo, and turns the depth image that pairs with a colour frame into a
:class:`clipseg_ros.core.results.scene.DepthFrame` (or a :class:`clipseg_ros.core.results.geometry.DepthError` saying why
it cannot be used). Pairing needs no message_filters: exact stamp, else the nearest within
``depth_slop``.
"""

from __future__ import annotations

from collections import deque

from sensor_msgs.msg import CameraInfo, Image

from clipseg_ros.core.results.geometry import DepthError, PinholeCamera, check_same_view, depth_in_metres, nearest_stamp
from clipseg_ros.core.results.scene import DepthFrame
from clipseg_ros.ros.conversions import ImageConversionError, imgmsg_to_numpy


def stamp_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


# image_transport's transport suffixes: '/cam/color/image_raw/compressed' is the stream '/cam/color/image_raw'.
TRANSPORT_SUFFIXES = ("/compressed", "/compressedDepth", "/theora", "/zstd")


def camera_info_topic(image_topic: str) -> str:
    """The CameraInfo beside an image topic: '/cam/aligned_depth_to_color/image_raw' ->
    '/cam/aligned_depth_to_color/camera_info', '/cam/color/image_raw/compressed' ->
    '/cam/color/camera_info' (the image_transport convention)."""
    topic = image_topic.rstrip("/")
    for suffix in TRANSPORT_SUFFIXES:
        if topic.endswith(suffix):
            topic = topic[:-len(suffix)]
            break
    head, _, _ = topic.rpartition("/")
    return f"{head}/camera_info" if head else "camera_info"


def camera_of(info: CameraInfo, mode: str = "auto") -> PinholeCamera:
    """The camera a CameraInfo describes (see :meth:`PinholeCamera.from_camera_info` for ``mode``)."""
    return PinholeCamera.from_camera_info(info.k, info.d, info.p, info.distortion_model, info.width, info.height, mode)


class DepthInput:
    """Subscriptions to one camera's depth image, its CameraInfo and the colour image's
    CameraInfo (to check that depth is registered to colour); the last ``keep`` depth images.
    ``camera_model``: whether the depth image is rectified (auto | rectified | raw)."""

    def __init__(self, node, depth_topic: str, info_topic: str, qos, colour_info_topic: str,
                 camera_model: str = "auto", keep: int = 30):
        self.depth_topic, self.info_topic, self.colour_info_topic = depth_topic, info_topic, colour_info_topic
        self.camera_model = camera_model
        self._frames: deque = deque(maxlen=keep)  # (stamp in s, Image), appended by the executor
        self.info: CameraInfo | None = None
        self.colour_info: CameraInfo | None = None
        self._subscriptions = [node.create_subscription(Image, depth_topic, self._on_depth, qos),
                               node.create_subscription(CameraInfo, info_topic, self._on_info, qos)]
        if colour_info_topic != info_topic:
            self._subscriptions.append(node.create_subscription(CameraInfo, colour_info_topic, self._on_colour_info,
                                                                qos))

    def _on_depth(self, msg: Image) -> None:
        self._frames.append((stamp_seconds(msg.header.stamp), msg))

    def _on_info(self, msg: CameraInfo) -> None:
        self.info = msg
        if self.colour_info_topic == self.info_topic:
            self.colour_info = msg

    def _on_colour_info(self, msg: CameraInfo) -> None:
        self.colour_info = msg

    def destroy(self, node) -> None:
        for sub in self._subscriptions:
            node.destroy_subscription(sub)
        self._subscriptions = []

    def paired(self, stamp, slop: float) -> Image:
        """The depth image for a colour frame stamped ``stamp``; DepthError when none is within
        ``slop`` seconds (saying how far the nearest is)."""
        frames = list(self._frames)  # a copy: the executor appends meanwhile
        if not frames:
            raise DepthError(f"no depth image on {self.depth_topic} yet")
        target = stamp_seconds(stamp)
        index = nearest_stamp([s for s, _ in frames], target, slop)
        if index is None:
            gap = min(abs(s - target) for s, _ in frames)
            raise DepthError(f"no depth image within depth_slop={slop:g} s of the frame (nearest {gap * 1e3:.0f} ms "
                             "away): depth and colour out of sync")
        return frames[index][1]

    def depth_frame(self, stamp, slop: float, colour_size: tuple[int, int]) -> DepthFrame:
        """The paired depth image as a :class:`DepthFrame`; DepthError saying why it cannot be used."""
        msg = self.paired(stamp, slop)
        info = self.info
        if info is None:
            raise DepthError(f"no CameraInfo on {self.info_topic} yet: 3D needs the depth image's intrinsics")
        if (info.width, info.height) != (msg.width, msg.height):
            raise DepthError(f"CameraInfo on {self.info_topic} is for {info.width}x{info.height} but the depth "
                             f"image is {msg.width}x{msg.height}")
        colour = self.colour_info
        if colour is None:
            raise DepthError(f"no CameraInfo on {self.colour_info_topic} yet: it shows whether the depth image is "
                             "registered to the colour image")
        if (colour.height, colour.width) != tuple(colour_size):
            raise DepthError(f"CameraInfo on {self.colour_info_topic} is for {colour.width}x{colour.height} but the "
                             f"colour image is {colour_size[1]}x{colour_size[0]}")
        check_same_view(PinholeCamera.from_k(colour.k, colour.width, colour.height),
                        PinholeCamera.from_k(info.k, info.width, info.height))
        camera = camera_of(info, self.camera_model)
        try:
            raw = imgmsg_to_numpy(msg)
        except ImageConversionError as exc:
            raise DepthError(f"depth image: {exc}") from exc
        return DepthFrame(depth_in_metres(raw, msg.encoding), camera, msg.header.frame_id,
                          (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)))
