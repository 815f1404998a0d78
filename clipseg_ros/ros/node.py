"""The ROS 2 node: cameras and prompts in; masks, label, overlay, confidences, objects and 3D out.

A thin shell over the ROS-free core. Data flows one way: message -> array (:mod:`conversions`)
-> engine -> SegmentationResult -> scene (:mod:`scene`) -> messages (:mod:`messages`). The roles
it wires together live in their own modules: parameters (:mod:`settings`), prompt topics and
services (:mod:`prompt_interfaces`, over the core's prompt keeper), frames and the worker threads
(:mod:`cameras`), depth inputs (:mod:`depth_inputs`), each camera over time (:mod:`temporal`), publishers
(:mod:`outputs`), health (:mod:`diagnostics`), the process (:mod:`process`).

Threads: the executor that spins the node only stores the newest message of each camera and
handles parameters, lifecycle, diagnostics, ``~/prompts`` and ``~/set_thresholds``. Embedding an
example image (a full vision pass) runs on the prompt interfaces' helper thread, so the rest
stays answered meanwhile whatever executor spins the node. (rclpy's MultiThreadedExecutor would
separate them too, but under the short soak's two cameras at 45 Hz its output fell from 5 to
1-2.6 Hz per window.) One worker thread runs the throttled inference loop (decoding a frame and
the model); with ``pipeline`` an outputs thread makes each batch's outputs
(post-processing, smoothing, objects, 3D, messages, publishing) while the model segments the next
frame, one batch at a time and in order; with ``propagate`` a lower-priority thread carries masks
to the frames in between. ``top -H`` shows them as clipseg_inferen(ce), clipseg_outputs and
clipseg_propag(ation) (torch's and onnxruntime's pool threads take the name of the thread that
started them).
"""

from __future__ import annotations

import gc
import itertools
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace

import cv2
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data, qos_profile_system_default
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from clipseg_ros.core.model.device import OUT_OF_MEMORY_ERRORS, check_device_name, resolve_device, set_num_threads
from clipseg_ros.core.model.engine import InferredBatch, ModelLoadError, SegmentationEngine
from clipseg_ros.core.model.random_checkpoint import UNTRAINED_NOTE, is_untrained
from clipseg_ros.core.motion.propagation import PropagationStopped
from clipseg_ros.core.motion.temporal import CameraTimeline, propagation_rate
from clipseg_ros.core.prompts.keeper import PromptKeeper
from clipseg_ros.core.prompts.prompt_book import PromptBook, PromptError, thresholds_from_parameter, tidy_texts
from clipseg_ros.core.results.geometry import DepthError
from clipseg_ros.core.results.refinement import refine_result
from clipseg_ros.core.results.scene import DepthFrame, build_scene
from clipseg_ros.ros import diagnostics, vision_messages
from clipseg_ros.ros.cameras import CameraSpec, Frame, FrameSlots, FrameWorker, OutputWorker, camera_specs
from clipseg_ros.ros.conversions import ImageConversionError, check_image_layout, check_image_size, read_rgb8
from clipseg_ros.ros.depth_inputs import DepthInput, stamp_seconds
from clipseg_ros.ros.messages import build_outputs
from clipseg_ros.ros.outputs import OutputPublishers, PublishGate
from clipseg_ros.ros.prompt_interfaces import PromptInterfaces, mirror_into_parameters
from clipseg_ros.ros.settings import NodeSettings, parameter_specs, plain_value
from clipseg_ros.ros.throttled_log import ThrottledLog, failure_line, problem_kind

PROPAGATION_SWITCH_INTERVAL_S = 0.0005
# Ctrl-C: every thread is told to stop at once, then all are waited for this long together, well
# inside the process's teardown deadline (process.TEARDOWN_DEADLINE_S, 1.2 s) beside DDS teardown.
SHUTDOWN_JOIN_S = 0.6


def input_qos(name: str) -> QoSProfile:
    if name == "sensor_data":
        return qos_profile_sensor_data
    if name == "reliable":
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
    return qos_profile_system_default


@dataclass
class Camera:
    """One configured camera: what it is, how it is doing, where its results go."""

    spec: CameraSpec
    stats: diagnostics.StreamStats
    publishers: OutputPublishers
    timeline: CameraTimeline  # the last model frame, smoothing, tracks
    newest: Frame | None = None  # the newest frame that passed the arrival checks (an overtaken model result goes to it)
    recent: deque = field(default_factory=deque)  # (stamp s, Frame) of the last teach_history frames (for ~/teach)
    depth: DepthInput | None = None  # subscribed while active, when the camera has a depth topic
    received: int = 0  # frames that passed the arrival checks (their sequence numbers)
    published: int = -1  # sequence number of the newest frame published: outputs never go back
    inferring: int = -1  # sequence number of the newest frame the model took: propagation leaves it to the model


@dataclass(frozen=True)
class ModelWork:
    """One batch from the model thread to the outputs thread: the frames taken (camera, frame,
    decoded RGB), the model's output for them, and the prompt set, settings and engine they were
    segmented with (a change meanwhile applies from the next batch on)."""

    taken: tuple
    inferred: InferredBatch
    prompt_set: object
    settings: NodeSettings
    engine: SegmentationEngine


class ClipSegNode(LifecycleNode):
    """Open-vocabulary segmentation node (see README for topics, services and parameters).

    A managed (lifecycle) node: ``configure`` loads the model and creates the publishers and the
    prompt interfaces, ``activate`` subscribes to the cameras and starts the inference thread,
    ``deactivate`` stops both (and frees cached CUDA memory), ``cleanup`` unloads the model.
    With ``lifecycle:=false`` (the default) :func:`clipseg_ros.ros.process.main` runs configure and
    activate on start. Parameters and ``/diagnostics`` work in every state.
    """

    def __init__(self, node_name: str = "clipseg", **kwargs):
        # What destroy_node needs exists before anything can fail (rclpy destroys a node whose
        # constructor raised when the context shuts down).
        self._gate = PublishGate()
        self._worker: FrameWorker | None = None
        self._propagation_worker: FrameWorker | None = None
        self._outputs: OutputWorker | None = None
        self._camera_subscriptions: list = []  # destroyed by deactivate
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        values = self._parameter_values()
        self.settings = NodeSettings.from_values(values)  # ValueError: the process exits, naming them
        # Prompts given at start are tidied (trimmed, duplicates dropped) and the parameter shows
        # the result; they are checked now and embedded by configure.
        initial = tidy_texts(values["prompts"])
        self.prompts = PromptBook(initial, template=values["prompt_template"], max_prompts=values["max_prompts"],
                                  thresholds=thresholds_from_parameter(values["prompt_thresholds"]))
        if initial != values["prompts"]:
            self.set_parameters([Parameter("prompts", Parameter.Type.STRING_ARRAY, initial)])
        self.log = ThrottledLog(self.get_logger())
        self.prompt_keeper = PromptKeeper(self.prompts, self.settings.prompt_store, self.get_logger(),
                                          mirror=lambda state: mirror_into_parameters(self, state))
        self.prompt_interfaces = PromptInterfaces(self, self.prompt_keeper, self.teaching_frame)
        self.engine: SegmentationEngine | None = None
        self._logged_precision = None  # the precision last written to the log (it changes once an int8 export ends)
        self.cameras: list[Camera] = []
        self._slots = FrameSlots(len(self.settings.image_topics))
        # Pipelined: a frame's outputs are made on their own thread while the model works on the next.
        self._model_s: float | None = None  # the model's time per batch (average), without handing over
        if self.settings.pipeline:
            self._outputs = OutputWorker(self._deliver, on_error=self._on_worker_error)
        self._worker = FrameWorker(self._slots, self._process, rate=lambda: self.settings.rate,
                                   on_error=self._on_worker_error,
                                   ready_at=None if self._outputs is None else self._next_model_start)
        # Propagation: its own newest-frame slots and thread, niced so that the model's threads
        # get the CPU first (propagation uses spare time only; see on_activate).
        self._switch_interval: float | None = None  # the process's own, while propagation has changed it
        self._opencv_threads: int | None = None
        self._track_ids = itertools.count(1)  # one source for every camera and configure: ids never repeat
        self._propagation_slots = FrameSlots(len(self.settings.image_topics))
        self._propagation_worker = FrameWorker(self._propagation_slots, self._propagate,
                                               rate=self._propagation_rate,
                                               on_error=self._on_worker_error, name="clipseg_propagation", nice=10)
        self._load_error = ""
        self._overlay_note = ""  # written on every overlay: set when the model is a generated random one
        self._warned_targets: set[str] = set()  # target_prompt values said to be inactive
        self.frames_processed = 0
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # rclpy stores a parameter's new value after the on-set callback returns, without a lock;
        # a prompt commit on the helper thread in between would leave the parameter showing one
        # value while another is active. So the prompt lock is held from the on-set callback to
        # the post-set one (rclpy >= Iron; without it the window stays, as on Humble).
        self._parameter_lock_spans_store = hasattr(self, "add_post_set_parameters_callback")
        if self._parameter_lock_spans_store:
            self.add_post_set_parameters_callback(lambda params: self.prompt_keeper.lock.release())
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        if self.settings.lifecycle:
            self.get_logger().info("lifecycle mode: waiting for the configure transition")

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        s = self.settings
        try:
            device = self._select_device()
            # first masks at once: a first int8 export (~5 s) runs beside them
            engine = SegmentationEngine.from_pretrained(s.model, device=device, dtype=s.dtype,
                                                        num_threads=s.num_threads, export_in_background=True)
        except (ModelLoadError, ValueError) as exc:
            self._load_error = str(exc)
            self.get_logger().error(str(exc))
            return TransitionCallbackReturn.FAILURE
        self._load_error = ""
        self._overlay_note = UNTRAINED_NOTE if is_untrained(s.model) else ""
        self._logged_precision = engine.precision
        self.get_logger().info(f"loaded '{s.model}' on {engine.device}, precision {engine.precision.describe()}")
        try:
            self.prompt_keeper.attach(engine)
        except PromptError as exc:
            self.get_logger().error(f"initial prompts refused: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.engine = engine
        specs = camera_specs(s.image_topics, s.camera_names, resolve=self.resolve_topic_name)
        self.cameras = [Camera(spec, diagnostics.StreamStats(spec.resolved_topic, time.monotonic()),
                               OutputPublishers(self, spec.prefix, spatial=s.depth_topic_of(spec.index) is not None,
                                                options=s.output_options),
                               CameraTimeline(s.temporal_options, self._track_ids))
                        for spec in specs]
        if s.publish_detections and vision_messages.UNAVAILABLE:
            self.get_logger().warning(f"{vision_messages.UNAVAILABLE}; ~/detections, ~/detections_3d and "
                                      "~/label_info are not published (the other outputs are)")
        # the class map, latched, before the first frame: a consumer that starts now has it
        announced = Header(stamp=self.get_clock().now().to_msg())
        for cam in self.cameras:
            cam.publishers.publish_label_info(self.prompts.state.names, s.threshold, announced)
        self.prompt_interfaces.start()
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for cam in self.cameras:  # nothing is carried from before a deactivation
            cam.timeline.reset()
            cam.newest, cam.published, cam.inferring = None, -1, -1
            cam.recent = deque(maxlen=self.settings.teach_history)
        if self.settings.propagate:
            self._begin_propagation()
        try:
            # The previous model thread (still finishing a frame after a deactivate) ends before
            # the outputs thread starts: its result is not published after the deactivation.
            if self._worker.running and not self._worker.stop(30.0):
                raise RuntimeError("the previous inference thread is still busy after 30 s")
            if self._outputs is not None:
                self._outputs.start()
            self._worker.start()
            if self.settings.propagate:
                self._propagation_worker.start()
        except RuntimeError as exc:
            self.get_logger().error(f"cannot activate: {exc}")
            self._end_propagation()
            return TransitionCallbackReturn.FAILURE
        self._gate.reopen()
        qos = input_qos(self.settings.input_qos)
        now = time.monotonic()
        for cam in self.cameras:
            msg_type = CompressedImage if cam.spec.compressed else Image
            self._camera_subscriptions.append(self.create_subscription(
                msg_type, cam.spec.resolved_topic, lambda m, c=cam: self._on_image(c, m), qos))
            topics = self.settings.depth_topic_of(cam.spec.index, cam.spec.resolved_topic)
            if topics is not None:
                depth_topic, info_topic, colour_info_topic = topics
                cam.depth = DepthInput(self, depth_topic, info_topic, qos, colour_info_topic,
                                       self.settings.depth_camera_model)
            cam.stats.since = now
        cams = ", ".join(f"{c.spec.resolved_topic}{' (compressed)' if c.spec.compressed else ''}"
                         f"{f' + depth {c.depth.depth_topic}' if c.depth is not None else ''} -> "
                         f"{self.resolve_topic_name(c.spec.prefix + 'segmentation')}" for c in self.cameras)
        self.get_logger().info(f"segmenting {cams} at {self.settings.rate} Hz; prompts: "
                               f"{list(self.prompts.state.names)}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_work(join_timeout=30.0, clear_markers=True)
        if self.engine is not None:
            self.engine.release_cache()
        self.get_logger().info("deactivated: cameras unsubscribed, inference stopped")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_engine()
        self.get_logger().info("cleaned up: model unloaded")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_work(join_timeout=SHUTDOWN_JOIN_S, stop_helper=True)
        self._release_engine(join_timeout=0.0)  # the helper thread was stopped with the others
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error during a transition from '{state.label}': resetting to unconfigured")
        self._stop_work(join_timeout=5.0)
        self._release_engine()
        return TransitionCallbackReturn.SUCCESS

    def _stop_work(self, join_timeout: float, clear_markers: bool = False, stop_helper: bool = False) -> None:
        """Unsubscribe the cameras, stop the worker threads (a frame in flight finishes if it
        can within ``join_timeout``, for all threads together: each is told first, then all are
        waited for), then stop publishing (after removing the cameras' markers from RViz when
        ``clear_markers``). ``stop_helper``: the prompt interfaces' thread is told too."""
        deadline = time.monotonic() + join_timeout
        for sub in self._camera_subscriptions:
            self.destroy_subscription(sub)
        self._camera_subscriptions = []
        for cam in self.cameras:
            if cam.depth is not None:
                cam.depth.destroy(self)
                cam.depth = None
            cam.newest = None  # nothing is taught from before a deactivation
            cam.recent.clear()
        workers = [w for w in (self._worker, self._propagation_worker) if w is not None]
        for worker in workers:
            worker.request_stop()
        if stop_helper:
            self.prompt_interfaces.request_stop()
        if workers and not self._worker.stop(deadline - time.monotonic()):
            self.get_logger().warning(f"inference is still finishing a frame after {join_timeout:g} s: its result "
                                      "will not be published, and the next activate waits for it")
        if self._outputs is not None:  # after the model thread: what it handed over still goes out
            self._outputs.stop(deadline - time.monotonic())
        if self._propagation_worker is not None:
            self._propagation_worker.stop(deadline - time.monotonic())
        if stop_helper:
            self.prompt_interfaces.stop(deadline - time.monotonic())
        self._end_propagation()
        if clear_markers:
            stamp = self.get_clock().now().to_msg()
            for cam in self.cameras:
                self._gate.run(lambda c=cam: c.publishers.clear_markers(Header(stamp=stamp)))
        self._gate.close()

    def _begin_propagation(self) -> None:
        """While propagation runs: torch releases the GIL during each op and takes it back after;
        with a second busy Python thread the model thread then waits up to the switch interval
        (5 ms) per op, so it is shortened. OpenCV runs on the calling thread only, so that the
        propagation thread's nice and its CPU budget (measured with ``time.thread_time``) cover
        all of its work: OpenCV's pool threads take the nice of whoever first used them and are
        not counted in the thread's time (they did about half of it)."""
        if self._switch_interval is None:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(PROPAGATION_SWITCH_INTERVAL_S)
        if self._opencv_threads is None:
            self._opencv_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)

    def _end_propagation(self) -> None:
        """The process's own switch interval and OpenCV threads again."""
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None
        if self._opencv_threads is not None:
            cv2.setNumThreads(self._opencv_threads)
            self._opencv_threads = None

    def _release_engine(self, join_timeout: float = 5.0) -> None:
        self.prompt_interfaces.stop(join_timeout)
        for cam in self.cameras:
            cam.publishers.destroy()
        self.cameras = []
        self.prompt_keeper.detach()
        if self.engine is not None:
            engine, self.engine = self.engine, None
            engine.release_cache()
            del engine
            gc.collect()

    def _select_device(self) -> str:
        """The configured device, or the CPU with a warning when CUDA is missing (unless
        ``device_strict``)."""
        requested = self.settings.device
        device = resolve_device(requested, fallback_to_cpu=not self.settings.device_strict)
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

    def _parameter_values(self) -> dict:
        return {name: plain_value(self.get_parameter_or(name).value) for name, _, _ in parameter_specs()}

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Check and apply parameter changes. The prompt lock is taken here and, on success,
        released by the post-set callback, once rclpy has stored the values."""
        self.prompt_keeper.lock.acquire()
        accepted = False
        try:
            values = {p.name: plain_value(p.value) for p in params}
            try:
                settings = self.settings.updated(values)
                self.prompt_interfaces.on_parameters(values)
            except (PromptError, ValueError) as exc:
                names = ", ".join(f"{k}={v!r}" for k, v in values.items())
                self.get_logger().warning(f"rejected {names}: {exc}")
                return SetParametersResult(successful=False, reason=str(exc))
            if "num_threads" in values:
                set_num_threads(values["num_threads"])
            self.settings = settings
            self._slots.wake()  # a new rate applies to the next wait
            accepted = True
            return SetParametersResult(successful=True)
        finally:
            if not (accepted and self._parameter_lock_spans_store):
                self.prompt_keeper.lock.release()

    # ------------------------------------------------------------------ cameras
    def _on_image(self, cam: Camera, msg) -> None:
        """Executor: check what is cheap to check (size, from the header for a compressed
        frame; layout of a raw one), then keep only the newest frame."""
        now = time.monotonic()
        try:
            check_image_size(msg, self.settings.max_image_pixels)
            if not cam.spec.compressed:
                check_image_layout(msg)
        except ImageConversionError as exc:
            cam.stats.on_received(now, superseded=False)
            self._refuse_frame(cam, now, str(exc))
            return
        frame = Frame(cam.spec.index, msg, now, cam.received)
        cam.received += 1
        cam.newest = frame
        cam.recent.append((stamp_seconds(msg.header.stamp), frame))
        if self.settings.propagate:
            self._propagation_slots.put(frame)
        cam.stats.on_received(now, self._slots.put(frame))

    def _refuse_frame(self, cam: Camera, now: float, reason: str) -> None:
        cam.stats.on_unreadable(now, reason)
        self.log.warning(f"{cam.spec.name}:unreadable:{problem_kind(reason)}",
                         f"{cam.spec.resolved_topic}: frame skipped: {reason}")

    # ------------------------------------------------------------------ inference thread
    def _on_worker_error(self, exc: Exception) -> None:
        self.log.error("process", f"frame dropped: {type(exc).__name__}: {exc}")

    def _process(self, batch: list[Frame]) -> None:
        """Model thread: decode the batch's frames and run the model on them; the rest of each
        frame's work (:meth:`_deliver`) goes to the outputs thread when the node is pipelined,
        so that it overlaps the model's work on the next batch."""
        # One consistent prompt set, engine and settings for the whole batch: a change during
        # inference applies from the next frame on.
        prompt_set, settings, engine, cameras = self.prompts.prompt_set, self.settings, self.engine, self.cameras
        if engine is None or prompt_set is None:
            return
        started = time.monotonic()
        taken = []
        for frame in batch:
            cam, msg = cameras[frame.camera], frame.message
            try:
                rgb = read_rgb8(msg)  # its size was checked on arrival
            except ImageConversionError as exc:
                self._refuse_frame(cam, time.monotonic(), str(exc))
                continue
            cam.stats.on_readable(time.monotonic())
            cam.inferring = max(cam.inferring, frame.sequence)
            if not cam.spec.compressed and msg.encoding.lower() == "16uc1":
                self.log.warning(f"{cam.spec.name}:16uc1", f"{cam.spec.resolved_topic}: 16UC1 frames are read as "
                                 "16-bit grey; if this is a depth image, remap the camera input to the colour stream")
            taken.append((cam, frame, rgb))
        if not taken:
            return
        oom_retries = engine.oom_retries
        try:
            inferred = engine.infer_batch([rgb for _, _, rgb in taken], prompt_set)
        except Exception as exc:  # noqa: BLE001 - out of memory, NaN output, driver errors: drop, go on
            self._segmentation_failed(taken, exc, engine)
            return
        if engine.oom_retries != oom_retries:
            self.log.warning("oom", "out of GPU memory: freed the cache and retried in smaller batches (fewer "
                             "prompts, fewer cameras or dtype float16 would avoid it)")
        took = time.monotonic() - started
        self._model_s = took if self._model_s is None else 0.7 * self._model_s + 0.3 * took
        work = ModelWork(tuple(taken), inferred, prompt_set, settings, engine)
        if self._outputs is None:
            self._deliver(work)
        else:
            self._outputs.hand(work)  # False: stopped meanwhile (deactivate, shutdown): not published, as said then

    def _next_model_start(self) -> float:
        """Model thread, after handing a batch over: when to take the next frame. At once while
        the model is the slower stage; when the outputs are, so that the model's result is ready
        as the outputs thread becomes free (a frame taken earlier would only wait, getting older)."""
        model_s = self._model_s or 0.0
        return self._outputs.free_at() - model_s

    def _segmentation_failed(self, taken, exc: Exception, engine: SegmentationEngine) -> None:
        reason = failure_line(exc)
        for cam, _, _ in taken:
            cam.stats.on_failed(reason)
        if isinstance(exc, OUT_OF_MEMORY_ERRORS):
            engine.release_cache()
        self.log.error(f"inference:{type(exc).__name__}",
                       f"segmentation failed, {len(taken)} frame(s) dropped: {reason}")

    def _deliver(self, work: ModelWork) -> None:
        """Outputs thread (or the model thread when not pipelined): post-processing, smoothing,
        objects, 3D, messages and publishing of one model batch, in the order of its frames."""
        prompt_set, settings = work.prompt_set, work.settings
        try:
            results = work.engine.finish_batch(work.inferred, prompt_set, threshold=settings.threshold,
                                               output_size=settings.mask_resolution)
        except Exception as exc:  # noqa: BLE001 - as a failed model call: drop, go on
            self._segmentation_failed(work.taken, exc, work.engine)
            return
        for (cam, frame, rgb), result in zip(work.taken, results):
            stamp = stamp_seconds(frame.message.header.stamp)
            result = self._stage(cam, "smoothing", lambda: cam.timeline.model_frame(rgb, result, prompt_set, stamp),
                                 result)
            outputs = self._frame_outputs(cam, frame, rgb, result, settings, prompt_set)
            published = outputs is not None and self._publish(cam, outputs, frame.sequence)
            if not published and outputs is not None and settings.propagate:
                # Overtaken by newer propagated frames during inference: carry the result to the
                # camera's newest frame now (through the frames seen since), rather than leave
                # it to propagation's next, budget-limited cycle.
                newest = cam.newest
                published = newest is not None and newest.sequence > frame.sequence and self._propagate_frame(
                    cam, newest, prompt_set, settings, prompt_set.thresholds_or(settings.threshold))
            if published:
                now = time.monotonic()
                cam.stats.on_published(now, result.timings_ms.get("total", 0.0), (now - frame.received_at) * 1e3)
        self.frames_processed += len(results)

    def _stage(self, cam: Camera, stage: str, run, fallback):
        """``run()``, or ``fallback`` when it raises: one camera's failure in one step (3D, clouds,
        smoothing, tracking) never costs that camera's 2D outputs nor another camera's frame. One
        throttled error names the camera and the step."""
        try:
            return run()
        except PropagationStopped:
            raise
        except Exception as exc:  # noqa: BLE001 - isolated by design; the reason is logged
            self.log.error(f"{cam.spec.name}:{stage}:{type(exc).__name__}",
                           f"{cam.spec.name}: {stage} failed, the frame goes out without it: {failure_line(exc)}")
            return fallback() if callable(fallback) else fallback

    def _frame_outputs(self, cam: Camera, frame: Frame, rgb, result, settings: NodeSettings, prompt_set):
        """Objects (tracked), 3D with the paired depth image, and every output message of one
        frame; each step isolated (:meth:`_stage`). None: the frame is not to be published (its
        prompts were replaced while it was processed)."""
        depth = self._stage(cam, "depth", lambda: self._depth_for(cam, frame.message.header.stamp, rgb.shape[:2],
                                                                  settings), None)
        refine = settings.refine_options
        result = self._stage(cam, "refinement", lambda: refine_result(
            result, rgb, None if depth is None else depth.metres, refine), result)
        options = settings.scene_options
        scene = self._stage(cam, "3D", lambda: build_scene(result, depth, options),
                            lambda: self._stage(cam, "objects", lambda: build_scene(result, None, options), None))
        if scene is not None and scene.all_depth_invalid:
            self.log.warning(f"{cam.spec.name}:depth:invalid", f"{cam.spec.name}: the paired depth image has no "
                             "valid pixel (all 0, NaN or inf): objects have no 3D position")
        if scene is not None:
            try:
                scene = self._stage(cam, "tracking", lambda: cam.timeline.track(scene, rgb.shape[:2], prompt_set),
                                    scene)
            except PropagationStopped:
                return None
        options = settings.output_options
        if self._overlay_note:
            options = replace(options, overlay_note=self._overlay_note)
        if options.target_prompt and options.target_prompt not in result.prompts \
                and options.target_prompt not in self._warned_targets:
            self._warned_targets.add(options.target_prompt)  # once per value: the mask stays empty meanwhile
            self.get_logger().warning(f"target_prompt '{options.target_prompt}' is not an active prompt "
                                      f"({list(result.prompts)}): ~/target_mask is empty until it is")
        return build_outputs(result, rgb, frame.message.header, options, scene)

    def _propagation_rate(self) -> float:
        """propagate_rate while the model has spare time; less while it has none (see
        :func:`clipseg_ros.core.motion.temporal.propagation_rate`)."""
        return propagation_rate(self.settings.propagate_rate, self._worker.load.spare,
                                self._propagation_worker.load.cpu_s, self.settings.propagation_budget)

    def _propagate(self, batch: list[Frame]) -> None:
        """Propagation thread: the last model masks carried to each camera's newest frame."""
        prompt_set, settings, cameras = self.prompts.prompt_set, self.settings, self.cameras
        if prompt_set is None:
            return
        thresholds = prompt_set.thresholds_or(settings.threshold)
        for frame in batch:
            self._propagate_frame(cameras[frame.camera], frame, prompt_set, settings, thresholds)

    def _propagate_frame(self, cam: Camera, frame: Frame, prompt_set, settings: NodeSettings, thresholds) -> bool:
        """The last model masks carried to ``frame`` and published (flagged propagated); whether it went out."""
        stamp = stamp_seconds(frame.message.header.stamp)
        try:
            rgb = read_rgb8(frame.message)
            result, source = cam.timeline.propagate(rgb, prompt_set, stamp, thresholds)
        except ImageConversionError:
            return False  # the model's thread reports unreadable frames
        except PropagationStopped as exc:
            if "not newer" not in str(exc) and "no model frame" not in str(exc):
                self.log.warning(f"{cam.spec.name}:propagation:{problem_kind(str(exc))}",
                                 f"{cam.spec.name}: propagation stopped until the next model frame: {exc}")
            return False
        outputs = self._frame_outputs(cam, frame, rgb, result, settings, prompt_set)
        if outputs is None:
            return False
        for msg in (outputs.segmentation, outputs.confidences):
            msg.propagated, msg.model_frame_age = True, float(stamp - source.stamp)
            msg.frames_since_model = int(source.frames)
        return self._publish(cam, outputs, frame.sequence, propagated=True)

    def _depth_for(self, cam: Camera, stamp, colour_size, settings: NodeSettings) -> DepthFrame | None:
        """The depth image paired with a colour frame, or None (without depth configured, or
        with one throttled warning saying why it cannot be used: 2D outputs go out anyway)."""
        depth = cam.depth
        if depth is None:
            return None
        try:
            return depth.depth_frame(stamp, settings.depth_slop, colour_size)
        except DepthError as exc:
            self.log.warning(f"{cam.spec.name}:depth:{problem_kind(str(exc))}",
                             f"{cam.spec.name}: no 3D for this frame: {exc}")
            return None

    def _publish(self, cam: Camera, outputs, sequence: int, propagated: bool = False) -> bool:
        """Publish one frame's outputs unless a frame of this camera that arrived later (or this
        one) went out already: per camera and topic, outputs never go back in time (for a camera
        whose stamps increase: stamps strictly increase; zero or looping stamps still go out).
        A model result comes after the propagated frames that arrived during its inference; it
        is then the reference the next propagated frames are carried from, but is not published
        itself. A propagated frame the model has taken (or one older) is left to the model's
        result. Whether it went out."""
        def publish() -> bool:
            if sequence <= cam.published or (propagated and sequence <= cam.inferring):
                return False
            cam.publishers.publish(outputs)
            cam.published = sequence
            return True

        try:
            return bool(self._gate.run(publish))
        except Exception as exc:  # noqa: BLE001 - e.g. RCLError when a reliable subscriber lags
            self.log.warning(f"{cam.spec.name}:publish", f"{cam.spec.name}: publishing failed: {exc}")
            return False

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        state = self._state_machine.current_state[1]  # unconfigured, inactive, active, finalized
        name, s, engine = self.get_name(), self.settings, self.engine
        if engine is not None and engine.precision != self._logged_precision:  # a background int8 export ended
            self._logged_precision = engine.precision
            self.get_logger().info(f"precision now {engine.precision.describe()}")
        device = str(engine.device) if engine is not None else s.device
        prompts = list(self.prompts.state.names)
        if self._load_error:
            level, message = diagnostics.ERROR, f"model not loaded: {self._load_error}"
        else:
            level, message = diagnostics.OK, state
        values = {
            "state": state,
            "model": s.model,
            "device": device,
            "precision": engine.precision.describe() if engine is not None else s.dtype,
            "active prompts": str(len(prompts)),
            "prompts": "; ".join(prompts),
            "rate (Hz)": f"{s.rate:g}",
            "prompt store": self.prompt_keeper.store_status,
            "vision_msgs": vision_messages.UNAVAILABLE or "available",
            "frames processed": str(self.frames_processed),
            "out-of-memory retries": str(engine.oom_retries if engine is not None else 0),
            # which stage bounds the rate: with pipeline, the slower thread's cycle is the period
            "model thread": self._worker.load.describe(),
            "outputs thread": "off (pipeline false: the model thread makes the outputs)" if self._outputs is None
            else self._outputs.load.describe(),
        }
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status.append(diagnostics.make_status(level, f"{name}: model", message, device, values))
        if state == "active":
            for cam in self.cameras:
                lvl, msg, cam_values = cam.stats.assess(now, s.input_timeout, s.max_latency)
                if s.propagate:
                    timeline = cam.timeline
                    rate = self._propagation_rate()
                    cam_values["propagation"] = (
                        f"stopped: {timeline.stopped}" if timeline.stopped else "running" if rate >= s.propagate_rate
                        else f"running at most {rate:.1f} Hz: the model has no spare time "
                             f"(propagation_budget {s.propagation_budget:g})")
                    cam_values["propagated frames"] = str(timeline.propagated_frames)
                    if timeline.last_age is not None:
                        cam_values["propagated from a model frame (s old)"] = f"{timeline.last_age:.3f}"
                array.status.append(diagnostics.make_status(lvl, f"{name}: {cam.spec.name}", msg, device, cam_values))
        try:
            self._diagnostics_pub.publish(array)
        except Exception as exc:  # noqa: BLE001 - shutting down
            self.log.warning("diagnostics", f"publishing diagnostics failed: {exc}")

    # ------------------------------------------------------------------ teaching
    def teaching_frame(self, selector: str, stamp=None) -> tuple[str, Image]:
        """The frame a teach request means, as (camera name, its sensor_msgs/Image): the camera
        by name, by topic (as given or resolved), by the frame_id of its images, or the only
        camera for ''; its frame stamped ``stamp`` (a builtin_interfaces Time; zero or None: the
        newest) among its last ``teach_history`` frames. PromptError when there is no such
        camera or frame, or the frame was received more than ``teach_max_age`` s ago."""
        cam = self._camera_for(selector)
        recent = list(cam.recent)  # a copy: the executor appends meanwhile
        if not recent:
            raise PromptError(f"no frame from camera '{cam.spec.name}' ({cam.spec.resolved_topic}) yet"
                              + ("" if self._camera_subscriptions else ": the node is not active"))
        wanted = None if stamp is None or (stamp.sec == 0 and stamp.nanosec == 0) else stamp.sec + stamp.nanosec * 1e-9
        if wanted is None:
            frame = recent[-1][1]
        else:
            frame = next((f for s, f in reversed(recent) if s == wanted), None)
            if frame is None:
                raise PromptError(f"camera '{cam.spec.name}' has no frame stamped {wanted:.9f} any more (it keeps the "
                                  f"last {len(recent)}, stamped {recent[0][0]:.3f} to {recent[-1][0]:.3f}): draw on a "
                                  "newer frame")
        age = time.monotonic() - frame.received_at
        if age > self.settings.teach_max_age:
            raise PromptError(f"the frame of camera '{cam.spec.name}' to teach from was received {age:.1f} s ago "
                              f"(teach_max_age {self.settings.teach_max_age:g} s)")
        return cam.spec.name, frame.message

    def _camera_for(self, selector: str) -> Camera:
        cameras = self.cameras
        selector = selector.strip()
        if not selector:
            if len(cameras) == 1:
                return cameras[0]
            raise PromptError(f"{len(cameras)} cameras: name one of {[c.spec.name for c in cameras]}")
        for cam in cameras:
            newest = cam.newest
            if selector in (cam.spec.name, cam.spec.topic, cam.spec.resolved_topic) or (
                    newest is not None and selector == newest.message.header.frame_id):
                return cam
        raise PromptError(f"unknown camera '{selector}': one of {[c.spec.name for c in cameras]} (or their "
                          "image topics)")

    # ------------------------------------------------------------------ lifetime
    def destroy_node(self) -> None:
        # Stop publishing first: the inference thread may finish a frame after this point, and
        # its publishers' context is about to go. Ctrl-C must end the process within 2 s, so a
        # frame still in flight is abandoned (the thread is a daemon).
        self._gate.close()
        self._stop_work(join_timeout=SHUTDOWN_JOIN_S, stop_helper=True)
        self.prompt_keeper.close()
        super().destroy_node()
        # rclpy's LifecycleNode leaves its state machine, and through it the node handle and the
        # DDS participant, to the garbage collector. Release it now so that shutdown removes the
        # participant's shared-memory segments in /dev/shm and tells peers it left (a fast exit
        # would otherwise leave 8 files behind per run and stale peers for others to time out).
        self._state_machine.destroy_when_not_in_use()
