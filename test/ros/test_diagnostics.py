"""The diagnostics judgement on synthetic timelines (no ROS graph needed)."""

import pytest

from clipseg_ros.ros.diagnostics import ERROR, OK, WARN, SlidingWindow, StreamStats, level_of, make_status


def camera(now=0.0):
    return StreamStats("/cam/image", since=now)


def feed(stats, start, end, hz, latency_ms=100.0, model_ms=80.0):
    for i in range(round((end - start) * hz)):
        t = start + i / hz
        stats.on_received(t, superseded=False)
        stats.on_readable(t)
        stats.on_published(t + latency_ms / 1e3, model_ms, latency_ms)


def test_healthy_stream_is_ok_with_rates_and_percentiles():
    s = camera()
    feed(s, 0.0, 10.0, 10.0)
    level, message, values = s.assess(10.0, input_timeout=2.0, max_latency_s=3.0)
    assert level == OK and message.startswith("segmenting at")
    assert float(values["input rate (Hz)"]) == pytest.approx(10.0, abs=0.5)
    assert float(values["latency p95 (ms)"]) == pytest.approx(100.0)
    assert values["frames received"] == values["frames processed"] == "100"


def test_waiting_for_first_frame_then_stopped_input_warn():
    s = camera()
    assert s.assess(1.0, 2.0, 3.0)[0] == OK  # just started
    level, message, _ = s.assess(2.5, 2.0, 3.0)
    assert level == WARN and "no frames received" in message
    feed(s, 3.0, 5.0, 10.0)
    assert s.assess(5.5, 2.0, 3.0)[0] == OK
    level, message, values = s.assess(8.0, 2.0, 3.0)
    assert level == WARN and "no input for 3.1 s" in message
    assert values["last frame age (s)"] == "3.10"


def test_latency_over_the_limit_warns_then_errors():
    s = camera()
    feed(s, 0.0, 5.0, 10.0, latency_ms=3500.0)
    assert s.assess(5.0, 2.0, 3.0)[0] == WARN
    s = camera()
    feed(s, 0.0, 5.0, 10.0, latency_ms=7000.0)
    level, message, _ = s.assess(5.0, 2.0, 3.0)
    assert level == ERROR and "over twice max_latency" in message


def test_unreadable_frames_warn_or_error_and_failures_error_until_a_success():
    s = camera()
    for i in range(10):
        s.on_received(i * 0.1, superseded=False)
        s.on_unreadable(i * 0.1, "unsupported image encoding 'x'")
    level, message, values = s.assess(1.0, 2.0, 3.0)
    assert level == ERROR and "all recent frames unreadable: unsupported image encoding" in message
    assert values["dropped: unreadable"] == "10"
    feed(s, 1.0, 2.0, 10.0)
    assert s.assess(2.0, 2.0, 3.0)[0] == WARN  # some of the last 5 s unreadable
    assert s.assess(8.0, 20.0, 3.0)[0] == OK  # old problems age out of the window
    s.on_failed("RuntimeError: boom")
    level, message, _ = s.assess(8.0, 20.0, 3.0)
    assert level == ERROR and "segmentation failing (1 in a row): RuntimeError: boom" in message
    s.on_published(8.1, 50.0, 60.0)
    assert s.assess(8.2, 20.0, 3.0)[0] == OK


def test_a_camera_sending_only_unreadable_frames_is_an_error_at_a_throttled_rate():
    # Review defect 6: at 30 Hz in and 5 Hz examined, most frames are superseded unread. Judged
    # against arrivals, 25 refused of 150 received was only WARN; judged against the frames
    # actually examined, all of them were unreadable.
    s = camera()
    for i in range(150):
        t = i / 30
        s.on_received(t, superseded=i % 6 != 0)
        if i % 6 == 0:  # the throttled worker takes every sixth frame and cannot read it
            s.on_unreadable(t, "could not decode 400 bytes of compressed 'jpeg' data")
    level, message, _ = s.assess(5.0, 2.0, 3.0)
    assert level == ERROR and "all recent frames unreadable" in message
    s.on_readable(5.0)  # one good frame among them: a warning, counted over examined frames
    level, message, _ = s.assess(5.0, 2.0, 3.0)
    assert level == WARN and "25 of 26 recent frames examined were unreadable" in message, message


def test_windows_are_bounded():
    w = SlidingWindow(span=1e9)
    for i in range(100_000):
        w.add(float(i), 1.0)
    assert w.count(1e5) <= 2048


def test_status_message():
    status = make_status(WARN, "clipseg: front", "no input", "cpu", {"a": 1})
    assert level_of(status) == WARN and status.values[0].key == "a" and status.values[0].value == "1"
