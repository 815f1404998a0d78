"""Shared fixtures: a tiny random CLIPSeg checkpoint saved once per test session."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from clipseg_ros.random_checkpoint import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("tiny_clipseg"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    from clipseg_ros.engine import SegmentationEngine

    return SegmentationEngine.from_pretrained(str(tiny_checkpoint), device="cpu", dtype="float32")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_image(rng, h=48, w=64, channels=3):
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)
