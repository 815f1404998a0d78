"""The ROS 2 node: cameras and prompts in; masks, label, overlay and confidences out.

Thin layer over :mod:`clipseg_ros.engine`: parameters, topics, services and message conversion.
Data flows one way: message -> numpy -> engine -> SegmentationResult -> messages.

Threads: the executor thread only stores the latest message of each camera and handles prompt
changes; one worker thread runs the throttled loop (take the newest frame of every camera that
has one, segment them in one batched call, publish). Older frames are overwritten, never queued,
so latency cannot grow.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import faulthandler
import gc
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field

import cv2
import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data,
                       qos_profile_system_default)
from rclpy.service import Service
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from clipseg_ros_interfaces.msg import Confidences, Segmentation
from clipseg_ros_interfaces.srv import SetPrompts

from clipseg_ros import diagnostics, messages
from clipseg_ros.conversions import (ImageConversionError, compressed_imgmsg_to_rgb8, cv2_to_imgmsg,
                                     imgmsg_to_rgb8)
from clipseg_ros.engine import (DEFAULT_MODEL, OUT_OF_MEMORY_ERRORS, ModelLoadError, PromptError,
                                SegmentationEngine, check_device_name, resolve_device, resolve_dtype,
                                set_num_threads, validate_template)
from clipseg_ros.postprocess import MAX_LABELS, render_overlay

INPUT_QOS = ("sensor_data", "reliable", "system_default")
MASK_RESOLUTIONS = ("input", "model")
# Path segments that name an image stream rather than a camera ("/front/color/image_raw" is
# camera "front_color").
_STREAM_WORDS = {"image", "image_raw", "image_rect", "image_rect_color", "image_color", "image_mono",
                 "compressed", "rgb", "raw"}
# Output publishers: reliable, depth 1 (consumers want the newest result; RViz's best-effort
# subscriptions are compatible with a reliable publisher).
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
WARN_THROTTLE_S = 5.0  # one log line per kind of problem (and camera) per this many seconds
_MAX_WARNING_KEYS = 256


def _find_malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS: nothing to do)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


# Per frame, inference allocates and frees tens of MB in mixed sizes from two threads; glibc keeps
# the freed heap, so RSS wandered by +-30 MB (1150-1219 MiB in a 10 min soak) without a leak.
# Returning free heap to the OS at most once per second keeps RSS flat; a call costs 8-10 ms next
# to the full-size model on 2 cores (2.4 ms with the tiny one), so at most 1% of one core.
_MALLOC_TRIM = _find_malloc_trim()
TRIM_PERIOD_S = 1.0
# Ctrl-C/SIGTERM must end the process within 2 s: teardown gets this long, then the process leaves.
TEARDOWN_DEADLINE_S = 1.2


def parse_prompt_text(text: str) -> list[str]:
    """Prompts from one string: separated by ';' or newlines, trimmed, empties and duplicates
    dropped (first occurrence kept)."""
    parts = (p.strip() for p in re.split(r"[;\n\r]+", text))
    return list(dict.fromkeys(p for p in parts if p))


def camera_name_from_topic(topic: str, index: int) -> str:
    """'/front/color/image_raw' -> 'front_color'; a name with no camera part -> 'camera<index>'."""
    words = [w for w in topic.strip("/").split("/") if w and w not in _STREAM_WORDS and not w.startswith("~")]
    name = re.sub(r"[^A-Za-z0-9_]", "_", "_".join(words)).strip("_")
    if not name or name[0].isdigit():
        name = f"camera{index}" if not name else f"camera_{name}"
    return name


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
        ("dtype", "auto", desc("auto (fp16 on CUDA, fp32 on CPU) | float32 | float16 | bfloat16", S, True)),
        ("prompts", None, desc("text prompts; change at runtime (also via ~/prompts, ~/set_prompts)", SA)),
        ("prompt_template", "{}", desc("template applied to each text prompt, e.g. 'a photo of a {}.'", S)),
        ("max_prompts", 32, desc("most prompts (text + image) accepted at once", I,
                                 integer_range=[IntegerRange(from_value=1, to_value=MAX_LABELS, step=1)])),
        ("image_topics", ["image"], desc("camera topics; a name ending in /compressed is a CompressedImage", SA,
                                         True)),
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
        ("num_threads", 0, desc("torch CPU threads (0 = torch default)", I,
                                integer_range=[IntegerRange(from_value=0, to_value=256, step=1)])),
        ("max_image_pixels", 4096 * 4096, desc("larger camera frames are refused with a warning (memory: masks "
                                               "take prompts x pixels bytes)", I,
                                               integer_range=[IntegerRange(from_value=1, to_value=1 << 30, step=1)])),
        ("input_timeout", 2.0, desc("diagnostics WARN when a camera sends nothing for this many seconds", D,
                                    floating_point_range=[FloatingPointRange(from_value=0.1, to_value=3600.0,
                                                                             step=0.0)])),
        ("max_latency", 3.0, desc("diagnostics WARN when latency p95 (receipt to publish, s) exceeds this, "
                                  "ERROR above twice it", D,
                                  floating_point_range=[FloatingPointRange(from_value=0.01, to_value=3600.0,
                                                                           step=0.0)])),
    ]


def _qos_for(name: str) -> QoSProfile:
    if name == "sensor_data":
        return qos_profile_sensor_data
    if name == "reliable":
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
    return qos_profile_system_default


@dataclass
class Camera:
    """One input stream and its output publishers. ``pending`` holds the newest unprocessed
    (message, receipt time); older ones are overwritten: no queue."""

    name: str
    topic: str
    compressed: bool
    prefix: str  # "~/" or "~/<name>/"
    stats: diagnostics.StreamStats
    pending: tuple | None = None
    publishers: dict = field(default_factory=dict)


class ClipSegNode(LifecycleNode):
    """Open-vocabulary segmentation node (see README for topics, services and parameters).

    A managed (lifecycle) node: ``configure`` loads the model and creates the publishers and the
    prompt interfaces, ``activate`` subscribes to the cameras and starts the inference thread,
    ``deactivate`` stops both (and frees cached CUDA memory), ``cleanup`` unloads the model.
    With ``lifecycle:=false`` (the default) :func:`main` runs configure and activate on start.
    Parameters and ``/diagnostics`` work in every state.
    """

    def __init__(self, node_name: str = "clipseg", **kwargs):
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        p = self._param
        self.engine: SegmentationEngine | None = None
        self.cameras: list[Camera] = []
        self._lock = threading.Condition()
        self._image_prompt_names: list[str] = []
        self._next_image_prompt_names: list[str] | None = None
        self._prompt_set = None
        self._settings = self._read_settings()
        self._configured_entities: list = []  # publishers, prompt topics and service: destroyed by cleanup
        self._camera_subscriptions: list = []  # destroyed by deactivate
        self._warned: dict[str, tuple[float, int]] = {}
        self._warn_lock = threading.Lock()
        self._load_error = ""
        self.frames_processed = 0
        # Initial prompts (parameters/YAML) are checked now, embedded by configure.
        initial = self._prompt_texts(p("prompts"))
        self._check_prompt_count(len(initial), p("max_prompts"))
        if initial != p("prompts"):  # trimmed/deduplicated: the parameter shows what is active
            self.set_parameters([Parameter("prompts", Parameter.Type.STRING_ARRAY, initial)])
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        if p("lifecycle"):
            self.get_logger().info("lifecycle mode: waiting for the configure transition")

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self._param
        try:
            device = self._select_device()
            engine = SegmentationEngine.from_pretrained(
                p("model"), device=device, dtype=p("dtype"), num_threads=p("num_threads"),
                prompt_template=p("prompt_template"))
        except (ModelLoadError, ValueError) as exc:
            self._load_error = str(exc)
            self.get_logger().error(str(exc))
            return TransitionCallbackReturn.FAILURE
        self.engine = engine
        self._load_error = ""
        self.get_logger().info(
            f"loaded '{p('model')}' on {engine.device} ({str(engine.dtype).replace('torch.', '')})")
        try:
            self._install_prompts(p("prompts"), [])
        except PromptError as exc:
            self.get_logger().error(f"initial prompts refused: {exc}")
            self._release_engine()
            return TransitionCallbackReturn.FAILURE

        self.cameras = self._make_cameras()
        for cam in self.cameras:
            cam.publishers = {
                "segmentation": self.create_publisher(Segmentation, cam.prefix + "segmentation", OUTPUT_QOS),
                "confidences": self.create_publisher(Confidences, cam.prefix + "confidences", OUTPUT_QOS),
                "label": self.create_publisher(Image, cam.prefix + "label", OUTPUT_QOS),
                "overlay": self.create_publisher(Image, cam.prefix + "overlay", OUTPUT_QOS),
            }
            self._configured_entities += cam.publishers.values()
        self._configured_entities += [
            self.create_subscription(String, "~/prompts", self._on_prompts_topic, 10),
            self.create_subscription(Image, "~/prompt_image", self._on_prompt_image, 10),
            self.create_service(SetPrompts, "~/set_prompts", self._on_set_prompts),
        ]
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        input_qos = _qos_for(self._param("input_qos"))
        now = time.monotonic()
        for cam in self.cameras:
            msg_type = CompressedImage if cam.compressed else Image
            self._camera_subscriptions.append(
                self.create_subscription(msg_type, cam.topic, lambda m, c=cam: self._on_image(c, m), input_qos))
            cam.stats.since = now
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run_worker, args=(self._stop,), name="clipseg_inference",
                                        daemon=True)
        self._worker.start()
        cams = ", ".join(f"{c.topic} -> {self.resolve_topic_name(c.prefix + 'segmentation')}" for c in self.cameras)
        self.get_logger().info(
            f"segmenting {cams} at {self._param('rate')} Hz; prompts: {list(self._prompt_set.names)}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_work(join_timeout=30.0)
        if self.engine is not None:
            self.engine.release_cache()
        self.get_logger().info("deactivated: cameras unsubscribed, inference stopped")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_engine()
        self.get_logger().info("cleaned up: model unloaded")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_work(join_timeout=0.5)
        self._release_engine()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error during a transition from '{state.label}': resetting to unconfigured")
        self._stop_work(join_timeout=5.0)
        self._release_engine()
        return TransitionCallbackReturn.SUCCESS

    def _stop_work(self, join_timeout: float) -> None:
        """Unsubscribe the cameras and stop the inference thread (the frame in flight finishes)."""
        for sub in self._camera_subscriptions:
            self.destroy_subscription(sub)
        self._camera_subscriptions = []
        self._stop.set()
        with self._lock:
            for cam in self.cameras:
                cam.pending = None
            self._lock.notify_all()
        worker = self._worker
        if worker is not None and worker.is_alive() and threading.current_thread() is not worker:
            worker.join(timeout=join_timeout)
        self._worker = None

    def _release_engine(self) -> None:
        for entity in self._configured_entities:
            if isinstance(entity, Service):
                self.destroy_service(entity)
            elif isinstance(entity, Subscription):
                self.destroy_subscription(entity)
            else:
                self.destroy_publisher(entity)
        self._configured_entities = []
        self.cameras = []
        self._prompt_set = None
        self._image_prompt_names = []
        if self.engine is not None:
            engine, self.engine = self.engine, None
            engine.release_cache()
            del engine
            gc.collect()

    def _select_device(self) -> str:
        """The configured device, or the CPU with a warning when CUDA is missing (unless
        ``device_strict``)."""
        requested = self._param("device")
        device = resolve_device(requested, fallback_to_cpu=not self._param("device_strict"))
        if check_device_name(requested).startswith("cuda") and device.type == "cpu":
            self.get_logger().warning(
                f"device '{requested}' requested but CUDA is not available here: running on the CPU "
                "(much slower). Set device_strict:=true to refuse instead.")
        return str(device)

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        for name, default, descriptor in parameter_specs():
            if default is None:  # rclpy types [] as a byte array: declare by type, then set to []
                declared = self.declare_parameter(name, Parameter.Type.STRING_ARRAY, descriptor)
                if declared.value is None and not descriptor.read_only:
                    self.set_parameters([Parameter(name, Parameter.Type.STRING_ARRAY, [])])
            else:
                self.declare_parameter(name, default, descriptor)
        self._check_static_parameters()

    def _check_static_parameters(self) -> None:
        p = self._param
        problems = [self._validate(name, p(name)) for name in
                    ("device", "dtype", "input_qos", "mask_resolution", "prompt_template")]
        if not p("image_topics"):
            problems.append("image_topics is empty")
        names = p("camera_names")
        if names and len(names) != len(p("image_topics")):
            problems.append(f"camera_names has {len(names)} entries for {len(p('image_topics'))} image_topics")
        problems = [x for x in problems if x]
        if problems:
            raise ValueError("invalid parameters: " + "; ".join(problems))

    def _param(self, name: str):
        value = self.get_parameter_or(name).value
        if value is None:
            return []  # a read-only string array left unset
        return list(value) if isinstance(value, (list, tuple)) else value

    def _validate(self, name: str, value) -> str | None:
        """Reason the value is refused, or None. Ranges and types are checked by rclpy."""
        try:
            if name == "device":
                check_device_name(value)  # whether it exists is configure's question
            elif name == "dtype":
                resolve_dtype(value, resolve_device("cpu"))
            elif name == "prompt_template":
                validate_template(value)
        except ValueError as exc:
            return str(exc)
        if name == "input_qos" and value not in INPUT_QOS:
            return f"input_qos must be one of {', '.join(INPUT_QOS)}, not '{value}'"
        if name == "mask_resolution" and value not in MASK_RESOLUTIONS:
            return f"mask_resolution must be one of {', '.join(MASK_RESOLUTIONS)}, not '{value}'"
        return None

    def _read_settings(self) -> dict:
        names = ("rate", "threshold", "publish_masks", "publish_label", "publish_overlay", "overlay_alpha",
                 "mask_resolution", "max_prompts", "max_image_pixels", "input_timeout", "max_latency")
        return {n: self._param(n) for n in names}

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        values = {p.name: (list(p.value) if isinstance(p.value, (list, tuple)) else p.value) for p in params}
        for name, value in values.items():
            reason = self._validate(name, value)
            if reason:
                self.get_logger().warning(f"rejected {name}={value!r}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        settings = dict(self._settings)
        settings.update({k: v for k, v in values.items() if k in settings})
        if "prompts" in values or "prompt_template" in values or "max_prompts" in values:
            texts = values.get("prompts", self._param("prompts"))
            images = (self._next_image_prompt_names if self._next_image_prompt_names is not None
                      else self._image_prompt_names)
            engine = self.engine
            old_template = engine.prompt_template if engine is not None else None
            try:
                texts = self._prompt_texts(texts, strict=True)
                self._check_prompt_count(len(texts) + len(images), settings["max_prompts"])
                if engine is not None:  # unconfigured: checked now, embedded by configure
                    engine.prompt_template = values.get("prompt_template", old_template)
                    self._install_prompts(texts, images)
            except (PromptError, ValueError) as exc:
                if engine is not None:
                    engine.prompt_template = old_template
                self.get_logger().warning(f"rejected prompts: {exc}")
                return SetParametersResult(successful=False, reason=str(exc))
        if "num_threads" in values:
            set_num_threads(values["num_threads"])
        self._settings = settings
        with self._lock:
            self._lock.notify_all()  # a new rate applies to the next wait
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ prompts
    @staticmethod
    def _prompt_texts(texts, strict: bool = False) -> list[str]:
        """Trimmed text prompts. ``strict`` (parameter sets): empty or duplicate entries are
        refused rather than silently changed, so the parameter always equals the active list."""
        texts = [str(t) for t in (texts or [])]
        cleaned = [t.strip() for t in texts]
        if strict:
            for i, t in enumerate(cleaned):
                if not t:
                    raise PromptError(f"prompt {i} is empty")
            dupes = sorted({t for t in cleaned if cleaned.count(t) > 1})
            if dupes:
                raise PromptError(f"duplicate prompts: {dupes}")
            if cleaned != texts:
                raise PromptError("prompts must not start or end with whitespace")
            return cleaned
        return list(dict.fromkeys(t for t in cleaned if t))

    @staticmethod
    def _check_prompt_count(count: int, limit: int) -> None:
        if count > limit:
            raise PromptError(f"{count} prompts exceed max_prompts={limit}")

    def _install_prompts(self, texts: list[str], image_names: list[str]) -> None:
        """Embed and atomically swap in a new prompt set (the frame in flight keeps its own)."""
        prompt_set = self.engine.make_prompt_set(texts, {n: None for n in image_names})
        for warning in prompt_set.warnings:
            self.get_logger().warning(warning)
        self._prompt_set = prompt_set
        self._image_prompt_names = list(image_names)
        self.get_logger().info(f"active prompts: {list(prompt_set.names)}")

    def _set_text_prompts(self, texts: list[str], image_names: list[str] | None = None) -> SetParametersResult:
        """Route every prompt change through the ``prompts`` parameter, so ``ros2 param get``
        always shows the active text prompts."""
        self._next_image_prompt_names = image_names
        try:
            return self.set_parameters([Parameter("prompts", Parameter.Type.STRING_ARRAY, texts)])[0]
        finally:
            self._next_image_prompt_names = None

    def _on_prompts_topic(self, msg: String) -> None:
        texts = parse_prompt_text(msg.data)
        if not texts:
            self._warn(f"prompts_topic:{msg.data[:40]!r}", f"~/prompts message {msg.data[:40]!r} holds no prompt (empty, whitespace "
                       "or separators only): prompts unchanged. To clear them, call ~/set_prompts with an "
                       "empty request or set the prompts parameter to [].")
            return
        result = self._set_text_prompts(texts)
        if not result.successful:
            self.get_logger().warning(f"~/prompts message refused: {result.reason}")

    def _embed_image_prompt(self, name: str, msg: Image) -> None:
        """Read an example image and cache its embedding under ``name``; PromptError if unreadable."""
        try:
            rgb = imgmsg_to_rgb8(msg)
        except ImageConversionError as exc:
            raise PromptError(f"image prompt '{name}': {exc}") from exc
        self.engine.embed_image_prompt(name, rgb)

    def _on_prompt_image(self, msg: Image) -> None:
        name = msg.header.frame_id.strip() or "image_prompt"
        try:
            names = [n for n in self._image_prompt_names if n != name] + [name]
            # Count before embedding: an example image costs a full vision pass.
            self._check_prompt_count(len(self._param("prompts")) + len(names), self._settings["max_prompts"])
            self._embed_image_prompt(name, msg)
        except PromptError as exc:
            self._warn("prompt_image", f"~/prompt_image '{name}' refused: {exc}")
            return
        result = self._set_text_prompts(self._param("prompts"), names)
        if not result.successful:
            self.get_logger().warning(f"~/prompt_image '{name}' refused: {result.reason}")

    def _on_set_prompts(self, request: SetPrompts.Request, response: SetPrompts.Response) -> SetPrompts.Response:
        def refuse(reason: str) -> SetPrompts.Response:
            self.get_logger().warning(f"~/set_prompts refused: {reason}")
            response.success = False
            response.message = reason
            response.active_prompts = list(self._prompt_set.names)
            return response

        if len(request.image_prompts) != len(request.image_prompt_names):
            return refuse(f"{len(request.image_prompts)} image_prompts but {len(request.image_prompt_names)} "
                          "image_prompt_names: give one name per image")
        empty = [i for i, t in enumerate(request.prompts) if not t.strip()]
        if empty:
            return refuse(f"prompt {empty[0]} is empty (an empty request clears all prompts)")
        texts = self._prompt_texts(request.prompts)  # trimmed, duplicates dropped
        names = [(n.strip() or f"image_prompt_{i}") for i, n in enumerate(request.image_prompt_names)]
        if len(set(names)) != len(names):
            return refuse(f"duplicate image prompt names: {names}")
        try:
            self._check_prompt_count(len(texts) + len(names), self._settings["max_prompts"])
            for name, img in zip(names, request.image_prompts):
                self._embed_image_prompt(name, img)
        except PromptError as exc:
            return refuse(str(exc))
        result = self._set_text_prompts(texts, names)
        if not result.successful:
            return refuse(result.reason)
        response.success = True
        response.active_prompts = list(self._prompt_set.names)
        response.message = f"{len(response.active_prompts)} prompts active"
        return response

    # ------------------------------------------------------------------ cameras
    def _make_cameras(self) -> list[Camera]:
        topics = self._param("image_topics")
        names = self._param("camera_names") or [camera_name_from_topic(t, i) for i, t in enumerate(topics)]
        seen: dict[str, int] = {}
        cameras = []
        for i, (topic, name) in enumerate(zip(topics, names)):
            if name in seen:  # two topics deriving the same name
                name = f"{name}_{i}"
            seen[name] = i
            prefix = "~/" if len(topics) == 1 else f"~/{name}/"
            cameras.append(Camera(name=name, topic=topic, compressed=topic.rstrip("/").endswith("/compressed"),
                                  prefix=prefix, stats=diagnostics.StreamStats(topic, time.monotonic())))
        return cameras

    def _on_image(self, cam: Camera, msg) -> None:
        now = time.monotonic()
        if not cam.compressed:
            # Refuse oversized frames here, before anything holds on to them.
            reason = self._too_large(msg.width, msg.height)
            if reason:
                cam.stats.on_received(now, superseded=False)
                self._refuse_frame(cam, now, reason)
                return
        with self._lock:
            superseded = cam.pending is not None
            cam.pending = (msg, now)
            self._lock.notify_all()
        cam.stats.on_received(now, superseded)

    def _too_large(self, width: int, height: int) -> str | None:
        limit = self._settings["max_image_pixels"]
        if width * height > limit:
            return f"{width}x{height} has {width * height} pixels, over max_image_pixels={limit}"
        return None

    def _refuse_frame(self, cam: Camera, now: float, reason: str) -> None:
        cam.stats.on_unreadable(now, reason)
        # Throttled per camera and kind of problem (numbers and quoted names masked), so a
        # different problem is still reported while a flood of the same one is not.
        kind = re.sub(r"'[^']*'|\d+", "#", reason)[:80]
        self._warn(f"{cam.name}:unreadable:{kind}", f"{cam.topic}: frame skipped: {reason}")

    def _warn(self, key: str, text: str, error: bool = False) -> None:
        """Log at most once per WARN_THROTTLE_S for each ``key`` (a kind of problem, per camera),
        saying how many were held back, so a 30 Hz stream of garbage cannot flood the log."""
        now = time.monotonic()
        with self._warn_lock:
            last, held_back = self._warned.get(key, (float("-inf"), 0))
            if now - last < WARN_THROTTLE_S:
                self._warned[key] = (last, held_back + 1)
                return
            if len(self._warned) >= _MAX_WARNING_KEYS:  # bounded: forget lines logged long ago
                self._warned = {k: v for k, v in self._warned.items() if now - v[0] < WARN_THROTTLE_S}
            self._warned[key] = (now, 0)
        if held_back:
            text += f" [{held_back} more like this in the last {now - last:.0f} s]"
        # rclpy pins one severity per call site: two calls, not one call with a chosen method.
        if error:
            self.get_logger().error(text)
        else:
            self.get_logger().warning(text)

    # ------------------------------------------------------------------ throttled loop
    def _run_worker(self, stop: threading.Event) -> None:
        next_due = 0.0
        last_trim = time.monotonic()
        while not stop.is_set():
            batch = self._wait_for_frames(stop, next_due)
            if not batch:
                continue
            started = time.monotonic()
            rate = self._settings["rate"]
            next_due = started + (1.0 / rate if rate > 0 else 0.0)
            try:
                self._process(batch)
            except Exception as exc:  # noqa: BLE001 - a bad frame must never stop the loop
                self._warn("process", f"frame dropped: {type(exc).__name__}: {exc}", error=True)
            if _MALLOC_TRIM is not None and time.monotonic() - last_trim >= TRIM_PERIOD_S:
                _MALLOC_TRIM(0)
                last_trim = time.monotonic()

    def _wait_for_frames(self, stop: threading.Event, next_due: float) -> list[tuple[Camera, object, float]]:
        with self._lock:
            while not stop.is_set():
                ready = [c for c in self.cameras if c.pending is not None]
                delay = next_due - time.monotonic()
                if ready and delay <= 0:
                    batch = [(c, *c.pending) for c in ready]
                    for c in ready:
                        c.pending = None
                    return batch
                self._lock.wait(timeout=min(delay, 0.5) if ready else 0.5)
        return []

    def _process(self, batch: list[tuple[Camera, object, float]]) -> None:
        # One consistent prompt set, engine and settings for the whole batch: a prompt change
        # during inference applies from the next frame on.
        prompt_set, settings, engine = self._prompt_set, self._settings, self.engine
        if engine is None or prompt_set is None:
            return
        cams, images, headers, arrivals = [], [], [], []
        for cam, msg, received_at in batch:
            try:
                if cam.compressed:  # size known only after decoding (raw frames: checked on arrival)
                    rgb = compressed_imgmsg_to_rgb8(msg)
                    reason = self._too_large(rgb.shape[1], rgb.shape[0])
                    if reason:
                        raise ImageConversionError(reason)
                else:
                    rgb = imgmsg_to_rgb8(msg)
            except ImageConversionError as exc:
                self._refuse_frame(cam, time.monotonic(), str(exc))
                continue
            if not cam.compressed and msg.encoding.lower() == "16uc1":
                self._warn(f"{cam.name}:16uc1", f"{cam.topic}: 16UC1 frames are read as 16-bit grey; if this is a "
                           "depth image, remap the camera input to the colour stream")
            cams.append(cam)
            images.append(rgb)
            headers.append(msg.header)
            arrivals.append(received_at)
        if not images:
            return
        oom_retries = engine.oom_retries
        try:
            results = engine.segment_batch(images, prompt_set, threshold=settings["threshold"],
                                           output_size=settings["mask_resolution"])
        except Exception as exc:  # noqa: BLE001 - out of memory, driver errors: drop the frame, go on
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            for cam in cams:
                cam.stats.on_failed(reason)
            if isinstance(exc, OUT_OF_MEMORY_ERRORS):
                engine.release_cache()
            self._warn("inference", f"segmentation failed, {len(images)} frame(s) dropped: {reason}", error=True)
            return
        if engine.oom_retries != oom_retries:
            self._warn("oom", "out of GPU memory: freed the cache and retried in smaller batches (fewer prompts, "
                       "fewer cameras or dtype float16 would avoid it)")
        for cam, rgb, header, received_at, result in zip(cams, images, headers, arrivals, results):
            if self._publish(cam, rgb, header, result, settings):
                now = time.monotonic()
                cam.stats.on_published(now, result.timings_ms.get("total", 0.0), (now - received_at) * 1e3)
        self.frames_processed += len(results)

    def _publish(self, cam: Camera, rgb, header, result, settings: dict) -> bool:
        pubs = cam.publishers
        inference_ms = result.timings_ms.get("total", 0.0)
        try:
            pubs["segmentation"].publish(messages.segmentation_msg(
                result, header, include_masks=settings["publish_masks"], inference_ms=inference_ms))
            pubs["confidences"].publish(messages.confidences_msg(result, header))
            if settings["publish_label"]:
                pubs["label"].publish(messages.label_msg(result, header))
            if settings["publish_overlay"]:
                overlay = render_overlay(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), result.label, result.prompts,
                                         alpha=settings["overlay_alpha"],
                                         scores=[s.max_score for s in result.stats])
                pubs["overlay"].publish(cv2_to_imgmsg(overlay, "bgr8", header))
            return True
        except Exception as exc:  # noqa: BLE001 - e.g. RCLError when a reliable subscriber lags
            self._warn(f"{cam.name}:publish", f"{cam.name}: publishing failed: {exc}")
            return False

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        state = self._state_machine.current_state[1]  # unconfigured, inactive, active, finalized
        name = self.get_name()
        engine = self.engine
        device = str(engine.device) if engine is not None else self._param("device")
        prompt_set = self._prompt_set
        prompts = list(prompt_set.names) if prompt_set is not None else self._param("prompts")
        if self._load_error:
            level, message = diagnostics.ERROR, f"model not loaded: {self._load_error}"
        else:
            level, message = diagnostics.OK, state
        values = {
            "state": state,
            "model": self._param("model"),
            "device": device,
            "dtype": str(engine.dtype).replace("torch.", "") if engine is not None else self._param("dtype"),
            "active prompts": str(len(prompts)),
            "prompts": "; ".join(prompts),
            "rate (Hz)": f"{self._settings['rate']:g}",
            "frames processed": str(self.frames_processed),
            "out-of-memory retries": str(engine.oom_retries if engine is not None else 0),
        }
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status.append(diagnostics.make_status(level, f"{name}: model", message, device, values))
        if state == "active":
            for cam in self.cameras:
                lvl, msg, cam_values = cam.stats.assess(now, self._settings["input_timeout"],
                                                        self._settings["max_latency"])
                array.status.append(diagnostics.make_status(lvl, f"{name}: {cam.name}", msg, device, cam_values))
        try:
            self._diagnostics_pub.publish(array)
        except Exception as exc:  # noqa: BLE001 - shutting down
            self._warn("diagnostics", f"publishing diagnostics failed: {exc}")

    # ------------------------------------------------------------------ lifetime
    def destroy_node(self) -> None:
        # Ctrl-C must end the process within 2 s: a frame still in flight is abandoned (the
        # inference thread is a daemon and only publishes through handles that are gone by now).
        self._stop_work(join_timeout=0.5)
        super().destroy_node()
        # rclpy's LifecycleNode leaves its state machine, and through it the node handle and the
        # DDS participant, to the garbage collector. Release it now so that shutdown removes the
        # participant's shared-memory segments in /dev/shm and tells peers it left (a fast exit
        # would otherwise leave 8 files behind per run and stale peers for others to time out).
        self._state_machine.destroy_when_not_in_use()


def main(args=None, teardown_deadline_s: float | None = None) -> int:
    """``clipseg_node``: exit status 0 on Ctrl-C/SIGTERM, 1 when parameters or the model are
    unusable (plain mode; in lifecycle mode a failed configure leaves the node unconfigured).

    ``teardown_deadline_s``: if destroying the node and the DDS participant takes longer, the
    process exits anyway with status 1 (for :func:`run`). Fast DDS 3.2's TCP transport (in LARGE_DATA) can
    deadlock in participant deletion (seen here: ``TCPChannelResourceBasic::disconnect`` waiting
    on a mutex forever; eProsima/Fast-DDS#6066 fixes one such case), and a robot's node must not
    hang on Ctrl-C because of it."""
    rclpy.init(args=args)
    node = None
    status = 0
    try:
        node = ClipSegNode()
        if not node._param("lifecycle"):
            # A failed transition has logged its reason (on_configure names the model and the fix).
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                status = 1
            elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                status = 1
        if status == 0:
            rclpy.spin(node)
    except ValueError as exc:
        rclpy.logging.get_logger("clipseg").fatal(str(exc))
        status = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if teardown_deadline_s is not None:
            _exit_if_stuck(teardown_deadline_s)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return status


def _exit_if_stuck(deadline_s: float) -> None:
    """End the process (status 1, thread stacks on stderr) if teardown is still running after
    ``deadline_s``. faulthandler's watchdog is a C thread: it fires even while the main thread is
    stuck inside a C call that holds the GIL, as a Python thread could not (seen: the DDS
    deadlock blocked rclpy's node destruction with the GIL held)."""
    sys.stderr.write(f"[clipseg] shutting down (teardown deadline {deadline_s:g} s)\n")
    sys.stderr.flush()
    faulthandler.dump_traceback_later(deadline_s, exit=True)


def run() -> None:
    """Process entry point (``clipseg_node``, ``python -m clipseg_ros.node``): :func:`main`, then
    exit at once. Everything that needs closing (node, DDS, inference thread) is closed by then;
    the interpreter's own teardown with transformers imported takes 1.2-1.8 s on a 2-core
    machine, which would break the 2 s budget for Ctrl-C/SIGTERM."""
    status = main(teardown_deadline_s=TEARDOWN_DEADLINE_S)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    run()
