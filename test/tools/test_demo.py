"""README's main command (the demo) runs end to end on the bundled images and writes its files."""

import itertools
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from clipseg_ros.tools import demo
from clipseg_ros.tools.child_node import ChildNode


def own_domain() -> str:
    """A ROS domain of these tests' own, different from the suite's (1-100) and, like it, within
    0-101: higher domains' ports fall in Linux's ephemeral port range."""
    return str(101 - int(os.environ["ROS_DOMAIN_ID"]))


def test_demo_on_bundled_images_offline(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, HF_HUB_OFFLINE="1", ROS_DOMAIN_ID=own_domain())  # CI has no model hub: the fallback
    proc = subprocess.run([sys.executable, "-m", "clipseg_ros.tools.demo", "--output", str(out), "--max-frames", "2",
                           "--prompts", "cup; cat", "--timeout", "120"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "untrained weights: masks are meaningless" in proc.stdout
    summary = json.loads((out / "confidences.json").read_text())
    assert summary["untrained"] and summary["prompts"] == ["cup", "cat"]
    assert [f["frame"] for f in summary["frames"]] == ["coffee", "chelsea"]
    for frame in ("coffee", "chelsea"):
        for suffix in ("overlay", "label", "mask_0", "mask_1"):
            assert (out / f"{frame}_{suffix}.png").stat().st_size > 0
        conf = next(f for f in summary["frames"] if f["frame"] == frame)["confidences"]
        assert [c["prompt"] for c in conf] == ["cup", "cat"]
    import cv2

    coffee = cv2.imread(str(out / "coffee_label.png"), cv2.IMREAD_UNCHANGED)
    assert coffee.shape == (400, 600) and coffee.max() <= 2  # skimage coffee is 400x600
    assert "coffee" in proc.stdout and "max" in proc.stdout  # the per-prompt table


def deaf_node(env) -> ChildNode:
    """A process that says it is segmenting and never answers: what a node looks like to the
    player when DDS discovery between the two never completes."""
    return ChildNode([sys.executable, "-c", "print('segmenting /demo/image', flush=True); "
                      "import time; time.sleep(120)"], env)


@pytest.fixture
def player_setup(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", own_domain())
    monkeypatch.setattr(demo, "ANSWER_TIMEOUT_S", 3.0)
    env = dict(os.environ)
    real = demo.node_command(str(tiny_checkpoint), ["cup"])
    frames = [("grey", np.full((40, 60, 3), 128, np.uint8))]
    args = SimpleNamespace(timeout=90.0, camera_hz=10.0)
    return env, real, frames, args


def test_a_node_that_never_answers_is_replaced(player_setup, tmp_path, capsys):
    env, real, frames, args = player_setup
    # a deaf node first; then real ones (a real one can itself miss discovery now and then: the
    # demo then starts another, which is what this mechanism is for)
    starts = itertools.chain([lambda: deaf_node(env)], itertools.repeat(lambda: ChildNode(real, env)))
    records = demo.play(frames, tmp_path, args, lambda: next(starts)())
    assert [r["frame"] for r in records] == ["grey"]
    assert (tmp_path / "grey_label.png").is_file()
    assert "no answer reached this player" in capsys.readouterr().out


def test_a_player_no_node_answers_gives_up_with_the_reason(player_setup, tmp_path, monkeypatch):
    env, _, frames, args = player_setup
    monkeypatch.setattr(demo, "NODE_STARTS", 2)
    with pytest.raises(SystemExit, match="never answered this player \\(2 starts\\)"):
        demo.play(frames, tmp_path, args, lambda: deaf_node(env))
