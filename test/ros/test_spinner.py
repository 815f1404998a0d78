"""BackgroundSpinner, which also serves the node's example-image helper: the end of spinning
(Ctrl-C shutting the context down, or stop()) never leaves a traceback behind."""

import threading

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.node import Node  # noqa: E402
from ros_helpers import wait_for  # noqa: E402

from clipseg_ros.ros.spinner import BackgroundSpinner  # noqa: E402


@pytest.fixture
def thread_exceptions(monkeypatch):
    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    return seen


def test_context_shut_down_under_a_busy_spinner_ends_it_quietly(thread_exceptions):
    # Seen at the end of a soak: Ctrl-C shut the context down while the helper's thread was
    # between two waits, and it died building the next wait set ("RCLError: failed to
    # initialize wait set: the given context is not valid"), traceback in the node's log.
    for attempt in range(20):
        context = rclpy.Context()
        rclpy.init(context=context)
        node = Node(f"spinner_test_{attempt}", context=context)
        ticks = []
        node.create_timer(0.0005, lambda: ticks.append(1))  # keeps the thread out of its wait
        spinner = BackgroundSpinner(node, name="spinner_under_test")
        wait_for(lambda: len(ticks) > 20, 10, what="the spinner to run callbacks")
        rclpy.shutdown(context=context)  # what Ctrl-C does
        spinner._thread.join(5)
        assert not spinner._thread.is_alive()
        spinner.stop()
        node.destroy_node()
    assert thread_exceptions == []


def _spinner_in_own_context(name):
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node(name, context=context)
    return context, node, BackgroundSpinner(node, name="spinner_under_test")


def test_a_failure_because_the_context_was_shut_down_ends_spinning_quietly(thread_exceptions):
    # The exact race from the soak, made deterministic: the context is shut down after the
    # loop's check and before the executor builds its wait set.
    from rclpy._rclpy_pybind11 import RCLError

    context, node, spinner = _spinner_in_own_context("spinner_race")

    def shut_down_then_fail(timeout_sec=None):
        rclpy.shutdown(context=context)  # Ctrl-C lands here
        raise RCLError("failed to initialize wait set: the given context is not valid")

    spinner.executor.spin_once = shut_down_then_fail
    spinner._thread.join(5)
    assert not spinner._thread.is_alive()
    assert thread_exceptions == []
    spinner.stop()
    node.destroy_node()


def test_a_real_failure_while_spinning_is_not_swallowed(thread_exceptions):
    context, node, spinner = _spinner_in_own_context("spinner_failure")

    def fail(timeout_sec=None):
        raise RuntimeError("a callback raised")

    spinner.executor.spin_once = fail
    spinner._thread.join(5)
    assert [str(e) for e in thread_exceptions] == ["a callback raised"]
    spinner.stop()
    node.destroy_node()
    rclpy.shutdown(context=context)
