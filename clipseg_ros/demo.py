"""``python -m clipseg_ros.demo``: the node on the bundled sample images (see
:mod:`clipseg_ros.tools.demo`; also the ``clipseg_demo`` executable)."""

import sys

from clipseg_ros.tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
