"""Spin rclpy nodes in a background thread and stop cleanly (tools, demo, benchmarks, tests)."""

from __future__ import annotations

import threading


class BackgroundSpinner:
    """Runs ``spin_once`` on its own executor until :meth:`stop`; stop joins the thread before
    the executor is shut down, so no callback races a destroyed handle."""

    def __init__(self, *nodes):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self._rclpy = rclpy
        self.executor = SingleThreadedExecutor()
        for node in nodes:
            self.executor.add_node(node)
        self._running = True
        self._thread = threading.Thread(target=self._spin, name="ros_spinner", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self._running and self._rclpy.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def stop(self) -> None:
        self._running = False
        self._thread.join(timeout=5.0)
        self.executor.shutdown()
