"""The node as a child process of a tool (the demo): its log echoed, its start-up seen.

Why a tool restarts it: now and then Fast DDS (3.2, seen with every builtin transport on these
machines) never completes discovery between one pair of participants; neither side reports an
error, and that pair stays deaf to each other until one of them is recreated. A node that says it
is segmenting but never answers is that case, and a new node process (a new participant) is the
fix. :class:`ChildNode` gives the tool what it needs to see it: when the node is ready, and how
long ago.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

READY_TEXT = "segmenting "  # the node's log line once its subscriptions exist (node.py)


class ChildNode:
    """``command`` (a ``python -m clipseg_ros ...`` line) started with ``env``; every line it
    prints is echoed to ``echo`` (default: this process's stdout)."""

    def __init__(self, command: list[str], env: dict, echo=None):
        self._echo = echo or sys.stdout
        self._ready_at: float | None = None
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, name="child_node_log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if self._ready_at is None and READY_TEXT in line:
                self._ready_at = time.monotonic()
            self._echo.write(line)
            self._echo.flush()

    def ready_for(self) -> float | None:
        """Seconds since the node said it is segmenting; None before that."""
        return None if self._ready_at is None else time.monotonic() - self._ready_at

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def stop(self, timeout: float = 10.0) -> None:
        interrupt(self.proc, timeout)
        self._reader.join(2.0)


def interrupt(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT (the node's clean shutdown, as Ctrl-C), then kill after ``timeout`` s; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
