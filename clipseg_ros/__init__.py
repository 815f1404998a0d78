"""clipseg_ros: open-vocabulary segmentation (CLIPSeg) for ROS 2.

The package is three layers; each may import only the ones listed before it:

- :mod:`clipseg_ros.core` - everything that computes: the model and its precision, prompts and
  teaching, results (masks, objects, 3D, clouds), time (flow, smoothing, tracks). Plain
  Python/torch/numpy/OpenCV; it never imports rclpy or a message package (a test enforces it).
- :mod:`clipseg_ros.ros` - the thin ROS shell: the node, its settings, cameras, message
  conversions, publishers, prompt interfaces and process. Messages in, arrays to the core, results
  back out as messages.
- :mod:`clipseg_ros.tools` - offline programs on top of both: the demo, the labeller
  (``clipseg-label``), COCO export, bag reading.

The modules at this level are entry points only: ``python -m clipseg_ros`` (the node, as
``clipseg_node``), ``python -m clipseg_ros.demo`` and ``python -m clipseg_ros.label`` (as
``clipseg-label``).
"""

from importlib import metadata as _metadata

try:  # the one version is package.xml's; setup.py reads it from there
    __version__ = _metadata.version("clipseg_ros")
except _metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"
