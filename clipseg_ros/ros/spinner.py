"""Spin rclpy nodes in a background thread and stop cleanly (tools, demo, benchmarks, tests)."""

from __future__ import annotations

import threading


class BackgroundSpinner:
    """Runs ``spin_once`` on its own executor (in the nodes' context) until :meth:`stop` or the
    context shuts down; stop joins the thread before the executor is shut down, so no callback
    races a destroyed handle (unless its ``timeout`` runs out first: then the thread is left to
    end by itself, quietly)."""

    def __init__(self, *nodes, name: str = "ros_spinner"):
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor(context=nodes[0].context)  # the nodes' own context
        for node in nodes:
            self.executor.add_node(node)
        self._running = True
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self._running and self.executor.context.ok():
                self.executor.spin_once(timeout_sec=0.5)  # stop() wakes it at once
        except ExternalShutdownException:  # Ctrl-C: the context is shutting down
            pass
        except Exception:  # noqa: BLE001 - decided below
            # Ctrl-C can shut the context down between the loop's check and the next wait
            # ("failed to initialize wait set: the given context is not valid"), and a stop()
            # that gave up waiting tears the executor down under this thread: either way,
            # spinning is over. Anything else is a real failure and is raised.
            if self._running and self.executor.context.ok():
                raise

    def request_stop(self) -> None:
        """Tell the thread to stop after the callback it runs (returns at once)."""
        self._running = False
        self.executor.wake()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop spinning; a callback still running after ``timeout`` s is abandoned (the thread
        is a daemon)."""
        self.request_stop()
        self._thread.join(timeout=max(0.0, timeout))
        self.executor.shutdown(timeout_sec=0)
