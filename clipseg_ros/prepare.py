"""``python -m clipseg_ros.prepare``: export and cache a model's graphs ahead of time (see
:mod:`clipseg_ros.tools.prepare`; also the ``clipseg-prepare`` executable)."""

import sys

from clipseg_ros.tools.prepare import main

if __name__ == "__main__":
    sys.exit(main())
