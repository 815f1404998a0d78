"""Log lines throttled per kind of problem, so a 30 Hz stream of garbage cannot flood the log."""

from __future__ import annotations

import re
import threading
import time

WARN_THROTTLE_S = 5.0  # one log line per kind of problem (and camera) per this many seconds
_MAX_KEYS = 256


def problem_kind(reason: str) -> str:
    """A throttling key for a reason text: numbers and quoted names masked, so '3 bytes' and
    '5 bytes' are one kind of problem while a different problem is still reported."""
    return re.sub(r"'[^']*'|\d+", "#", reason)[:80]


def failure_line(exc: BaseException) -> str:
    """An exception as one log line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


class ThrottledLog:
    """Logs at most once per ``period`` for each key, then says how many were held back."""

    def __init__(self, logger, period: float = WARN_THROTTLE_S):
        self._logger = logger
        self._period = period
        self._last: dict[str, tuple[float, int]] = {}  # key -> (last logged, held back since)
        self._lock = threading.Lock()

    def warning(self, key: str, text: str) -> None:
        text = self._admit(key, text)
        if text is not None:
            self._logger.warning(text)

    def error(self, key: str, text: str) -> None:
        # rclpy pins one severity per call site: two methods, not one with a chosen level.
        text = self._admit(key, text)
        if text is not None:
            self._logger.error(text)

    def _admit(self, key: str, text: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            last, held_back = self._last.get(key, (float("-inf"), 0))
            if now - last < self._period:
                self._last[key] = (last, held_back + 1)
                return None
            if len(self._last) >= _MAX_KEYS:  # bounded: forget lines logged long ago
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self._period}
            self._last[key] = (now, 0)
        if held_back:
            text += f" [{held_back} more like this in the last {now - last:.0f} s]"
        return text
