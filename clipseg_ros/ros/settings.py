"""The node's parameters: the declared table, and the typed, frozen settings read from it.

:func:`parameter_specs` is the one table of names, defaults, types, ranges and descriptions (the
YAML file and the launch file are tested against it). :class:`NodeSettings` holds every value
except the prompt ones (``prompts``, ``prompt_template``, ``max_prompts``, ``prompt_thresholds``
belong to :class:`clipseg_ros.core.prompts.prompt_book.PromptBook`); a change makes a new NodeSettings or is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Mapping

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from clipseg_ros.core.model.device import check_device_name
from clipseg_ros.core.model.engine import DEFAULT_MODEL
from clipseg_ros.core.model.precision import check_precision_name
from clipseg_ros.core.motion.propagation import FlowOptions
from clipseg_ros.core.motion.temporal import TemporalOptions
from clipseg_ros.core.prompts.visual_prompts import DEFAULT_STYLE, STYLES
from clipseg_ros.core.results.geometry import CAMERA_MODELS
from clipseg_ros.core.results.postprocess import MAX_LABELS
from clipseg_ros.core.results.refinement import REFINE_MODES, RefineOptions
from clipseg_ros.core.results.scene import SceneOptions
from clipseg_ros.ros.depth_inputs import camera_info_topic
from clipseg_ros.ros.messages import OutputOptions

INPUT_QOS = ("sensor_data", "reliable", "system_default")
MASK_RESOLUTIONS = ("input", "model")


def parameter_specs() -> list[tuple[str, object, ParameterDescriptor]]:
    """(name, default, descriptor) of every parameter the node declares; default None means an
    empty string array (rclpy cannot type an empty list)."""
    def desc(text, ptype, read_only=False, **extra):
        return ParameterDescriptor(description=text, type=ptype, read_only=read_only, **extra)

    S, D, B, I = (ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_DOUBLE,
                  ParameterType.PARAMETER_BOOL, ParameterType.PARAMETER_INTEGER)
    SA = ParameterType.PARAMETER_STRING_ARRAY
    unit = [FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)]
    return [
        ("lifecycle", False, desc("true: wait for lifecycle transitions (configure loads the model, activate "
                                  "starts the cameras); false: configure and activate on start", B, True)),
        ("model", DEFAULT_MODEL, desc("hub id or local directory of a CLIPSeg checkpoint (safetensors)", S, True)),
        ("device", "auto", desc("auto | cpu | cuda | cuda:<index>", S, True)),
        ("device_strict", False, desc("refuse to start when the requested CUDA device is missing "
                                      "(default: warn and run on the CPU)", B, True)),
        ("dtype", "auto", desc("auto (by device and CPU features: see README) | float32 | bfloat16 | float16 | int8", S, True)),
        ("prompts", None, desc("text prompts; change at runtime (also via ~/prompts, ~/set_prompts)", SA)),
        ("prompt_template", "{}", desc("template applied to each text prompt, e.g. 'a photo of a {}.'", S)),
        ("max_prompts", 32, desc("most prompts (text + image) accepted at once", I,
                                 integer_range=[IntegerRange(from_value=1, to_value=MAX_LABELS, step=1)])),
        ("prompt_thresholds", None, desc("per-prompt thresholds as 'name=value' (value in [0, 1]); other prompts "
                                         "use threshold (also via ~/set_thresholds)", SA)),
        ("prompt_store", "", desc("directory where the active prompts are kept across restarts ('' = none); a "
                                  "readable store takes precedence over the prompt parameters at configure", S, True)),
        ("visual_prompt_style", DEFAULT_STYLE, desc("how a marked example becomes a prompt image: "
                                                    + " | ".join(STYLES), S)),
        ("teach_name", "", desc("name given to a prompt taught by drawing on ~/teach_region", S)),
        ("teach_history", 30, desc("frames kept per camera for teaching: a region drawn on one of them (named by "
                                   "its stamp) is taught from it", I, True,
                                   integer_range=[IntegerRange(from_value=1, to_value=1000, step=1)])),
        ("teach_max_age", 10.0, desc("s: a frame received longer ago than this is not taught from", D,
                                     floating_point_range=[FloatingPointRange(from_value=0.1, to_value=3600.0,
                                                                              step=0.0)])),
        ("teach_point_size", 64, desc("side in pixels of the box a single clicked point on ~/teach_region "
                                      "stands for", I,
                                      integer_range=[IntegerRange(from_value=1, to_value=4096, step=1)])),
        ("image_topics", ["image"], desc("camera topics; a name ending in /compressed (after remapping) is a "
                                         "CompressedImage", SA, True)),
        ("camera_names", None, desc("output namespace per camera; empty = derived from the topics", SA, True)),
        ("rate", 5.0, desc("segmentation rate in Hz (0 = as fast as the model allows)", D,
                           floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1000.0, step=0.0)])),
        ("threshold", 0.4, desc("probability threshold for masks, label and detection", D,
                                floating_point_range=unit)),
        ("input_qos", "sensor_data", desc("sensor_data | reliable | system_default", S, True)),
        ("publish_masks", True, desc("per-prompt masks inside ~/segmentation", B)),
        ("publish_label", True, desc("publish ~/label", B)),
        ("publish_overlay", True, desc("publish ~/overlay (bgr8 with legend, for RViz)", B)),
        ("overlay_alpha", 0.5, desc("overlay tint opacity", D, floating_point_range=unit)),
        ("mask_resolution", "input", desc("input (masks at camera size) | model (352x352)", S)),
        ("pipeline", False, desc("post-processing, objects, 3D, messages and publishing of a frame run on their own "
                                 "thread while the model segments the next one (more outputs/s where the model "
                                 "leaves the CPU free, e.g. on a GPU; on a CPU the model fills, latency grows: "
                                 "false, one thread does both in turn)", B, True)),
        ("num_threads", 0, desc("torch CPU threads (0 = torch default)", I,
                                integer_range=[IntegerRange(from_value=0, to_value=256, step=1)])),
        ("max_image_pixels", 4096 * 4096, desc("larger camera frames and prompt images are refused with a warning "
                                               "(memory: masks take prompts x pixels bytes)", I,
                                               integer_range=[IntegerRange(from_value=1, to_value=1 << 30, step=1)])),
        ("input_timeout", 2.0, desc("diagnostics WARN when a camera sends nothing for this many seconds", D,
                                    floating_point_range=[FloatingPointRange(from_value=0.1, to_value=3600.0,
                                                                             step=0.0)])),
        ("depth_topics", None, desc("aligned depth image per camera (16UC1 mm or 32FC1 m, registered to the colour "
                                    "image); '' = none for that camera; empty = no 3D", SA, True)),
        ("camera_info_topics", None, desc("CameraInfo of each depth image; '' or empty = <depth topic's "
                                          "namespace>/camera_info", SA, True)),
        ("image_camera_info_topics", None, desc("CameraInfo of each colour image (to check that depth is registered "
                                                "to it); '' or empty = <image topic's namespace>/camera_info", SA,
                                                True)),
        ("depth_camera_model", "auto", desc("whether the depth images are rectified: rectified (use CameraInfo P) | "
                                            "raw (use K and undo D) | auto (raw when D has a non-zero coefficient, "
                                            "else rectified)", S, True)),
        ("depth_slop", 0.05, desc("s: a depth image pairs with a colour frame of the same stamp, else the nearest "
                                  "within this", D, floating_point_range=[FloatingPointRange(from_value=0.0,
                                                                                             to_value=10.0, step=0.0)])),
        ("depth_band", 0.3, desc("m: an object's points further than this from its median depth are background",
                                 D, floating_point_range=[FloatingPointRange(from_value=0.001, to_value=100.0,
                                                                             step=0.0)])),
        ("refine", RefineOptions.mode, desc("edge-aware refinement of the masks at the output resolution: "
                                            + " | ".join(REFINE_MODES) + " (depth modes need a paired depth "
                                            "image: without one, guided+depth runs guided and depth none)", S)),
        ("refine_radius", RefineOptions.radius, desc("refinement window half-size in model patches (a patch is 16/352 "
                                                     "of the image's width and height)", D,
                                                     floating_point_range=[FloatingPointRange(
                                                         from_value=0.25, to_value=16.0, step=0.0)])),
        ("refine_depth_step", RefineOptions.depth_step, desc("m: a depth change larger than this is an edge a "
                                                             "refined mask does not cross", D,
                                                             floating_point_range=[FloatingPointRange(
                                                                 from_value=0.001, to_value=100.0, step=0.0)])),
        ("object_depth_step", 0.1, desc("m: parts of one prompt's region separated by a depth step larger than "
                                        "this are separate objects (with depth); 0 = never split", D,
                                        floating_point_range=[FloatingPointRange(from_value=0.0, to_value=100.0,
                                                                                 step=0.0)])),
        ("min_object_area", 64.0, desc("input pixels: smaller connected regions are not objects", D,
                                       floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1e9,
                                                                                step=0.0)])),
        ("max_objects", 16, desc("most objects kept per prompt (best first)", I,
                                 integer_range=[IntegerRange(from_value=1, to_value=1000, step=1)])),
        ("publish_markers", True, desc("~/markers: a box and label per 3D object (with depth)", B)),
        ("marker_lifetime", 0.0, desc("s: a marker disappears this long after its frame unless renewed; 0 = three "
                                      "periods of rate (3 s when rate is 0)", D,
                                      floating_point_range=[FloatingPointRange(from_value=0.0, to_value=3600.0,
                                                                               step=0.0)])),
        ("publish_positions", True, desc("~/position/<prompt>: each prompt's best object's position (with depth)", B)),
        ("publish_cloud", False, desc("~/cloud: x, y, z, score, label of the cloud_prompts' pixels (with depth)", B)),
        ("cloud_prompts", None, desc("prompts in ~/cloud; empty = all", SA)),
        ("obstacle_prompts", None, desc("prompts whose pixels go into ~/obstacle_cloud (x, y, z, for Nav2's "
                                        "obstacle/voxel layers); empty = no obstacle cloud", SA)),
        ("publish_clearing_cloud", False, desc("~/clearing_cloud: x, y, z of every valid depth point (strided), "
                                               "for a costmap's clearing source (Nav2: clearing true, marking false)",
                                               B)),
        ("cloud_stride", 4, desc("take every n-th depth row and column for the clouds", I,
                                 integer_range=[IntegerRange(from_value=1, to_value=64, step=1)])),
        ("cloud_max_points", 50000, desc("most points per cloud (thinned evenly beyond)", I,
                                         integer_range=[IntegerRange(from_value=1, to_value=10_000_000, step=1)])),
        ("publish_detections", True, desc("~/detections (vision_msgs/Detection2DArray), with depth "
                                          "~/detections_3d (oriented boxes) and the latched ~/label_info; needs "
                                          "vision_msgs", B, True)),
        ("publish_confidence", True, desc("~/confidence: mono8, the probability of each pixel's labelled prompt", B,
                                          True)),
        ("publish_instances", False, desc("~/instances: mono16, each object's pixels hold its instance id (the "
                                          "~/detections id)", B, True)),
        ("publish_objects_cloud", False, desc("~/objects_cloud: x, y, z, score, label, instance of the objects' "
                                              "surface points (with depth; stride and cap of the clouds)", B, True)),
        ("objects_cloud_prompts", None, desc("prompts in ~/objects_cloud; empty = all", SA)),
        ("publish_aligned_cloud", False, desc("~/aligned_cloud: organised x, y, z, one point per ~/label pixel, "
                                              "stamped like it (Nav2's semantic segmentation layer; with depth)", B,
                                              True)),
        ("target_prompt", "", desc("~/target_mask: mono8, 255 on this prompt's best object, at the colour frame's "
                                   "size and stamp (FoundationPose); '' = none", S)),
        ("target_all_objects", False, desc("~/target_mask holds every object of target_prompt, not only its best", B)),
        ("propagate", False, desc("between model frames, carry the last masks to each camera frame with optical "
                                  "flow and publish them (flagged propagated)", B, True)),
        ("propagate_rate", 15.0, desc("Hz: most propagated outputs per camera and second", D,
                                      floating_point_range=[FloatingPointRange(from_value=0.1, to_value=1000.0,
                                                                               step=0.0)])),
        ("propagation_budget", 0.1, desc("while the model has no spare time, propagation takes at most this share "
                                         "of one core (its rate is lowered to fit)", D,
                                         floating_point_range=[FloatingPointRange(from_value=0.01, to_value=1.0,
                                                                                  step=0.0)])),
        ("max_model_age", 5.0, desc("s: propagation stops for frames this much newer than the last model frame", D,
                                    floating_point_range=[FloatingPointRange(from_value=0.01, to_value=3600.0,
                                                                             step=0.0)])),
        ("flow_width", 320, desc("optical flow runs on grey frames this many pixels wide", I, True,
                                 integer_range=[IntegerRange(from_value=32, to_value=4096, step=1)])),
        ("smoothing", 1.0, desc("weight of a new model frame in each prompt's average over model frames, aligned "
                                "by optical flow (1 = no smoothing)", D, True,
                                floating_point_range=[FloatingPointRange(from_value=0.01, to_value=1.0, step=0.0)])),
        ("tracking", True, desc("give objects track ids that persist across frames", B, True)),
        ("track_max_missed", 5, desc("frames a track may go unmatched before it is lost", I, True,
                                     integer_range=[IntegerRange(from_value=0, to_value=10000, step=1)])),
        ("max_latency", 3.0, desc("diagnostics WARN when latency p95 (receipt to publish, s) exceeds this, "
                                  "ERROR above twice it", D,
                                  floating_point_range=[FloatingPointRange(from_value=0.01, to_value=3600.0,
                                                                           step=0.0)])),
    ]


@dataclass(frozen=True)
class NodeSettings:
    """Every non-prompt parameter, typed. Read-only ones are fixed at start; the others change
    through :meth:`updated`. rclpy checks types and ranges from the descriptors; :meth:`problems`
    checks the rest."""

    lifecycle: bool
    model: str
    device: str
    device_strict: bool
    dtype: str
    image_topics: tuple[str, ...]
    camera_names: tuple[str, ...]
    rate: float
    threshold: float
    input_qos: str
    publish_masks: bool
    publish_label: bool
    publish_overlay: bool
    overlay_alpha: float
    mask_resolution: str
    pipeline: bool
    num_threads: int
    max_image_pixels: int
    input_timeout: float
    max_latency: float
    prompt_store: str
    visual_prompt_style: str
    teach_name: str
    teach_point_size: int
    teach_history: int
    teach_max_age: float
    depth_topics: tuple[str, ...]
    camera_info_topics: tuple[str, ...]
    image_camera_info_topics: tuple[str, ...]
    depth_camera_model: str
    depth_slop: float
    depth_band: float
    refine: str
    refine_radius: float
    refine_depth_step: float
    object_depth_step: float
    min_object_area: float
    max_objects: int
    publish_markers: bool
    marker_lifetime: float
    publish_positions: bool
    publish_cloud: bool
    cloud_prompts: tuple[str, ...]
    obstacle_prompts: tuple[str, ...]
    publish_clearing_cloud: bool
    cloud_stride: int
    cloud_max_points: int
    propagate: bool
    propagate_rate: float
    propagation_budget: float
    max_model_age: float
    flow_width: int
    smoothing: float
    tracking: bool
    track_max_missed: int
    publish_detections: bool
    publish_confidence: bool
    publish_instances: bool
    publish_objects_cloud: bool
    objects_cloud_prompts: tuple[str, ...]
    publish_aligned_cloud: bool
    target_prompt: str
    target_all_objects: bool

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> "NodeSettings":
        """Settings from parameter values (extra names ignored); ValueError naming every problem."""
        settings = cls(**{f.name: _frozen(values[f.name]) for f in fields(cls)})
        problems = settings.problems()
        if problems:
            raise ValueError("invalid parameters: " + "; ".join(problems))
        return settings

    def updated(self, values: Mapping[str, object]) -> "NodeSettings":
        """A copy with ``values`` changed (names that are not settings are ignored); ValueError
        with the reason when a value is refused."""
        names = {f.name for f in fields(self)}
        changed = {k: _frozen(v) for k, v in values.items() if k in names}
        candidate = replace(self, **changed)
        problems = candidate.problems(only=changed)
        if problems:
            raise ValueError("; ".join(problems))
        return candidate

    def problems(self, only: Mapping[str, object] | None = None) -> list[str]:
        """What is wrong with these values (only the named ones when ``only`` is given)."""
        checks = {
            "device": lambda: check_device_name(self.device),  # whether it exists is configure's question
            "dtype": lambda: check_precision_name(self.dtype),
            "input_qos": lambda: _one_of("input_qos", self.input_qos, INPUT_QOS),
            "mask_resolution": lambda: _one_of("mask_resolution", self.mask_resolution, MASK_RESOLUTIONS),
            "refine": lambda: _one_of("refine", self.refine, REFINE_MODES),
            "visual_prompt_style": lambda: _one_of("visual_prompt_style", self.visual_prompt_style, tuple(STYLES)),
            "depth_camera_model": lambda: _one_of("depth_camera_model", self.depth_camera_model, CAMERA_MODELS),
            "image_topics": lambda: _require(bool(self.image_topics), "image_topics is empty"),
            **{name: (lambda name=name: self._one_per_camera(name))
               for name in ("camera_names", "depth_topics", "camera_info_topics", "image_camera_info_topics")},
        }
        found = []
        for name, check in checks.items():
            if only is not None and name not in only:
                continue
            try:
                check()
            except ValueError as exc:
                found.append(str(exc))
        return found

    def _one_per_camera(self, name: str) -> None:
        """A per-camera list is empty (the default for all) or has one entry per image topic."""
        values = getattr(self, name)
        _require(not values or len(values) == len(self.image_topics),
                 f"{name} has {len(values)} entries for {len(self.image_topics)} image_topics")

    @property
    def output_options(self) -> OutputOptions:
        return OutputOptions(include_masks=self.publish_masks, label=self.publish_label,
                             overlay=self.publish_overlay, overlay_alpha=self.overlay_alpha,
                             markers=self.publish_markers, positions=self.publish_positions,
                             marker_lifetime=self.marker_lifetime_s, detections=self.publish_detections,
                             confidence=self.publish_confidence, instances=self.publish_instances,
                             target_prompt=self.target_prompt.strip(), target_all_objects=self.target_all_objects,
                             objects_cloud=self.publish_objects_cloud, objects_cloud_prompts=self.objects_cloud_prompts,
                             cloud_stride=self.cloud_stride, cloud_max_points=self.cloud_max_points,
                             aligned_cloud=self.publish_aligned_cloud)

    @property
    def marker_lifetime_s(self) -> float:
        """``marker_lifetime``, or three periods of ``rate`` (3 s when it is 0) for 0."""
        if self.marker_lifetime > 0:
            return self.marker_lifetime
        return 3.0 / self.rate if self.rate > 0 else 3.0

    @property
    def scene_options(self) -> SceneOptions:
        return SceneOptions(min_object_area=self.min_object_area, max_objects=self.max_objects,
                            depth_band=self.depth_band, cloud=self.publish_cloud, cloud_prompts=self.cloud_prompts,
                            obstacle_prompts=self.obstacle_prompts, cloud_stride=self.cloud_stride,
                            cloud_max_points=self.cloud_max_points, clearing_cloud=self.publish_clearing_cloud,
                            object_depth_step=self.object_depth_step)

    @property
    def refine_options(self) -> RefineOptions:
        return RefineOptions(mode=self.refine, radius=self.refine_radius, depth_step=self.refine_depth_step)

    @property
    def temporal_options(self) -> TemporalOptions:
        return TemporalOptions(propagate=self.propagate, smoothing=self.smoothing, tracking=self.tracking,
                               max_missed=self.track_max_missed, flow=FlowOptions(flow_width=self.flow_width),
                               max_model_age=self.max_model_age)

    def depth_topic_of(self, camera: int, image_topic: str | None = None) -> tuple[str, str, str] | None:
        """(depth topic, its CameraInfo topic, the colour image's CameraInfo topic) of camera
        ``camera`` (whose image topic, after remapping, is ``image_topic``); None without depth."""
        depth = self.depth_topics[camera].strip() if self.depth_topics else ""
        if not depth:
            return None
        info = self.camera_info_topics[camera].strip() if self.camera_info_topics else ""
        colour = self.image_camera_info_topics[camera].strip() if self.image_camera_info_topics else ""
        return depth, info or camera_info_topic(depth), colour or camera_info_topic(image_topic or self.image_topics[camera])


def plain_value(value):
    """A parameter value as plain Python: arrays as lists, an unset string array as []."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else value


def _frozen(value):
    """Parameter arrays as tuples, so settings stay immutable."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not '{value}'")


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(problem)
