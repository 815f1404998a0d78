"""benchmarks/refine_gain.py on images with ground truth, end to end, with a known answer: the
known-answer checkpoint's block masks on synthetic scenes, which refinement brings to the truth."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from clipseg_ros.tools.synthetic_scenes import scenes

ROOT = Path(__file__).resolve().parents[2]


def test_script_scores_every_mode_against_the_truth(tmp_path, known_answer_checkpoint):
    by_name = {s.name: s for s in scenes((240, 320))}
    for stem, name, with_depth in [("disc", "disc on plain", True), ("poster", "close colours, flat (a poster)", False)]:
        scene = by_name[name]
        cv2.imwrite(str(tmp_path / f"{stem}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp_path / f"{stem}.mask.png"), scene.truth.astype(np.uint8) * 255)
        if with_depth:
            cv2.imwrite(str(tmp_path / f"{stem}.depth.png"), np.round(scene.depth * 1000).astype(np.uint16))
    (tmp_path / "disc.txt").write_text("a red disc\n")
    cv2.imwrite(str(tmp_path / "stray.png"), np.zeros((5, 5, 3), np.uint8))  # no ground truth: skipped
    out = tmp_path / "gain.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "refine_gain.py"), "--model",
                           str(known_answer_checkpoint), "--images", str(tmp_path), "--device", "cpu",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {r["image"]: r for r in json.loads(out.read_text())["images"]}
    assert set(rows) == {"disc.png", "poster.png"} and "stray.png: no stray.mask.png, skipped" in proc.stdout
    disc, poster = rows["disc.png"], rows["poster.png"]
    assert disc["prompt"] == "a red disc" and disc["has_depth"] and not poster["has_depth"]
    assert disc["none"][0] < 0.9 and disc["guided+depth"][0] >= 0.98 and disc["depth"][0] >= 0.98
    assert poster["guided"][0] >= 0.98 and poster["depth"] == poster["none"]  # no depth image: depth runs none
