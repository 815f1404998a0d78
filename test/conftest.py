"""Shared fixtures: a tiny random CLIPSeg checkpoint saved once per test session."""

import os
import random
import struct
import sys
import tempfile
import zlib

import numpy as np
import pytest

# Isolate this test run's DDS traffic from anything else on the machine (parallel CI runs, a
# developer's robot session), and let large images cross between processes: Fast DDS's default
# transports drop large best-effort samples. Set before rclpy initialises; subprocesses inherit.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
# int8 graphs exported by tests go to a folder of this run's own, not the user's cache.
os.environ.setdefault("CLIPSEG_ROS_CACHE", tempfile.mkdtemp(prefix="clipseg_ros_test_cache_"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("tiny_clipseg"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def known_answer_checkpoint(tmp_path_factory):
    """The hand-set CLIPSeg whose every prompt's mask is the red 16 px patches of the input."""
    from clipseg_ros.core.model.known_answer_checkpoint import make_known_answer_checkpoint

    return make_known_answer_checkpoint(tmp_path_factory.mktemp("known_answer_clipseg"))


@pytest.fixture(scope="session")
def known_answer_engine(known_answer_checkpoint):
    from clipseg_ros.core.model.engine import SegmentationEngine

    return SegmentationEngine.from_pretrained(str(known_answer_checkpoint), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    from clipseg_ros.core.model.engine import SegmentationEngine

    return SegmentationEngine.from_pretrained(str(tiny_checkpoint), device="cpu", dtype="float32")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_image(rng, h=48, w=64, channels=3):
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def ros():
    """rclpy initialised for one test module (the node under test runs in its own process or,
    for fault injection, in this one)."""
    import rclpy

    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture(scope="module")
def client(ros, request):
    """A test node spun in the background, named after the module."""
    from ros_helpers import RosClient

    c = RosClient(f"client_{request.module.__name__}")
    yield c
    c.close()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height 8-bit grey (its pixel data is far too short)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def quaternion_matrix(q) -> np.ndarray:
    """The rotation matrix (columns: the rotated frame's axes) of a unit quaternion: (x, y, z, w)
    or a geometry_msgs Quaternion."""
    x, y, z, w = (q.x, q.y, q.z, q.w) if hasattr(q, "w") else q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
