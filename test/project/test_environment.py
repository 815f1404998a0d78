"""The development environment has exactly one OpenCV, the contrib wheel: every OpenCV wheel
installs the same ``cv2`` package, so a second one overwrites files of the first (setup_env.sh
removes the others)."""

from importlib import metadata

import cv2


def test_the_only_opencv_is_the_contrib_wheel():
    names = sorted({(d.metadata["Name"] or "").lower() for d in metadata.distributions()
                    if (d.metadata["Name"] or "").lower().startswith("opencv")})
    assert names == ["opencv-contrib-python-headless"]
    assert hasattr(cv2, "ximgproc") and metadata.version("opencv-contrib-python-headless").startswith(cv2.__version__)
