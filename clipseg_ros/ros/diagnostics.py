"""Health reports for ``/diagnostics`` (``diagnostic_msgs/DiagnosticArray``).

``diagnostic_updater`` is not installable from PyPI, and the node needs little of it: this module
keeps per-camera statistics (pure Python, thread-safe, bounded memory), judges them (OK / WARN /
ERROR with a reason) and builds ``DiagnosticStatus`` messages. The node publishes one array per
second.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # DiagnosticStatus levels as ints (the message holds one byte)
WINDOW_S = 5.0  # rates and latency percentiles are over the last few seconds
_MAX_SAMPLES = 2048  # bounds memory whatever the camera rate


class SlidingWindow:
    """Timestamped samples of the last ``span`` seconds: event rate and value percentiles."""

    def __init__(self, span: float = WINDOW_S):
        self.span = span
        self._samples: deque[tuple[float, float]] = deque(maxlen=_MAX_SAMPLES)

    def add(self, t: float, value: float = 0.0) -> None:
        self._samples.append((t, value))

    def _recent(self, now: float) -> list[float]:
        while self._samples and self._samples[0][0] < now - self.span:
            self._samples.popleft()
        return [v for _, v in self._samples]

    def count(self, now: float) -> int:
        return len(self._recent(now))

    def rate(self, now: float, since: float) -> float:
        """Events per second over the window (or since ``since`` when that is more recent)."""
        elapsed = min(self.span, now - since)
        return self.count(now) / elapsed if elapsed > 1e-3 else 0.0

    def percentile(self, now: float, q: float) -> float | None:
        values = sorted(self._recent(now))
        if not values:
            return None
        idx = min(len(values) - 1, max(0, round(q / 100.0 * (len(values) - 1))))
        return values[idx]


@dataclass
class StreamStats:
    """What happened to one camera's frames. Updated by the executor thread (arrivals) and the
    inference thread (results); read by the diagnostics timer."""

    topic: str
    since: float  # when the stream was (re)activated
    received: int = 0
    superseded: int = 0  # overwritten by a newer frame before inference (by design: no queue)
    unreadable: int = 0  # refused by conversion or size checks (on arrival or when taken)
    failed: int = 0  # lost to an inference exception
    processed: int = 0
    consecutive_failures: int = 0
    last_received: float | None = None
    last_error: str = ""
    inputs: SlidingWindow = field(default_factory=SlidingWindow)
    outputs: SlidingWindow = field(default_factory=SlidingWindow)
    # Frames whose readability is known (checked on arrival and refused, or decoded when taken):
    # unreadable frames are judged against these, not against every arrival, since most
    # arrivals are superseded unread at a throttled rate.
    examined: SlidingWindow = field(default_factory=SlidingWindow)
    refused: SlidingWindow = field(default_factory=SlidingWindow)
    model_ms: SlidingWindow = field(default_factory=SlidingWindow)
    latency_ms: SlidingWindow = field(default_factory=SlidingWindow)  # receipt -> published
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_received(self, now: float, superseded: bool) -> None:
        with self.lock:
            self.received += 1
            self.superseded += int(superseded)
            self.last_received = now
            self.inputs.add(now)

    def on_unreadable(self, now: float, reason: str) -> None:
        with self.lock:
            self.unreadable += 1
            self.last_error = reason
            self.refused.add(now)
            self.examined.add(now)

    def on_readable(self, now: float) -> None:
        with self.lock:
            self.examined.add(now)

    def on_failed(self, reason: str) -> None:
        with self.lock:
            self.failed += 1
            self.consecutive_failures += 1
            self.last_error = reason

    def on_published(self, now: float, model_ms: float, latency_ms: float) -> None:
        with self.lock:
            self.processed += 1
            self.consecutive_failures = 0
            self.outputs.add(now)
            self.model_ms.add(now, model_ms)
            self.latency_ms.add(now, latency_ms)

    def assess(self, now: float, input_timeout: float, max_latency_s: float) -> tuple[int, str, dict]:
        """(level, message, values) for this camera right now."""
        with self.lock:
            level, problems = OK, []

            def flag(lvl: int, text: str) -> None:
                nonlocal level
                level = max(level, lvl)
                problems.append(text)

            age = None if self.last_received is None else now - self.last_received
            if age is None and now - self.since > input_timeout:
                flag(WARN, f"no frames received on {self.topic}")
            elif age is not None and age > input_timeout:
                flag(WARN, f"no input for {age:.1f} s")
            refused, examined = self.refused.count(now), self.examined.count(now)
            if refused and refused >= examined:
                flag(ERROR, f"all recent frames unreadable: {self.last_error}")
            elif refused:
                flag(WARN, f"{refused} of {examined} recent frames examined were unreadable: {self.last_error}")
            if self.consecutive_failures:
                flag(ERROR, f"segmentation failing ({self.consecutive_failures} in a row): {self.last_error}")
            p50, p95 = self.latency_ms.percentile(now, 50), self.latency_ms.percentile(now, 95)
            if p95 is not None and p95 > 2e3 * max_latency_s:
                flag(ERROR, f"latency p95 {p95 / 1e3:.2f} s is over twice max_latency ({max_latency_s:g} s)")
            elif p95 is not None and p95 > 1e3 * max_latency_s:
                flag(WARN, f"latency p95 {p95 / 1e3:.2f} s is over max_latency ({max_latency_s:g} s)")
            in_rate, out_rate = self.inputs.rate(now, self.since), self.outputs.rate(now, self.since)
            values = {
                "topic": self.topic,
                "input rate (Hz)": f"{in_rate:.2f}",
                "output rate (Hz)": f"{out_rate:.2f}",
                "last frame age (s)": "never" if age is None else f"{age:.2f}",
                "model latency p50 (ms)": _fmt(self.model_ms.percentile(now, 50)),
                "model latency p95 (ms)": _fmt(self.model_ms.percentile(now, 95)),
                "latency p50 (ms)": _fmt(p50),
                "latency p95 (ms)": _fmt(p95),
                "frames received": str(self.received),
                "frames processed": str(self.processed),
                "dropped: superseded": str(self.superseded),
                "dropped: unreadable": str(self.unreadable),
                "dropped: failed": str(self.failed),
            }
            message = "; ".join(problems) if problems else f"segmenting at {out_rate:.2f} Hz"
            return level, message, values


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def make_status(level: int, name: str, message: str, hardware_id: str, values: dict) -> DiagnosticStatus:
    status = DiagnosticStatus()
    status.level = bytes([level])
    status.name = name
    status.message = message
    status.hardware_id = hardware_id
    status.values = [KeyValue(key=str(k), value=str(v)) for k, v in values.items()]
    return status


def level_of(status: DiagnosticStatus) -> int:
    """The status level as an int (the field is a byte in rclpy messages)."""
    lvl = status.level
    return lvl[0] if isinstance(lvl, (bytes, bytearray)) else int(lvl)
