"""The enriched bag: the input rosbag2 again, plus the node's outputs for each labelled frame.

For every labelled image message, ``<prefix>segmentation`` (clipseg_ros_interfaces/Segmentation,
with masks and objects), ``<prefix>label`` (sensor_msgs/Image) and ``<prefix>confidences`` are
added at the image's record time, their headers copied from the image (stamp and frame_id), so
the bag replays in RViz as if the node had run live. ``<prefix>`` is the node's: ``/clipseg/``
for one camera topic, ``/clipseg/<camera>/`` for several (the node's camera names).

The messages are built by the node's own code (:func:`clipseg_ros.ros.messages.build_outputs`) from
the labeller's files (the probability masks are kept for this) and serialised by rclpy; the bag
is written by ``rosbags``, which needs the message definitions of clipseg_ros_interfaces: they
are read from the installed package's ``share/`` folder.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from clipseg_ros.tools.label_outputs import OutputFolder, RunConfig, read_png
from clipseg_ros.tools.label_sources import LabelInputError, open_bag

NODE_NAMESPACE = "/clipseg/"
INTERFACES = "clipseg_ros_interfaces"


def interface_definitions() -> dict[str, str]:
    """{'clipseg_ros_interfaces/msg/<Name>': .msg text} from the installed interfaces package."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(INTERFACES)))
    except Exception:  # noqa: BLE001 - not on the ament index (a pip venv without AMENT_PREFIX_PATH)
        pass
    candidates.append(Path(sys.prefix) / "share" / INTERFACES)
    import clipseg_ros_interfaces

    for parent in Path(clipseg_ros_interfaces.__file__).resolve().parents:
        candidates.append(parent / "share" / INTERFACES)
    for share in candidates:
        files = sorted((share / "msg").glob("*.msg"))
        if files:
            return {f"{INTERFACES}/msg/{f.stem}": f.read_text() for f in files}
    raise LabelInputError(f"cannot find the {INTERFACES} message definitions (share/{INTERFACES}/msg/*.msg)")


def bag_storage(path: Path) -> str:
    """'mcap' or 'sqlite3', as the input bag is stored."""
    if path.is_file():
        return "mcap" if path.suffix == ".mcap" else "sqlite3"
    return "mcap" if any(path.glob("*.mcap")) else "sqlite3"


def output_prefixes(topics: Sequence[str]) -> dict[str, str]:
    """Image topic -> the node's output prefix for it."""
    from clipseg_ros.ros.cameras import camera_specs

    return {spec.topic: NODE_NAMESPACE + spec.prefix[2:] for spec in camera_specs(list(topics))}


def frame_messages(record: dict, folder: OutputFolder, config: RunConfig):
    """(segmentation, label, confidences) messages for one labelled bag frame."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    from clipseg_ros.core.results.postprocess import SegmentationResult, result_from_masks
    from clipseg_ros.core.results.scene import SceneOptions, build_scene
    from clipseg_ros.ros.messages import OutputOptions, build_outputs

    name = record["name"]
    masks = np.stack([read_png(folder.root / "probabilities" / name / f"{k}.png")
                      for k in range(len(config.prompts))]) if config.prompts else \
        np.zeros((0, record["height"], record["width"]), np.uint8)
    like = SegmentationResult(prompts=list(config.prompts), masks=masks, label=None, stats=[],
                              threshold=config.threshold, image_size=(record["height"], record["width"]),
                              thresholds=tuple(config.thresholds))
    result = result_from_masks(masks, like)
    scene = build_scene(result, None, SceneOptions(min_object_area=config.min_object_area,
                                                   max_objects=config.max_objects))
    stamp = int(record["stamp_ns"])
    header = Header(stamp=Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000),
                    frame_id=record["frame_id"])
    out = build_outputs(result, None, header, OutputOptions(overlay=False), scene)
    return out.segmentation, out.label, out.confidences


def write_enriched_bag(source: Path, destination: Path, folder: OutputFolder,
                       records: Callable[[], Iterable[dict]], config: RunConfig, storage: str | None = None) -> int:
    """Copy ``source`` to ``destination`` (a new rosbag2 folder) with the outputs of the records
    added; returns how many output messages were added. ``records()`` gives them in the bag's
    time order (the labeller's source order), afresh for each pass: they are merged with the
    bag's messages as both are read, so memory does not grow with the number of frames.
    LabelInputError when ``destination`` exists."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    if destination.exists():
        raise LabelInputError(f"--bag-out {destination} exists: give a new path")
    typestore = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for msgtype, text in interface_definitions().items():
        types.update(get_types_from_msg(text, msgtype))
    typestore.register(types)
    prefixes = output_prefixes(sorted({r["topic"] for r in records() if r.get("topic")}))
    ahead = _RecordsAhead(r for r in records() if r.get("topic"))
    plugin = StoragePlugin.MCAP if (storage or bag_storage(source)) == "mcap" else StoragePlugin.SQLITE3
    added = 0
    with open_bag(source) as reader, Writer(destination, version=9,
                                               storage_plugin=plugin) as writer:
        copies = {}
        for c in reader.connections:
            copies[c.id] = writer.add_connection(c.topic, c.msgtype, typestore=reader.typestore,
                                                 serialization_format=c.ext.serialization_format,
                                                 offered_qos_profiles=c.ext.offered_qos_profiles)
        outputs = {}
        for topic, prefix in prefixes.items():
            outputs[topic] = (writer.add_connection(prefix + "segmentation", f"{INTERFACES}/msg/Segmentation",
                                                    typestore=typestore),
                              writer.add_connection(prefix + "label", "sensor_msgs/msg/Image", typestore=typestore),
                              writer.add_connection(prefix + "confidences", f"{INTERFACES}/msg/Confidences",
                                                    typestore=typestore))
        for connection, time_ns, raw in reader.messages():
            writer.write(copies[connection.id], time_ns, raw)
            record = ahead.take(connection.topic, time_ns)
            if record is None:
                continue
            for out_connection, msg in zip(outputs[connection.topic],
                                           frame_messages(record, folder, config)):
                writer.write(out_connection, time_ns, serialize_message(msg))
                added += 1
    return added


class _RecordsAhead:
    """Records in time order, read as far as the bag's current message: ``take`` finds the one
    for a message (or None). Only records of the current record time are held, so messages of
    one time on several topics match whatever order the reader gives them in."""

    def __init__(self, records: Iterator[dict]):
        self._records = iter(records)
        self._held: dict[tuple[str, int], dict] = {}
        self._latest = -1

    def take(self, topic: str, time_ns: int) -> dict | None:
        while self._latest <= time_ns:
            record = next(self._records, None)
            if record is None:
                break
            self._latest = int(record["bag_time_ns"])
            self._held[(record["topic"], self._latest)] = record
        for key in [k for k in self._held if k[1] < time_ns]:  # passed without a message: none will come
            del self._held[key]
        return self._held.pop((topic, time_ns), None)
