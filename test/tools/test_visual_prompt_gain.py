"""benchmarks/visual_prompt_gain.py runs end to end (tiny random weights: mechanics, not quality)."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_script_compares_every_style_with_plain(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(0)
    for k in range(2):
        photo = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
        mask = np.zeros((40, 50), np.uint8)
        mask[10 + k:30, 15:35 - k] = 255
        cv2.imwrite(str(tmp_path / f"photo{k}.png"), photo)
        cv2.imwrite(str(tmp_path / f"photo{k}.mask.png"), mask)
    cv2.imwrite(str(tmp_path / "no_mask.png"), np.zeros((5, 5, 3), np.uint8))  # ignored: no mask
    out = tmp_path / "gain.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "visual_prompt_gain.py"), "--model",
                           str(tiny_checkpoint), "--images", str(tmp_path), "--device", "cpu", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["photos"] == ["photo0.png", "photo1.png"] and result["pairs"] == 2
    styles = result["styles"]
    assert list(styles) == ["plain", "crop", "darken", "blur", "crop_blur", "crop_darken", "crop_darken_blur"]
    assert styles["plain"]["gain_over_plain_points"] == 0.0
    for values in styles.values():
        assert 0.0 <= values["object_probability"] <= 1.0 and 0.0 <= values["outside_probability"] <= 1.0
    # engineered prompts are different images, so (even with random weights) different probabilities
    assert styles["crop_darken_blur"]["object_probability"] != styles["plain"]["object_probability"]
    assert "crop_darken_blur" in proc.stdout
