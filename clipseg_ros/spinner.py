"""Spin rclpy nodes in a background thread and stop cleanly (tools, demo, benchmarks, tests)."""

from __future__ import annotations

import threading


class BackgroundSpinner:
    """Runs ``spin_once`` on its own executor until :meth:`stop`; stop joins the thread before
    the executor is shut down, so no callback races a destroyed handle."""

    def __init__(self, *nodes, name: str = "ros_spinner"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self._rclpy = rclpy
        self.executor = SingleThreadedExecutor()
        for node in nodes:
            self.executor.add_node(node)
        self._running = True
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self._running and self._rclpy.ok():
                self.executor.spin_once(timeout_sec=0.5)  # stop() wakes it at once
        except ExternalShutdownException:  # Ctrl-C: the context is shutting down
            pass

    def stop(self, timeout: float = 5.0) -> None:
        """Stop spinning; a callback still running after ``timeout`` s is abandoned (the thread
        is a daemon)."""
        self._running = False
        self.executor.wake()
        self._thread.join(timeout=timeout)
        self.executor.shutdown(timeout_sec=0)
