"""``python -m clipseg_ros.label``: pre-label recorded data offline (see
:mod:`clipseg_ros.tools.label`; also the ``clipseg-label`` executable)."""

import sys

from clipseg_ros.tools.label import main

if __name__ == "__main__":
    sys.exit(main())
