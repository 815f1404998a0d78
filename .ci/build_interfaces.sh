#!/usr/bin/env bash
# Build clipseg_ros_interfaces (msg/) with CMake and install it into a prefix (default: the venv).
#   bash .ci/build_interfaces.sh VENV [PREFIX]
# VENV holds the ROS 2 wheels (ament, rosidl); PREFIX is where the package is installed.
# The build folder is PREFIX/build/clipseg_ros_interfaces, never the repository's build/: that one
# is colcon's, and colcon reuses a CMake cache it finds there (with this install prefix), so an
# in-repo `colcon build` would install into the venv and leave install/ without the package.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$(cd "$1" && pwd)
PREFIX=${2:-$VENV}
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)

# Earlier versions of this setup built in the repository's build/ folder: remove such a build
# (recognised by its install prefix), so that colcon configures its own.
OLD=$ROOT/build/clipseg_ros_interfaces
if [ -f "$OLD/CMakeCache.txt" ] && grep -qx "CMAKE_INSTALL_PREFIX:PATH=$PREFIX" "$OLD/CMakeCache.txt"; then
  echo "build_interfaces: removing $OLD (an earlier setup's build into $PREFIX; colcon would reuse it)"
  rm -rf "$OLD" "$OLD.log"
fi

bash .ci/build_msg_package.sh msg clipseg_ros_interfaces "$VENV" "$PREFIX"
