"""Camera inputs: which streams, the newest frame of each, and the one thread that segments them.

No rclpy in here (messages are opaque objects). The executor only stores each camera's newest
message in :class:`FrameSlots` (an older one is overwritten, never queued, so latency cannot
grow); :class:`FrameWorker` runs the throttled loop: take the newest frame of every camera that
has one, hand them over as one batch, wait until the next period.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from clipseg_ros.ros.glibc import name_this_thread, return_free_memory

# Path segments that name an image stream rather than a camera ("/front/color/image_raw" is
# camera "front_color").
_STREAM_WORDS = {"image", "image_raw", "image_rect", "image_rect_color", "image_color", "image_mono",
                 "compressed", "rgb", "raw"}


def camera_name_from_topic(topic: str, index: int) -> str:
    """'/front/color/image_raw' -> 'front_color'; a name with no camera part -> 'camera<index>'."""
    words = [w for w in topic.strip("/").split("/") if w and w not in _STREAM_WORDS and not w.startswith("~")]
    name = re.sub(r"[^A-Za-z0-9_]", "_", "_".join(words)).strip("_")
    if not name or name[0].isdigit():
        name = f"camera{index}" if not name else f"camera_{name}"
    return name


def is_compressed_topic(topic: str) -> bool:
    """image_transport's convention: a CompressedImage stream's topic ends in ``/compressed``."""
    return topic.rstrip("/").endswith("/compressed")


@dataclass(frozen=True)
class CameraSpec:
    """One input stream: ``topic`` as configured, ``resolved_topic`` after remapping (what the
    node subscribes to, and what decides whether it is compressed), ``prefix`` of its outputs."""

    index: int
    name: str
    topic: str
    resolved_topic: str
    compressed: bool
    prefix: str  # "~/" or "~/<name>/"


def camera_specs(topics: Sequence[str], names: Sequence[str] = (),
                 resolve: Callable[[str], str] = lambda topic: topic) -> list[CameraSpec]:
    """The cameras for ``image_topics`` (and ``camera_names``, or names derived from the topics;
    two topics deriving one name get ``_<index>``). ``resolve`` applies the node's remappings."""
    names = list(names) or [camera_name_from_topic(t, i) for i, t in enumerate(topics)]
    seen: set[str] = set()
    specs = []
    for i, (topic, name) in enumerate(zip(topics, names)):
        if name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        resolved = resolve(topic)
        specs.append(CameraSpec(index=i, name=name, topic=topic, resolved_topic=resolved,
                                compressed=is_compressed_topic(resolved),
                                prefix="~/" if len(topics) == 1 else f"~/{name}/"))
    return specs


@dataclass(frozen=True)
class Frame:
    """A camera's message as received (monotonic ``received_at``; ``sequence``: its place among
    the camera's frames, counted on arrival), not yet decoded."""

    camera: int
    message: object
    received_at: float
    sequence: int = 0


class FrameSlots:
    """The newest unprocessed frame of each camera. ``put`` overwrites; ``take`` empties."""

    def __init__(self, cameras: int):
        self._frames: list[Frame | None] = [None] * cameras
        self._cond = threading.Condition()

    def put(self, frame: Frame) -> bool:
        """Store ``frame``; whether it superseded an unprocessed one."""
        with self._cond:
            superseded = self._frames[frame.camera] is not None
            self._frames[frame.camera] = frame
            self._cond.notify_all()
        return superseded

    def wake(self) -> None:
        """Make a waiting worker look again (a new rate, a stop)."""
        with self._cond:
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._frames = [None] * len(self._frames)
            self._cond.notify_all()

    def wait_batch(self, not_before: float, stop: threading.Event, poll: float = 0.5) -> list[Frame]:
        """The newest frame of every camera that has one, once at least one is there and the
        monotonic clock reached ``not_before``; [] when ``stop`` is set."""
        with self._cond:
            while not stop.is_set():
                ready = [f for f in self._frames if f is not None]
                delay = not_before - time.monotonic()
                if ready and delay <= 0:
                    self._frames = [None] * len(self._frames)
                    return ready
                self._cond.wait(timeout=min(delay, poll) if ready else poll)
        return []


def _ended(thread: threading.Thread | None, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``thread`` (told to stop) to end; whether it has. A thread
    stopping itself (from inside its own work) ends after that work: not yet."""
    if thread is None:
        return True
    if thread is threading.current_thread():
        return False
    thread.join(timeout=max(0.0, timeout))
    return not thread.is_alive()


class WorkerLoad:
    """How a worker thread spends its time, averaged over its recent cycles (exponentially,
    ``weight`` for the newest): ``spare`` = waiting / (waiting + working), ``busy_s`` = wall
    seconds at work per cycle, ``cpu_s`` = CPU seconds the thread itself used per cycle (less
    than its wall time at work when other threads had the cores). Written by the worker, read
    by others (floats: no lock needed)."""

    def __init__(self, weight: float = 0.3):
        self.weight = weight
        self.spare: float | None = None  # None until the first cycle
        self.busy_s: float | None = None
        self.cpu_s: float | None = None

    def add(self, waited_s: float, busy_s: float, cpu_s: float) -> None:
        spare = waited_s / max(waited_s + busy_s, 1e-9)
        self.spare = self._average(self.spare, spare)
        self.busy_s = self._average(self.busy_s, busy_s)
        self.cpu_s = self._average(self.cpu_s, cpu_s)

    def describe(self) -> str:
        """'<busy> ms a cycle (<cpu> ms CPU), <spare>% waiting', or 'n/a' before the first cycle."""
        if self.spare is None:
            return "n/a"
        return f"{self.busy_s * 1e3:.1f} ms a cycle ({self.cpu_s * 1e3:.1f} ms CPU), {self.spare:.0%} waiting"

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.weight) * old + self.weight * new


class FrameWorker:
    """The inference thread: batches from :class:`FrameSlots` at most ``rate()`` times a second
    (0 = as fast as they come), each handed to ``process``; an exception from ``process`` goes to
    ``on_error`` and the loop goes on.

    At most one such thread runs: :meth:`stop` that times out (a frame still in flight) keeps
    the thread, and :meth:`start` waits for it before starting another.

    ``ready_at``: asked after each batch, the monotonic time before which the next batch is not
    taken (a pipelined node: when the outputs thread is the slower stage, the model starts on its
    next frame just in time to hand it over when the outputs are free, on a newer frame than
    one taken at once, instead of finishing early and waiting with a result that ages).
    """

    def __init__(self, slots: FrameSlots, process: Callable[[list[Frame]], None],
                 rate: Callable[[], float], on_error: Callable[[Exception], None], name: str = "clipseg_inference",
                 nice: int = 0, ready_at: Callable[[], float] | None = None):
        self._ready_at = ready_at
        self._nice = nice  # > 0: this thread yields the CPU to the others (Linux: per-thread niceness)
        self._slots = slots
        self._process = process
        self._rate = rate
        self._on_error = on_error
        self._name = name
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.load = WorkerLoad()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, previous_timeout: float = 30.0) -> None:
        """Start the thread; RuntimeError if the previous one is still busy after
        ``previous_timeout`` seconds (two threads would segment and publish side by side)."""
        if self.running:
            self._stop.set()
            self._slots.wake()
            self._thread.join(timeout=previous_timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the previous inference thread is still busy after {previous_timeout:g} s")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name=self._name, daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Tell the thread to stop after the frame in flight (returns at once); pending frames
        are dropped."""
        self._stop.set()
        self._slots.clear()

    def stop(self, timeout: float) -> bool:
        """Ask the thread to stop (a frame in flight finishes) and wait up to ``timeout`` s;
        whether it has stopped. Pending frames are dropped."""
        self.request_stop()
        if not _ended(self._thread, timeout):
            return False
        self._thread = None
        return True

    def _run(self, stop: threading.Event) -> None:
        name_this_thread(self._name)
        if self._nice:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
            except (OSError, AttributeError):  # not Linux, or not allowed: run at normal priority
                pass
        not_before = 0.0
        idle_since = time.monotonic()
        while not stop.is_set():
            batch = self._slots.wait_batch(not_before, stop)
            if not batch:
                continue
            started, cpu_started = time.monotonic(), time.thread_time()
            rate = self._rate()
            not_before = started + (1.0 / rate if rate > 0 else 0.0)
            try:
                self._process(batch)
            except Exception as exc:  # noqa: BLE001 - a bad frame must never stop the loop
                self._on_error(exc)
            if self._ready_at is not None:
                not_before = max(not_before, self._ready_at())
            idle_since, busy_from = time.monotonic(), idle_since
            self.load.add(started - busy_from, idle_since - started, time.thread_time() - cpu_started)
        # The heap keeps the frames' buffers mapped while frames come (glibc.keep_frame_buffers_mapped);
        # a stopped model thread (deactivate, shutdown) gives them back.
        return_free_memory()


class OutputWorker:
    """The outputs thread of a pipelined node: what the model thread hands over (one batch's
    model output) is delivered here (post-processing, objects, 3D, messages, publishing) while
    the model works on the next batch.

    One item at a time: :meth:`hand` waits until the thread has finished the previous one, so the
    model runs at most one batch ahead of the outputs (a result never queues behind another: its
    latency cannot grow when the outputs are the slower stage), nothing it computed is dropped
    while the thread runs, and items are delivered in the order they were handed over (a
    camera's outputs keep the order of its frames). After :meth:`request_stop` the item already handed
    over is still delivered, then the thread ends; a later :meth:`hand` returns False at once.
    Like :class:`FrameWorker`, at most one such thread runs.
    """

    def __init__(self, deliver: Callable[[object], None], on_error: Callable[[Exception], None],
                 name: str = "clipseg_outputs"):
        self._deliver = deliver
        self._on_error = on_error
        self._name = name
        self._cond = threading.Condition()
        self._item: object | None = None
        self._busy = False  # delivering an item
        self._busy_since = 0.0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.load = WorkerLoad()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, previous_timeout: float = 30.0) -> None:
        """Start the thread; RuntimeError if the previous one is still delivering after
        ``previous_timeout`` seconds."""
        if self.running and not self.stop(previous_timeout):
            raise RuntimeError(f"the previous outputs thread is still busy after {previous_timeout:g} s")
        with self._cond:
            self._item, self._busy, self._stopping = None, False, False
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def hand(self, item: object) -> bool:
        """Give ``item`` to the thread, waiting while it still works on an earlier one; False (the
        item dropped) when the thread is not running or stops meanwhile."""
        with self._cond:
            while (self._item is not None or self._busy) and not self._stopping:
                self._cond.wait(timeout=0.5)
            if self._stopping or not self.running:
                return False
            self._item = item
            self._cond.notify_all()
        return True

    def free_at(self) -> float:
        """When the thread is expected to be free (monotonic s): now when idle, else when its
        item started plus its average time per item."""
        with self._cond:
            busy, since = self._busy or self._item is not None, self._busy_since
        now = time.monotonic()
        if not busy or self.load.busy_s is None:
            return now
        return max(now, since + self.load.busy_s)

    def request_stop(self) -> None:
        """End the thread after the item already handed over (returns at once)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def stop(self, timeout: float) -> bool:
        """:meth:`request_stop`, then wait up to ``timeout`` s; whether the thread has ended."""
        self.request_stop()
        if not _ended(self._thread, timeout):
            return False
        self._thread = None
        return True

    def _run(self) -> None:
        name_this_thread(self._name)
        idle_since = time.monotonic()
        while True:
            with self._cond:
                while self._item is None and not self._stopping:
                    self._cond.wait(timeout=0.5)
                item, self._item = self._item, None
                self._busy, self._busy_since = item is not None, time.monotonic()
            if item is None:  # stopping, and nothing was handed over
                return
            started, cpu_started = time.monotonic(), time.thread_time()
            try:
                self._deliver(item)
            except Exception as exc:  # noqa: BLE001 - a bad frame must never stop the loop
                self._on_error(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()  # a waiting hand() gives the next one now
            idle_since, busy_from = time.monotonic(), idle_since
            self.load.add(started - busy_from, idle_since - started, time.thread_time() - cpu_started)
