"""The node's prompt interfaces: every way prompts change over ROS.

The ROS adapters around :class:`clipseg_ros.core.prompts.keeper.PromptKeeper` (which owns the
prompt book, the store and its policy): the ``~/prompts`` topic and the ``~/set_thresholds``
service (on the node: cheap), ``~/prompt_image``, ``~/set_prompts``, ``~/teach`` and
``~/teach_region`` (on a hidden helper node with its own executor thread: they embed example
images, seconds of work), and the mirror of the active prompts into the prompt parameters.
Messages are turned into arrays and requests here; every decision about prompts is the keeper's.
"""

from __future__ import annotations

from clipseg_ros_interfaces.srv import SetPrompts, SetThresholds, Teach
from geometry_msgs.msg import PolygonStamped
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import String

from clipseg_ros.core.prompts.keeper import PromptKeeper
from clipseg_ros.core.prompts.prompt_book import (
    ImagePrompt,
    PromptChange,
    PromptError,
    PromptState,
    image_names_from_request,
    texts_from_parameter,
    texts_from_request,
    texts_from_topic,
    thresholds_from_parameter,
    thresholds_to_parameter,
)
from clipseg_ros.ros.conversions import ImageConversionError, read_rgb8
from clipseg_ros.ros.prompt_requests import (
    ExampleRequest,
    alpha_mask,
    box_from_roi,
    example_request,
    examples_from_set_prompts,
    mask_from_msg,
    prompt_image_msg,
    read_prompt_image,
    region_from_polygon,
    thresholds_from_request,
)
from clipseg_ros.ros.settings import plain_value
from clipseg_ros.ros.spinner import BackgroundSpinner
from clipseg_ros.ros.throttled_log import failure_line, problem_kind


def mirror_into_parameters(node, state: PromptState) -> None:
    """Show what is active in ``node``'s prompt parameters (so ``ros2 param get`` tells it);
    only the ones that differ are set."""
    mirrored = {"prompts": list(state.texts), "prompt_template": state.template,
                "prompt_thresholds": thresholds_to_parameter(state.thresholds)}
    stale = [name for name, value in mirrored.items() if plain_value(node.get_parameter(name).value) != value]
    if stale:
        types = {"prompt_template": Parameter.Type.STRING}
        node.set_parameters([Parameter(name, types.get(name, Parameter.Type.STRING_ARRAY), mirrored[name])
                             for name in stale])


class PromptInterfaces:
    """The prompt topics and services of ``node`` (a ClipSegNode: its settings, logger and
    names), changing prompts through ``keeper``. ``teaching_frame(camera, stamp)`` returns the
    (camera name, sensor_msgs/Image) a teach request means, or raises PromptError.
    :meth:`start` at configure, :meth:`stop` at cleanup."""

    def __init__(self, node, keeper: PromptKeeper, teaching_frame):
        self.node = node
        self.keeper = keeper
        self.teaching_frame = teaching_frame
        self._prompt_image_node: Node | None = None  # the helper serving what embeds example images
        self._prompt_image_spinner: BackgroundSpinner | None = None
        self._prompt_topic = None  # ~/prompts, created by start, destroyed by stop
        self._thresholds_service = None  # ~/set_thresholds, likewise

    @property
    def book(self):
        return self.keeper.book

    # -------------------------------------------------------------- lifetime
    def start(self) -> None:
        node = self.node
        self._prompt_topic = node.create_subscription(String, "~/prompts", self._on_prompts_topic, 10)
        self._thresholds_service = node.create_service(SetThresholds, "~/set_thresholds", self._on_set_thresholds)
        self._start_helper()

    def request_stop(self) -> None:
        """Tell the helper thread to stop (returns at once; :meth:`stop` then waits for it)."""
        if self._prompt_image_spinner is not None:
            self._prompt_image_spinner.request_stop()

    def stop(self, timeout: float) -> None:
        self._stop_helper(timeout)
        if self._prompt_topic is not None:
            self.node.destroy_subscription(self._prompt_topic)
            self._prompt_topic = None
        if self._thresholds_service is not None:
            self.node.destroy_service(self._thresholds_service)
            self._thresholds_service = None

    def on_parameters(self, values: dict) -> None:
        """Apply changed prompt parameters (PromptError: refused)."""
        self.keeper.apply_parameters(PromptChange(
            texts=texts_from_parameter(values["prompts"]) if "prompts" in values else None,
            template=values.get("prompt_template"), max_prompts=values.get("max_prompts"),
            thresholds=(thresholds_from_parameter(values["prompt_thresholds"])
                        if "prompt_thresholds" in values else None)))

    def _start_helper(self) -> None:
        """``~/prompt_image`` and ``~/set_prompts`` (they embed example images: seconds of work)
        on a hidden helper node spun by a thread of its own. Names are resolved by this node, so
        its namespace and remappings apply; the helper ignores the process's arguments (a
        ``__node:=`` remap would otherwise rename it too)."""
        helper = Node(f"_{self.node.get_name()}_prompt_images", context=self.node.context, use_global_arguments=False,
                      start_parameter_services=False, enable_rosout=False)
        helper.create_subscription(Image, self.node.resolve_topic_name("~/prompt_image"), self._on_prompt_image, 10)
        helper.create_service(SetPrompts, self.node.resolve_service_name("~/set_prompts"), self._on_set_prompts)
        helper.create_service(Teach, self.node.resolve_service_name("~/teach"), self._on_teach)
        helper.create_subscription(PolygonStamped, self.node.resolve_topic_name("~/teach_region"), self._on_teach_region, 10)
        self._prompt_image_node = helper
        self._prompt_image_spinner = BackgroundSpinner(helper, name="clipseg_prompt_images")

    def _stop_helper(self, timeout: float) -> None:
        if self._prompt_image_spinner is not None:
            self._prompt_image_spinner.stop(timeout)  # an image being embedded is abandoned
            self._prompt_image_node.destroy_node()
        self._prompt_image_node = self._prompt_image_spinner = None

    def commit(self, change: PromptChange) -> PromptState:
        return self.keeper.commit(change)

    def _on_prompts_topic(self, msg: String) -> None:
        try:
            self.commit(PromptChange(texts=texts_from_topic(msg.data)))
        except PromptError as exc:
            self.node.log.warning(f"prompts_topic:{msg.data[:40]!r}", f"~/prompts {exc}")
        except Exception as exc:  # noqa: BLE001 - the executor must go on serving
            self.node.log.error(f"prompts_topic:{type(exc).__name__}", f"~/prompts failed: "
                                f"{failure_line(exc)}")

    def _embedded(self, request: ExampleRequest) -> ImagePrompt:
        """Embed one example (a full vision pass: called on the prompt-image thread only)."""
        return self.keeper.embed_example(request.name, request.example, request.text, request.text_weight)

    def _on_prompt_image(self, msg: Image) -> None:
        name = msg.header.frame_id.strip() or "image_prompt"
        try:
            self.book.check(PromptChange(added_images=(ImagePrompt(name),)))  # before the costly part
            image = read_prompt_image(msg, self.node.settings.max_image_pixels, name)
            request = example_request(name, image, None, alpha_mask(msg), self.node.settings.visual_prompt_style)
            self.commit(PromptChange(added_images=(self._embedded(request),)))
        except PromptError as exc:
            self.node.log.warning(f"prompt_image:{problem_kind(str(exc))}", f"~/prompt_image '{name}' refused: {exc}")
        except Exception as exc:  # noqa: BLE001 - the helper thread must live on
            self.node.log.error(f"prompt_image:{type(exc).__name__}",
                                f"~/prompt_image '{name}' failed: {failure_line(exc)}")

    def _serve(self, service: str, response, change, report):
        """One prompt service call: ``change()`` commits and returns (state, message), or raises
        PromptError (refused: logged, nothing changed); ``report(response, state)`` fills in
        what is active either way."""
        try:
            state, response.message = change()
            response.success = True
        except PromptError as exc:
            self.node.get_logger().warning(f"{service} refused: {exc}")
            response.success, response.message, state = False, str(exc), self.book.state
        except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory while embedding: answer, live on
            reason = failure_line(exc)
            self.node.get_logger().error(f"{service} failed: {reason}")
            response.success, response.message, state = False, f"failed: {reason}", self.book.state
        report(response, state)
        return response

    @staticmethod
    def _report_names(response, state: PromptState) -> None:
        response.active_prompts = list(state.names)

    def _on_set_prompts(self, request: SetPrompts.Request, response: SetPrompts.Response) -> SetPrompts.Response:
        def change():
            texts = texts_from_request(request.prompts)
            names = image_names_from_request(request.image_prompt_names, len(request.image_prompts))
            self.book.check(PromptChange(texts=texts, images=tuple(ImagePrompt(n) for n in names)))
            examples = examples_from_set_prompts(request, names, self.node.settings.max_image_pixels,
                                                 self.node.settings.visual_prompt_style)
            images = tuple(self._embedded(example) for example in examples)
            state = self.commit(PromptChange(texts=texts, images=images))
            response.prompt_images = [prompt_image_msg(e.name, e.example) for e in examples]
            return state, f"{len(state.names)} prompts active"
        return self._serve("~/set_prompts", response, change, self._report_names)

    def _teach(self, camera: str, name: str, region_of, text: str = "", text_weight: float = 0.0,
               style: str = "", stamp=None) -> tuple[PromptState, ExampleRequest]:
        """Take the camera's frame stamped ``stamp`` (zero or None: its newest), build the prompt
        image from the region that ``region_of(image_size)`` returns (box, mask), embed it and
        add it under ``name``."""
        name = name.strip()
        if not name:
            raise PromptError("the prompt has no name")
        self.book.check(PromptChange(added_images=(ImagePrompt(name),)))  # before the costly part
        camera_name, msg = self.teaching_frame(camera, stamp)
        try:
            rgb = read_rgb8(msg)
        except ImageConversionError as exc:
            raise PromptError(f"the frame of camera '{camera_name}' to teach from cannot be read: {exc}") from exc
        box, mask = region_of(rgb.shape[:2])
        request = example_request(name, rgb, box, mask, style or self.node.settings.visual_prompt_style, text, text_weight)
        if not request.example.has_region:
            raise PromptError(f"'{name}': no region (give a box, a mask or both)")
        state = self.commit(PromptChange(added_images=(self._embedded(request),)))
        self.node.get_logger().info(f"taught '{name}' from camera '{camera_name}' ({request.example.style})")
        return state, request

    def _on_teach(self, request: Teach.Request, response: Teach.Response) -> Teach.Response:
        def region(_size):
            mask = mask_from_msg(request.mask, self.node.settings.max_image_pixels)
            box = box_from_roi(request.box)
            if box is None and mask is None:
                raise PromptError(f"'{request.name.strip()}': no region (give a box, a mask or both)")
            return box, mask

        def change():
            state, taught = self._teach(request.camera, request.name, region, request.text, request.text_weight,
                                        request.style, request.stamp)
            response.prompt_image = prompt_image_msg(taught.name, taught.example)
            return state, f"'{taught.name}' taught; {len(state.names)} prompts active"
        return self._serve("~/teach", response, change, self._report_names)

    def _on_teach_region(self, msg: PolygonStamped) -> None:
        """A region drawn on a camera image (pixels; frame_id selects the camera), taught under
        the ``teach_name`` parameter."""
        points = [(float(p.x), float(p.y)) for p in msg.polygon.points]
        try:
            if not self.node.settings.teach_name.strip():
                raise PromptError("set the teach_name parameter to the name to teach first")
            self._teach(msg.header.frame_id, self.node.settings.teach_name,
                        lambda size: region_from_polygon(points, size, self.node.settings.teach_point_size),
                        stamp=msg.header.stamp)
        except PromptError as exc:
            self.node.log.warning(f"teach_region:{problem_kind(str(exc))}", f"~/teach_region refused: {exc}")
        except Exception as exc:  # noqa: BLE001 - the helper thread must live on
            self.node.log.error(f"teach_region:{type(exc).__name__}",
                                f"~/teach_region failed: {failure_line(exc)}")

    def _on_set_thresholds(self, request: SetThresholds.Request,
                           response: SetThresholds.Response) -> SetThresholds.Response:
        def change():
            state = self.commit(PromptChange(
                added_thresholds=thresholds_from_request(request.prompts, request.thresholds)))
            return state, f"{len(state.thresholds)} prompts have their own threshold"

        def report(response, state):
            response.thresholds = thresholds_to_parameter(state.thresholds)
        return self._serve("~/set_thresholds", response, change, report)
