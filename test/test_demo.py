"""README's main command (the demo) runs end to end on the bundled images and writes its files."""

import json
import os
import subprocess
import sys


def test_demo_on_bundled_images_offline(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, HF_HUB_OFFLINE="1")  # CI has no model hub: exercise the fallback
    # A domain of its own: once, run right after the camera-rate tests' node in the same domain,
    # the demo's node and player never saw each other (cause not established).
    env["ROS_DOMAIN_ID"] = str((int(os.environ["ROS_DOMAIN_ID"]) + 101) % 232)
    proc = subprocess.run([sys.executable, "-m", "clipseg_ros.demo", "--output", str(out), "--max-frames", "2",
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
