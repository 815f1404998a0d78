"""The benchmark scripts behind the README's tables still run end to end (tiny random model,
short runs: mechanics and the JSON they write, not speed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_script(name: str, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=BENCHMARKS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("script, args, keys", [
    ("bench_label.py", ["--frames", "6", "--size", "tiny"], ["live_node", "labeller", "precision"]),
    ("bench_precision.py", ["--quick", "--seconds", "3"], ["engine", "agreement", "node", "auto"]),
    ("bench_propagation.py", ["--quick", "--seconds", "3"], ["motion", "cost_640x480_8_prompts", "node", "flicker"]),
    ("bench_consumers.py", ["--quick", "--repeats", "1"], ["rows", "vision_msgs"]),
    ("bench_live.py", ["--quick", "--seconds", "2"], ["blog_usage_ms", "engine", "node", "first_start"]),
    ("int8_weights.py", ["--quick", "--repeats", "1"], ["rows", "chosen"]),
    ("part_runtimes.py", ["--quick", "--rounds", "1"], ["vision", "decoder", "text", "auto"]),
    ("heap_settings.py", ["--quick", "--seconds", "2"], ["rows", "auto"]),
    ("thread_settings.py", ["--quick", "--seconds", "2"], ["rows", "default_threads"]),
])
def test_benchmark_runs_and_writes_its_json(script, args, keys, tmp_path):
    out = tmp_path / "result.json"
    run_script(script, *args, "--json", str(out))
    result = json.loads(out.read_text())
    assert all(k in result for k in keys) and result["cpu"]
    if script == "bench_label.py":
        assert result["live_node"]["frames"] == 6 and [r["frames"] for r in result["labeller"]] == [6, 6]
    if script == "bench_precision.py":
        assert {r["precision"] for r in result["engine"]} >= {"float32", "bfloat16", "int8"}
        assert all(r["mask_agreement"] > 0.9 for r in result["agreement"])
        cold = [("auto", "empty")] if "(onnxruntime)" in result["auto"] else []  # a first start, then later ones
        assert [(n["dtype"], n["graph_cache"]) for n in result["node"]] == cold + [("auto", "filled"),
                                                                                  ("float32", "filled")]
    if script == "bench_live.py":
        assert [(r["pipeline"], r["prompts"]) for r in result["node"]] == [(p, n) for p in (True, False)
                                                                             for n in (1, 4, 8)]
        assert all(r["outputs"] > 0 and r["end_to_end_ms_p50"] > 0 for r in result["node"])
        piped = result["node"][0]
        assert "clipseg_inferen" in piped["cores_by_thread"] and "ms a cycle" in piped["outputs_thread"]
        assert piped["page_faults_per_output"]["clipseg_inferen"] >= 0
        assert result["node"][3]["outputs_thread"].startswith("off")
        first = result["first_start"]
        assert first["empty_cache"]["outputs"] > 0 and first["prepared_cache"]["first_output_s"] > 0
    if script == "int8_weights.py":
        assert [r["variant"] for r in result["rows"]][0] == "float32" and len(result["rows"]) == 4
        assert all(0.9 < r["mask_agreement"] <= 1 for r in result["rows"][1:])
    if script == "thread_settings.py":
        assert [(r["pipeline"], r["num_threads"]) for r in result["rows"]] == [(True, 0), (True, 1), (False, 0), (False, 1)]
        assert all(r["outputs"] > 0 for r in result["rows"])
    if script == "heap_settings.py":
        assert [r["heap"] for r in result["rows"]] == ["kept mapped (default)", "glibc's own thresholds"]
        assert all(r["outputs"] > 0 and "clipseg_inferen" in r["page_faults_per_output"] for r in result["rows"])
    if script == "part_runtimes.py":
        vision = result["vision"]["rows"]
        assert [r["variant"] for r in vision][:2] == ["float32 (torch)", "auto: int8"] and len(vision) == 5
        assert [r["prompts"] for r in result["decoder"]["rows"]] == [1] * 3 + [4] * 3 + [8] * 3
        per_frame = vision[2:] + result["decoder"]["rows"][-2:]
        assert all(0.9 < r["mask_agreement"] <= 1 and isinstance(r["better"], bool) for r in per_frame)
        assert "saved_ms_per_prompt_change" in result["text"]["rows"][1]
        assert result["text"]["rows"][1]["max_embedding_difference"] < 1e-3  # the same float32 maths
    if script == "bench_consumers.py":
        assert [r["size"] for r in result["rows"]] == ["640x480", "1280x720"]
        assert all(r["objects_cloud_points"] > 0 and r["aligned_cloud_points"] == int(r["size"].split("x")[0]) *
                   int(r["size"].split("x")[1]) for r in result["rows"])
    if script == "bench_propagation.py":
        assert len(result["node"]["rows"]) == 6 and result["motion"][0]["iou_after_15"] > 0.9
