"""The node's process: start, spin, and end within 2 s on Ctrl-C/SIGTERM, whatever DDS does.

``clipseg_node`` and ``python -m clipseg_ros`` run :func:`run`.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy_impl
from rclpy.lifecycle import TransitionCallbackReturn

# Ctrl-C/SIGTERM must end the process within 2 s: teardown gets this long, then the process leaves.
TEARDOWN_DEADLINE_S = 1.2


def main(args=None, teardown_deadline_s: float | None = None) -> int:
    """Run the node until Ctrl-C/SIGTERM: exit status 0 then, 1 when parameters or the model are
    unusable (plain mode; in lifecycle mode a failed configure leaves the node unconfigured).

    ``teardown_deadline_s``: if destroying the node and the DDS participant takes longer, the
    process exits anyway with status 1 (for :func:`run`). Fast DDS 3.2's TCP transport (in
    LARGE_DATA) can deadlock in participant deletion (seen here: ``TCPChannelResourceBasic::disconnect``
    waiting on a mutex forever; eProsima/Fast-DDS#6066 fixes one such case), and a robot's node
    must not hang on Ctrl-C because of it."""
    from PIL import Image as PILImage

    from clipseg_ros.ros.glibc import keep_frame_buffers_mapped
    from clipseg_ros.ros.node import ClipSegNode  # after rclpy: the node module imports torch

    # Compressed frames are measured from their headers with PIL, which refuses headers over its
    # own limit (179 M pixels) without saying their size; the node applies max_image_pixels itself.
    PILImage.MAX_IMAGE_PIXELS = None
    interrupts = _Interrupts()
    signal.signal(signal.SIGINT, interrupts)  # rclpy's handlers (installed by init) call these after theirs
    signal.signal(signal.SIGTERM, interrupts)
    heap = keep_frame_buffers_mapped()  # before the model and the first frame allocate
    rclpy.init(args=args)
    node = None
    status = 0
    try:
        node = ClipSegNode()
        node.get_logger().info(heap)
        if not node.settings.lifecycle:
            # A failed transition has logged its reason (on_configure names the model and the fix).
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                status = 1
            elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                status = 1
        if status == 0:
            interrupts.while_spinning()
            spin_until_shutdown(node)
    except ValueError as exc:
        rclpy.logging.get_logger("clipseg").fatal(str(exc))
        status = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if teardown_deadline_s is not None:
            exit_if_stuck(teardown_deadline_s)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return status


def spin_until_shutdown(node) -> None:
    """``rclpy.spin`` until the context is shut down (Ctrl-C/SIGTERM). A shutdown that lands
    between two waits makes rclpy fail to build its next wait set (RCLError, "context is not
    valid") instead of raising ExternalShutdownException: that is the same normal end."""
    try:
        rclpy.spin(node)
    except _rclpy_impl.RCLError:
        if node.context.ok():
            raise


class _Interrupts:
    """Python's part of Ctrl-C/SIGTERM handling. rclpy's own handler shuts the context down and
    then calls this one. Before spinning (loading the model) it raises KeyboardInterrupt to stop
    at once; while spinning it does nothing, so the executor ends with ExternalShutdownException
    at its next wait instead of a KeyboardInterrupt landing between any two bytecodes (seen: one
    hit rclpy's Task constructor and left a half-built Task whose ``__del__`` printed a traceback)."""

    def __init__(self):
        self._raise = True

    def while_spinning(self) -> None:
        self._raise = False

    def __call__(self, signum, frame) -> None:
        if self._raise:
            raise KeyboardInterrupt


def exit_if_stuck(deadline_s: float) -> None:
    """End the process (status 1, thread stacks on stderr) if teardown is still running after
    ``deadline_s``. faulthandler's watchdog is a C thread: it fires even while the main thread is
    stuck inside a C call that holds the GIL, as a Python thread could not (seen: the DDS
    deadlock blocked rclpy's node destruction with the GIL held)."""
    sys.stderr.write(f"[clipseg] shutting down (teardown deadline {deadline_s:g} s)\n")
    sys.stderr.flush()
    faulthandler.dump_traceback_later(deadline_s, exit=True)


def run() -> None:
    """Process entry point: :func:`main`, then exit at once. Everything that needs closing (node,
    DDS, inference thread) is closed by then; the interpreter's own teardown with transformers
    imported takes 1.2-1.8 s on a 2-core machine, which would break the 2 s budget for
    Ctrl-C/SIGTERM."""
    status = main(teardown_deadline_s=TEARDOWN_DEADLINE_S)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    run()
