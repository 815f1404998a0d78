"""``python -m clipseg_ros``: the node's process (same as the ``clipseg_node`` executable)."""

from clipseg_ros.ros.process import run

run()
