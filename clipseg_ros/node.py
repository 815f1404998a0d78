"""The ROS 2 node: cameras and prompts in; masks, label, overlay and confidences out.

Thin layer over :mod:`clipseg_ros.engine`: parameters, topics, services and message conversion.
Data flows one way: message -> numpy -> engine -> SegmentationResult -> messages.

Threads: the executor thread only stores the latest message of each camera and handles prompt
changes; one worker thread runs the throttled loop (take the newest frame of every camera that
has one, segment them in one batched call, publish). Older frames are overwritten, never queued,
so latency cannot grow.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass, field

import cv2
import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data,
                       qos_profile_system_default)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from clipseg_ros_interfaces.msg import Confidences, Segmentation
from clipseg_ros_interfaces.srv import SetPrompts

from clipseg_ros import messages
from clipseg_ros.conversions import (ImageConversionError, compressed_imgmsg_to_rgb8, cv2_to_imgmsg,
                                     imgmsg_to_rgb8)
from clipseg_ros.engine import (DEFAULT_MODEL, ModelLoadError, PromptError, SegmentationEngine,
                                resolve_device, resolve_dtype, set_num_threads, validate_template)
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
WARN_THROTTLE_S = 5.0


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
        ("model", DEFAULT_MODEL, desc("hub id or local directory of a CLIPSeg checkpoint (safetensors)", S, True)),
        ("device", "auto", desc("auto | cpu | cuda | cuda:<index>", S, True)),
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
    message (older ones are overwritten: no queue)."""

    name: str
    topic: str
    compressed: bool
    prefix: str  # "~/" or "~/<name>/"
    pending: object = None
    received: int = 0
    processed: int = 0
    dropped: int = 0
    publishers: dict = field(default_factory=dict)


class ClipSegNode(Node):
    """Open-vocabulary segmentation node (see README for topics, services and parameters)."""

    def __init__(self, node_name: str = "clipseg", **kwargs):
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        p = self._param
        self.engine = SegmentationEngine.from_pretrained(
            p("model"), device=p("device"), dtype=p("dtype"), num_threads=p("num_threads"),
            prompt_template=p("prompt_template"))
        self.get_logger().info(
            f"loaded '{p('model')}' on {self.engine.device} ({str(self.engine.dtype).replace('torch.', '')})")

        self._lock = threading.Condition()
        self._image_prompt_names: list[str] = []
        self._next_image_prompt_names: list[str] | None = None
        self._prompt_set = self.engine.make_prompt_set([])
        self._settings = self._read_settings()
        # Build the initial prompt set (from parameters/YAML) through the same path as later changes.
        initial = self._prompt_texts(p("prompts"))
        self._check_prompt_count(len(initial), p("max_prompts"))
        if initial != p("prompts"):  # trimmed/deduplicated: the parameter shows what is active
            self.set_parameters([Parameter("prompts", Parameter.Type.STRING_ARRAY, initial)])
        self._install_prompts(initial, [])
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.cameras = self._make_cameras()
        input_qos = _qos_for(p("input_qos"))
        for cam in self.cameras:
            msg_type = CompressedImage if cam.compressed else Image
            self.create_subscription(msg_type, cam.topic, lambda m, c=cam: self._on_image(c, m), input_qos)
            cam.publishers = {
                "segmentation": self.create_publisher(Segmentation, cam.prefix + "segmentation", OUTPUT_QOS),
                "confidences": self.create_publisher(Confidences, cam.prefix + "confidences", OUTPUT_QOS),
                "label": self.create_publisher(Image, cam.prefix + "label", OUTPUT_QOS),
                "overlay": self.create_publisher(Image, cam.prefix + "overlay", OUTPUT_QOS),
            }
        self.create_subscription(String, "~/prompts", self._on_prompts_topic, 10)
        self.create_subscription(Image, "~/prompt_image", self._on_prompt_image, 10)
        self.create_service(SetPrompts, "~/set_prompts", self._on_set_prompts)

        self.frames_processed = 0
        self._worker = threading.Thread(target=self._run_worker, name="clipseg_inference", daemon=True)
        self._worker.start()
        cams = ", ".join(f"{c.topic} -> {self.resolve_topic_name(c.prefix + 'segmentation')}" for c in self.cameras)
        self.get_logger().info(f"segmenting {cams} at {p('rate')} Hz; prompts: {list(self._prompt_set.names)}")

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
                resolve_device(value)
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
                 "mask_resolution", "max_prompts")
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
            old_template = self.engine.prompt_template
            try:
                texts = self._prompt_texts(texts, strict=True)
                self._check_prompt_count(len(texts) + len(images), settings["max_prompts"])
                self.engine.prompt_template = values.get("prompt_template", old_template)
                self._install_prompts(texts, images)
            except (PromptError, ValueError) as exc:
                self.engine.prompt_template = old_template
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
            self.get_logger().warning(f"~/prompt_image '{name}' refused: {exc}",
                                      throttle_duration_sec=WARN_THROTTLE_S)
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
        texts = self._prompt_texts(request.prompts)
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
                                  prefix=prefix))
        return cameras

    def _on_image(self, cam: Camera, msg) -> None:
        with self._lock:
            if cam.pending is not None:
                cam.dropped += 1
            cam.pending = msg
            cam.received += 1
            self._lock.notify_all()

    # ------------------------------------------------------------------ throttled loop
    def _run_worker(self) -> None:
        next_due = 0.0
        while not self._stop.is_set():
            batch = self._wait_for_frames(next_due)
            if not batch:
                continue
            started = time.monotonic()
            rate = self._settings["rate"]
            next_due = started + (1.0 / rate if rate > 0 else 0.0)
            try:
                self._process(batch)
            except Exception as exc:  # noqa: BLE001 - a bad frame must never stop the loop
                self.get_logger().error(f"segmentation failed, frame dropped: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=WARN_THROTTLE_S)

    def _wait_for_frames(self, next_due: float) -> list[tuple[Camera, object]]:
        with self._lock:
            while not self._stop.is_set():
                ready = [c for c in self.cameras if c.pending is not None]
                delay = next_due - time.monotonic()
                if ready and delay <= 0:
                    batch = [(c, c.pending) for c in ready]
                    for c in ready:
                        c.pending = None
                    return batch
                self._lock.wait(timeout=min(delay, 0.5) if ready else 0.5)
        return []

    def _process(self, batch: list[tuple[Camera, object]]) -> None:
        prompt_set = self._prompt_set  # one consistent set for the whole batch
        settings = self._settings
        cams, images, headers = [], [], []
        for cam, msg in batch:
            try:
                rgb = compressed_imgmsg_to_rgb8(msg) if cam.compressed else imgmsg_to_rgb8(msg)
            except ImageConversionError as exc:
                self.get_logger().warning(f"{cam.topic}: frame skipped: {exc}", throttle_duration_sec=WARN_THROTTLE_S)
                continue
            cams.append(cam)
            images.append(rgb)
            headers.append(msg.header)
        if not images:
            return
        results = self.engine.segment_batch(images, prompt_set, threshold=settings["threshold"],
                                            output_size=settings["mask_resolution"])
        for cam, rgb, header, result in zip(cams, images, headers, results):
            self._publish(cam, rgb, header, result, settings)
            cam.processed += 1
        self.frames_processed += len(results)

    def _publish(self, cam: Camera, rgb, header, result, settings: dict) -> None:
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
        except Exception as exc:  # noqa: BLE001 - e.g. RCLError when a reliable subscriber lags
            self.get_logger().warning(f"{cam.name}: publishing failed: {exc}", throttle_duration_sec=WARN_THROTTLE_S)

    # ------------------------------------------------------------------ lifetime
    def destroy_node(self) -> None:
        self._stop.set()
        if self._worker is None:
            super().destroy_node()
            return
        with self._lock:
            self._lock.notify_all()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = ClipSegNode()
        rclpy.spin(node)
    except (ModelLoadError, ValueError) as exc:
        rclpy.logging.get_logger("clipseg").fatal(str(exc))
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
