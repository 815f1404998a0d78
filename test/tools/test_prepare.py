"""clipseg-prepare exports the int8 vision graph the node would export on its first start, under
the node's own cache key, so that an engine (the node's) loads it from its first frame."""

import subprocess
import sys

from clipseg_ros.core.model.engine import SegmentationEngine
from clipseg_ros.tools import prepare


def test_prepare_exports_once_and_the_engine_starts_from_the_cache(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    cache = tmp_path / "cache"
    assert prepare.main(["--model", str(tiny_checkpoint), "--dtype", "int8", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    graphs = list((cache / "onnx").glob("vision_int8_*.onnx"))
    assert len(graphs) == 1 and "exported in" in out and str(graphs[0]) in out
    assert prepare.main(["--model", str(tiny_checkpoint), "--dtype", "int8", "--cache", str(cache)]) == 0
    assert "already cached" in capsys.readouterr().out
    # what a node does on start: load with the export in the background; with the prepared cache
    # there is nothing to export and the first frame runs the graph
    monkeypatch.setenv("CLIPSEG_ROS_CACHE", str(cache))
    engine = SegmentationEngine.from_pretrained(str(tiny_checkpoint), device="cpu", dtype="int8",
                                                export_in_background=True)
    assert engine.network.onnx_vision_cached and engine.network.onnx_vision is not None
    assert engine.network._export_thread is None and engine.network.onnx_vision_path == graphs[0]


def test_nothing_to_prepare_and_a_bad_model_are_said(tmp_path, tiny_checkpoint, capsys):
    assert prepare.main(["--model", str(tiny_checkpoint), "--dtype", "float32", "--cache", str(tmp_path)]) == 0
    assert "nothing to prepare: precision float32" in capsys.readouterr().out
    assert not (tmp_path / "onnx").exists()
    assert prepare.main(["--model", str(tmp_path / "missing"), "--cache", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "clipseg_ros.prepare", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "clipseg-prepare" in proc.stdout and "CLIPSEG_ROS_CACHE" in proc.stdout
