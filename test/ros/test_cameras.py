"""Camera specs, newest-frame slots and the inference thread, without ROS."""

import threading
import time

import pytest
from ros_helpers import wait_for

from clipseg_ros.ros.cameras import (
    Frame,
    FrameSlots,
    FrameWorker,
    OutputWorker,
    camera_name_from_topic,
    camera_specs,
)


def test_camera_specs_decide_compression_on_the_remapped_topic():
    # Review defect 10: `image:=/cam/image_raw/compressed` remaps the default topic "image"; the
    # decision read the parameter ("image"), subscribed with Image and never got a frame.
    remaps = {"image": "/cam/image_raw/compressed"}
    [spec] = camera_specs(["image"], resolve=lambda t: remaps.get(t, t))
    assert spec.compressed and spec.resolved_topic == "/cam/image_raw/compressed"
    assert spec.topic == "image" and spec.prefix == "~/"
    a, b, c = camera_specs(["/front/color/image_raw", "/left/image_raw/compressed", "/front/color/image"])
    assert (a.name, a.compressed, a.prefix) == ("front_color", False, "~/front_color/")
    assert (b.name, b.compressed) == ("left", True)
    assert c.name == "front_color_2"  # two topics deriving one name
    assert [s.name for s in camera_specs(["/a", "/b"], ["x", "y"])] == ["x", "y"]


def test_camera_names():
    assert camera_name_from_topic("/front/color/image_raw", 0) == "front_color"
    assert camera_name_from_topic("/image", 1) == "camera1"
    assert camera_name_from_topic("/left/image_raw/compressed", 0) == "left"


def test_slots_keep_only_the_newest_frame_per_camera():
    slots = FrameSlots(2)
    assert not slots.put(Frame(0, "a1", 0.0))
    assert slots.put(Frame(0, "a2", 0.1))  # superseded a1
    assert not slots.put(Frame(1, "b1", 0.2))
    batch = slots.wait_batch(0.0, threading.Event())
    assert [f.message for f in batch] == ["a2", "b1"]
    stop = threading.Event()
    stop.set()
    assert slots.wait_batch(0.0, stop) == []


class BlockingProcess:
    """A process() that blocks until released and records how many run at once."""

    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()
        self.running = 0
        self.most_at_once = 0
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, batch):
        with self._lock:
            self.running += 1
            self.calls += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.entered.set()
        self.release.wait(30)
        with self._lock:
            self.running -= 1


def test_a_worker_that_did_not_stop_in_time_is_never_run_twice():
    # Review defect 7: stopping forgot a worker that was still busy; the next activate started a
    # second one, and two threads segmented and published side by side.
    slots = FrameSlots(1)
    process = BlockingProcess()
    worker = FrameWorker(slots, process, rate=lambda: 0.0, on_error=pytest.fail)
    worker.start()
    slots.put(Frame(0, "frame", time.monotonic()))
    wait_for(process.entered.is_set, 10, what="a frame in flight")
    assert worker.stop(timeout=0.1) is False and worker.running  # still busy: kept, not forgotten
    with pytest.raises(RuntimeError, match="still busy"):
        worker.start(previous_timeout=0.1)
    process.release.set()
    worker.start(previous_timeout=10)  # waits for the old one, then starts
    process.entered.clear()
    slots.put(Frame(0, "next", time.monotonic()))
    wait_for(process.entered.is_set, 10, what="the new worker to take a frame")
    assert process.most_at_once == 1 and process.calls == 2
    assert worker.stop(timeout=10)
    assert not worker.running


def test_worker_keeps_the_rate_and_survives_exceptions():
    slots = FrameSlots(1)
    calls, errors = [], []

    def process(batch):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ValueError("bad frame")

    worker = FrameWorker(slots, process, rate=lambda: 10.0, on_error=errors.append)
    worker.start()
    try:
        def feed():
            slots.put(Frame(0, "f", time.monotonic()))
            time.sleep(0.005)
            return len(calls) >= 4
        wait_for(feed, 10, 0, "4 batches")
    finally:
        worker.stop(timeout=5)
    assert [type(e) for e in errors] == [ValueError]
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert min(gaps) >= 0.095, gaps  # at most 10 batches a second


def test_worker_load_averages_spare_time_and_work():
    from clipseg_ros.ros.cameras import WorkerLoad

    load = WorkerLoad(weight=0.5)
    assert load.spare is None and load.cpu_s is None
    load.add(0.0, 0.4, 0.4)  # flat out
    assert (load.spare, load.cpu_s) == (0.0, 0.4)
    load.add(0.6, 0.4, 0.2)  # waited 0.6 s of a 1 s cycle; half its work time it had no core
    assert load.spare == pytest.approx(0.3) and load.cpu_s == pytest.approx(0.3)


@pytest.mark.parametrize("rate, spare_range", [(0.0, (0.0, 0.1)), (10.0, (0.55, 0.95))])
def test_worker_measures_whether_it_has_spare_time(rate, spare_range):
    """Frames always waiting and 30 ms of work (20 ms asleep, ~10 ms on the CPU): flat out at
    rate 0, ~70% waiting at 10 Hz; the CPU time is the thread's own."""
    slots = FrameSlots(1)
    cycles = []

    def process(batch):
        time.sleep(0.02)
        cpu_until = time.thread_time() + 0.01
        while time.thread_time() < cpu_until:
            pass
        cycles.append(1)

    worker = FrameWorker(slots, process, rate=lambda: rate, on_error=pytest.fail)
    worker.start()
    try:
        def feed():
            slots.put(Frame(0, "f", time.monotonic()))
            time.sleep(0.002)
            return len(cycles) >= 12
        wait_for(feed, 20, 0, "12 cycles")
    finally:
        worker.stop(timeout=5)
    assert spare_range[0] <= worker.load.spare <= spare_range[1]
    assert 0.009 <= worker.load.cpu_s < 0.02


def test_outputs_worker_delivers_in_order_and_holds_the_model_back_by_one_item():
    """The model thread may run one batch ahead of the outputs, no more: hand() waits until the
    thread has finished the item before (a result never queues behind another), and items come
    out in the order they went in; an exception in one goes to on_error and the loop goes on."""
    release, delivered, errors = threading.Event(), [], []

    def deliver(item):
        if item == 0:
            release.wait(10)
        if item == 1:
            raise ValueError("bad frame")
        delivered.append(item)

    worker = OutputWorker(deliver, errors.append)
    worker.start()
    assert worker.hand(0)  # taken at once; deliver(0) blocks
    handed = []
    model = threading.Thread(target=lambda: [handed.append(worker.hand(k)) for k in (1, 2, 3)])
    model.start()
    model.join(0.3)
    assert handed == []  # back-pressure: 1 waits while 0 is being delivered
    release.set()
    model.join(5)
    assert handed == [True, True, True]
    wait_for(lambda: delivered == [0, 2, 3], 5, what="0, 2 and 3 delivered in order")
    assert [str(e) for e in errors] == ["bad frame"]
    assert worker.stop(5) and not worker.running


def test_outputs_worker_delivers_what_was_handed_over_before_a_stop_and_refuses_later_items():
    release, delivered = threading.Event(), []
    worker = OutputWorker(lambda item: (release.wait(10), delivered.append(item)), lambda exc: None)
    assert not worker.hand("before start")  # no thread: dropped, never left waiting
    worker.start()
    assert worker.hand(1)
    waiting = []
    second = threading.Thread(target=lambda: waiting.append(worker.hand(2)))
    second.start()  # waits while 1 is being delivered
    wait_for(lambda: worker._busy, 5, what="item 1 taken")
    worker.request_stop()
    second.join(5)
    assert waiting == [False]  # not handed over before the stop: dropped, the waiting thread freed
    assert not worker.hand(3)  # returns at once once stopping
    assert not worker.stop(0.2)  # still delivering 1
    release.set()
    assert worker.stop(5)
    assert delivered == [1]  # what was handed over went out
    worker.start()  # a new thread after a stop starts empty and delivers again
    assert worker.hand(4)
    wait_for(lambda: delivered == [1, 4], 5, what="item 4 after a restart")
    assert worker.stop(5)


def test_worker_threads_carry_their_names_where_the_os_shows_them():
    """top -H and /proc show which of the node's threads uses the CPU (the benchmark's CPU per
    thread reads them); Python's own thread names stay inside Python."""
    import os

    seen = {}

    def deliver(item):
        seen["comm"] = open(f"/proc/self/task/{threading.get_native_id()}/comm").read().strip()

    worker = OutputWorker(deliver, lambda exc: None, name="clipseg_outputs")
    worker.start()
    worker.hand(1)
    wait_for(lambda: "comm" in seen, 5, what="the item delivered")
    assert worker.stop(5)
    assert seen["comm"] == "clipseg_outputs"
    assert open(f"/proc/self/task/{os.getpid()}/comm").read().strip() != "clipseg_outputs"


def test_worker_takes_its_next_batch_no_earlier_than_ready_at_says():
    """A pipelined node's model thread, when the outputs are the slower stage, waits before its
    next frame (and takes the newer frame that arrived meanwhile)."""
    slots = FrameSlots(1)
    taken = []
    worker = FrameWorker(slots, lambda batch: taken.append((time.monotonic(), batch[0].message)), rate=lambda: 0.0,
                         on_error=lambda exc: None, ready_at=lambda: time.monotonic() + 0.4)
    worker.start()
    slots.put(Frame(0, "first", 0.0))
    wait_for(lambda: taken, 5, what="the first batch")
    slots.put(Frame(0, "second", 0.0))
    time.sleep(0.1)  # a camera's later frame, within the wait
    slots.put(Frame(0, "third", 0.0))
    wait_for(lambda: len(taken) == 2, 5, what="the next batch")
    assert worker.stop(5)
    assert taken[1][1] == "third"  # the newest frame when it was time, not the one waiting at once
    assert taken[1][0] - taken[0][0] >= 0.39


def test_outputs_worker_says_when_it_will_be_free():
    release = threading.Event()
    worker = OutputWorker(lambda item: release.wait(10), lambda exc: None)
    worker.start()
    now = time.monotonic()
    assert worker.free_at() == pytest.approx(now, abs=0.05)  # idle
    worker.load.busy_s = 2.0  # as if its items took 2 s each
    worker.hand(1)
    wait_for(lambda: worker._busy, 5, what="the item taken")
    assert worker.free_at() == pytest.approx(now + 2.0, abs=0.1)
    release.set()
    assert worker.stop(5)
