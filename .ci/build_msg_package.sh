#!/usr/bin/env bash
# Build one ROS 2 message package (ament_cmake + rosidl) with CMake and install it into a prefix.
#   bash .ci/build_msg_package.sh SOURCE NAME VENV [PREFIX]
# VENV holds the ROS 2 wheels (ament, rosidl); PREFIX (default VENV) is where it is installed;
# the build folder is PREFIX/build/NAME (never the repository's build/, which is colcon's).
set -euo pipefail
SOURCE=$(cd "$1" && pwd)
NAME=$2
VENV=$(cd "$3" && pwd)
PREFIX=${4:-$VENV}
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)
BUILD=$PREFIX/build/$NAME
mkdir -p "$(dirname "$BUILD")"
cmake -S "$SOURCE" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$PREFIX" -DCMAKE_PREFIX_PATH="$VENV" \
  -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF >"$BUILD.log" 2>&1 || { cat "$BUILD.log"; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" >>"$BUILD.log" 2>&1 || { tail -50 "$BUILD.log"; exit 1; }
cmake --install "$BUILD" >>"$BUILD.log" 2>&1 || { tail -50 "$BUILD.log"; exit 1; }
