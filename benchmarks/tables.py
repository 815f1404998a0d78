"""The docs' benchmark tables, rendered from the JSON the benchmark scripts wrote.

Every table of figures in README.md and docs/*.md sits between two markers::

    <!-- table: engine (benchmarks/results/engine_cpu.json) -->
    | ... the table ... |
    <!-- /table -->

    python benchmarks/tables.py           # rewrite every marked table from its JSON
    python benchmarks/tables.py --check   # exit 1 naming each table that differs (the test does this)

A rerun of a benchmark therefore cannot leave a stale table: ``test/project/test_docs_tables.py``
fails until the docs are rendered again.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = ("README.md", "docs/*.md")
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) \(benchmarks/results/(?P<file>[\w.-]+\.json)\) -->\n)"
                   r"(?P<body>.*?)(<!-- /table -->)", re.S)


def _table(header: list[str], align: str, rows: list[list]) -> str:
    """A markdown table; ``align`` has one letter per column: l (left) or r (right)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _f(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _x(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}x"


def engine(d: dict) -> str:
    return _table(["prompts", "HF blog usage (ms)", "engine (ms)", "speed-up", "max abs logit diff", "preprocess diff"],
                  "rrrrrr", [[r["prompts"], _f(r["baseline_ms"]), _f(r["engine_ms"]), _x(r["speedup"]),
                              f"{r['max_abs_logit_diff']:.1e}", f"{r['max_abs_preprocess_diff']:.1e}"] for r in d["rows"]])


def precision_engine(d: dict) -> str:
    blog = d["blog_usage_ms_8_prompts"]
    rows = []
    for r in d["engine"]:
        vs_blog = f"{blog / r['total_ms']:.2f}" if r["prompts"] == 8 else ""
        label = {"int8": "int8 (onnxruntime vision, float32 rest)", "auto": "`auto`"}.get(r["precision"], r["precision"])
        rows.append([label, r["prompts"], _f(r["preprocess_ms"]), _f(r["vision_ms"]), _f(r["decoder_ms"]),
                     _f(r["post_ms"]), _f(r["total_ms"]), f"{r['speedup_vs_float32']:.2f}", vs_blog])
    return _table(["precision", "N", "preprocess", "vision", "decoder", "post", "total (ms)", "vs float32", "vs blog"],
                  "lrrrrrrrr", rows)


def precision_agreement(d: dict) -> str:
    return _table(["precision", "frames x prompts", "mask pixels agreeing", "worst image and prompt",
                   "largest probability difference"], "lrrrr",
                  [[r["precision"], f"{r['frames']} x {r['prompts']}", f"{100 * r['mask_agreement']:.2f}%",
                    f"{100 * r['worst_mask_agreement']:.2f}%", f"{r['max_probability_difference']:.3f}"]
                   for r in d["agreement"]])


def precision_node(d: dict) -> str:
    rows = []
    for r in d["node"]:
        cache = r.get("graph_cache", "") if r["dtype"] != "float32" else ""  # float32 runs no graph
        rows.append([f"`{r['dtype']}`", cache, f"{r['output_hz']:.1f}",
                     f"{r['latency_ms_p50']:.0f} / {r['latency_ms_p95']:.0f}", f"{r['first_output_s']:.1f}"])
    return _table(["`dtype`", "graph cache", "outputs/s", "latency p50 / p95 (ms)", "start to first output (s)"],
                  "llrrr", rows)


def onnx_probe(d: dict) -> str:
    return _table(["runtime", "precision", "vision (ms)", "vs torch float32", "vs torch bfloat16",
                   "relative error of the last layer used"], "llrrrr",
                  [[r["runtime"], r["precision"], _f(r["ms"]), f"{r['speedup_vs_torch_float32']:.2f}",
                    f"{r['speedup_vs_torch_bfloat16']:.2f}", f"{100 * r['relative_error']:.1f}%"] for r in d["vision"]])


def node_overhead(d: dict) -> str:
    return _table(["input", "model (ms)", "node overhead (ms)", "overhead / model", "convert", "post", "fill", "publish"],
                  "lrrrrrrr", [[r["size"], _f(r["model_ms"]), _f(r["overhead_ms"]), f"{100 * r['overhead_ratio']:.1f}%",
                                f"{r['convert_ms']:.2f}", f"{r['post_ms']:.2f}", f"{r['fill_ms']:.2f}",
                                f"{r['publish_ms']:.2f}"] for r in d["overhead"]])


def propagation_accuracy(d: dict) -> str:
    return _table(["motion", "IoU after 5 frames", "after 15", "after 30"], "lrrr",
                  [[r["motion"], f"{r['iou_after_5']:.3f}" if "iou_after_5" in r else f"{r['iou_after_7']:.3f} (after 7)",
                    f"{r['iou_after_15']:.3f}", f"{r['iou_after_30']:.3f}"] for r in d["motion"]])


def propagation_node(d: dict) -> str:
    rows, base = [], {}
    for r in d["node"]["rows"]:
        if not r["propagate"]:
            base[r["rate"]] = r["model_hz"]
    for r in d["node"]["rows"]:
        prop = f"`propagate_rate` {r['propagate_rate']:g}" if r["propagate"] else "off"
        budget = "" if r["propagation_budget"] is None else (
            "1.0 (none)" if r["propagation_budget"] >= 1 else f"{r['propagation_budget']:g}")
        ratio = r["model_hz"] / base[r["rate"]] if base.get(r["rate"]) else None
        rows.append([f"{r['rate']:g}", prop, budget, f"{r['model_hz']:.2f}", f"{r['propagated_hz']:.1f}" if r["propagate"]
                     else "0", f"{r['outputs_hz']:.2f}" if not r["propagate"] else f"{r['outputs_hz']:.1f}",
                     _f(ratio, 2)])
    return _table(["`rate`", "propagation", "budget", "model frames/s", "propagated outputs/s", "all outputs/s",
                   "model rate vs off"], "rlrrrrr", rows)


def label_speed(d: dict) -> str:
    rows = [["live node (`rate` 0)", f"{d['live_node']['frames_per_s']:.2f}", "1.00"]]
    rows += [[f"`clipseg-label --batch {r['batch']}`", f"{r['frames_per_s']:.2f}", f"{r['vs_live_node']:.2f}"]
             for r in d["labeller"]]
    return _table(["", "frames/s", "vs the live node"], "lrr", rows)


def label_memory(d: dict) -> str:
    return _table(["frames", "Python heap peak (MB)", "max RSS (MB)", "record size (kB)"], "rrrr",
                  [[r["frames"], f"{r['python_heap_peak_mb']:.1f}", f"{r['max_rss_mb']:.1f}", f"{r['record_kb']:.1f}"]
                   for r in d["rows"]])


def spatial(d: dict) -> str:
    rows = []
    for r in d["rows"]:
        rows.append([r['size'], f"{r['model_ms']:.0f}", f"{r['objects_only_ms']:.1f}", f"{r['scene_ms']:.1f}",
                     f"{r['messages_3d_ms']:.1f}", f"{100 * r['share_of_model']:.1f}%",
                     f"{r['objects']} / {r['cloud_points']} + {r['obstacle_points']} + {r['clearing_points']}"])
    return _table(["input", "model (ms)", "objects (ms)", "objects + 3D + clouds (ms)", "3D messages (ms)",
                   "share of model", "objects / cloud + obstacle + clearing points"], "lrrrrrr", rows)


def consumers(d: dict) -> str:
    rows = [[r["size"], f"{r['model_ms']:.0f}", f"{r['boxes_ms']:.1f}", f"{r['outputs_ms']:.1f}",
             f"{100 * r['share_of_model']:.1f}%", r["objects"], r["objects_cloud_points"]] for r in d["rows"]]
    return _table([f"input ({d['cpu']}, {d['threads']} threads)", "model (ms)", "oriented boxes (ms)",
                   "consumer outputs (ms)", "share of model", "objects",
                   "objects cloud points"], "lrrrrrr", rows)


REFINE_COLUMNS = ("none", "guided", "depth", "guided+depth")


def refine_scenes(d: dict) -> str:
    """IoU / boundary F-score per synthetic scene and refine mode, both sizes."""
    rows = [[r["scene"], r["size"], *(f"{r[m][0]:.3f} / {r[m][1]:.2f}" for m in REFINE_COLUMNS)] for r in d["scenes"]]
    for size, means in d["mean_iou"].items():
        rows.append(["**mean IoU**", size, *(f"**{means[m]:.3f}**" for m in REFINE_COLUMNS)])
    return _table(["scene", "input", *(f"`{m}` IoU / F" for m in REFINE_COLUMNS)], "llrrrr", rows)


def refine_summary(d: dict) -> str:
    """The front page's: mean IoU per mode on the synthetic set and the default mode's cost."""
    cost = {r["size"]: r for r in d["cost"]}
    mode = d["default"]
    rows = [[size, *(f"{means[m]:.3f}" for m in REFINE_COLUMNS), f"{100 * cost[size][mode + '_share']:.1f}%"]
            for size, means in sorted(d["mean_iou"].items(), key=lambda kv: int(kv[0].split("x")[0]))]
    return _table([f"synthetic set, mean IoU ({d['cpu']})", *(f"`{m}`" for m in REFINE_COLUMNS),
                   f"`{mode}`, 8 prompts: share of model time"], "lrrrrr", rows)


def refine_cost(d: dict) -> str:
    rows = [[r["size"], f"{r['model_ms']:.0f}", *(f"{r[m + '_ms']:.0f} ({100 * r[m + '_share']:.1f}%)"
                                                 for m in REFINE_COLUMNS[1:])] for r in d["cost"]]
    return _table([f"input, 8 prompts ({d['cpu']}, {d['threads']} threads)", "model (ms)",
                   *(f"`{m}` (ms, share of model)" for m in REFINE_COLUMNS[1:])], "lrrrr", rows)


def refine_radii(d: dict) -> str:
    """Mean IoU per radius and mode at 640x480, and the scene that limits the radius."""
    size, limiting = "640x480", "beside an orange box, 8 px apart"
    radii = sorted({r["radius"] for r in d["radii"]})
    row_of = {(r["mode"], r["radius"]): r for r in d["radii"] if r["size"] == size}
    modes = REFINE_COLUMNS[1:]
    rows = [[f"{radius:g}" + (" (default)" if radius == d["default_radius"] else ""),
             *(f"{row_of[m, radius]['mean_iou']:.3f}" for m in modes),
             f"{row_of['depth', radius]['iou'][limiting]:.3f}"] for radius in radii]
    return _table(["`refine_radius` (patches)", *(f"{size} `{m}`: mean IoU" for m in modes),
                   f"`depth` on '{limiting}'"], "lrrrr", rows)


def soak(d: dict) -> str:
    rows = []
    for w in d["windows"]:
        hz = sorted(set(w["outputs_hz"].values()))
        rows.append([f"{w['t_s'] / 60:.0f}", " / ".join(f"{h:.2f}" for h in hz), f"{w['latency_ms_p50']:.0f}",
                     f"{w['latency_ms_p95']:.0f}", f"{w['model_ms_p50']:.0f}", f"{w['rss_mib']:.0f}"])
    return _table(["t (min)", "outputs per camera (Hz)", "latency p50 (ms)", "p95 (ms)", "model time p50 (ms)",
                   "RSS (MiB)"], "rrrrrr", rows)


def headline(d: dict) -> str:
    """The front page's figures: the real node at 8 prompts on the CI machine's 2 cores."""
    auto = next(r for r in d["node"] if r["dtype"] == "auto" and r.get("graph_cache") == "filled")
    fp32 = next(r for r in d["node"] if r["dtype"] == "float32")
    eight = {r["precision"]: r for r in d["engine"] if r["prompts"] == 8}
    best = min(eight.values(), key=lambda r: r["total_ms"])
    return _table(["8 prompts, 640x480, 2 CPU cores (" + d["cpu"] + ")", "figure"], "lr", [
        ["node outputs/s, `dtype` auto / float32", f"{auto['output_hz']:.1f} / {fp32['output_hz']:.1f}"],
        ["node latency p50, `dtype` auto (ms)", f"{auto['latency_ms_p50']:.0f}"],
        ["engine frame, fastest precision (ms)", f"{best['total_ms']:.0f}"],
        ["engine vs the HF blog usage (one forward per prompt)", f"{d['blog_usage_ms_8_prompts'] / best['total_ms']:.1f}x"],
    ])


def live_engine(d: dict) -> str:
    """The engine's ms per stage with ``auto`` beside the blog usage, from bench_live.py."""
    return _table(["prompts", "preprocess", "vision", "decoder", "post", "engine (ms)", "HF blog usage (ms)", "vs blog"],
                  "rrrrrrrr", [[r["prompts"], _f(r["preprocess_ms"]), _f(r["vision_ms"]), _f(r["decoder_ms"]),
                                _f(r["post_ms"]), _f(r["total_ms"]), _f(d["blog_usage_ms"][str(r["prompts"])]),
                                _x(d["blog_usage_ms"][str(r["prompts"])] / r["total_ms"], 1)] for r in d["engine"]])


def _cores(r: dict, name: str) -> str:
    return _f(r["cores_by_thread"].get(name, 0.0), 2)


def live_node(d: dict) -> str:
    """The real node, pipelined or not, one frame at a time and under the 30 Hz camera."""
    rows = [["on" if r["pipeline"] else "off", r["prompts"], _f(r["end_to_end_ms_p50"], 0), _x(r["end_to_end_vs_blog"], 1),
             _f(r["outputs_per_s"], 2), f"{r['latency_ms_p50']:.0f} / {r['latency_ms_p95']:.0f}",
             _cores(r, "clipseg_inferen"), _cores(r, "python"), _cores(r, "clipseg_outputs") if r["pipeline"] else "",
             _cores(r, "executor")] for r in d["node"]]
    return _table(["pipeline", "prompts", "end to end p50 (ms)", "vs blog", "outputs/s at 30 Hz",
                   "latency p50 / p95 (ms)", "cores: model thread", "pool threads", "outputs thread", "executor"],
                  "lrrrrrrrrr", rows)


def live_first_start(d: dict) -> str:
    """A node's first start under the running camera, with an empty and a prepared graph cache."""
    first = d["first_start"]
    rows = [[which, _f(first[key]["first_output_s"]), _f(first[key]["outputs_per_s"], 2),
             f"{first[key]['latency_ms_p50']:.0f} / {first[key]['latency_ms_p95']:.0f}"]
            for which, key in (("empty", "empty_cache"), ("prepared (`clipseg-prepare`)", "prepared_cache"))]
    return _table([f"graph cache (`dtype` {first['dtype']}, {first['prompts']} prompts)", "start to first output (s)",
                   f"outputs/s in the next {d['window_s']:g} s", "latency p50 / p95 (ms)"], "lrrr", rows)


def int8_weights(d: dict) -> str:
    """Speed and agreement of the int8 weight types on one CPU (int8_weights.py)."""
    rows = []
    for r in d["rows"]:
        agree = r["variant"] != "float32"
        rows.append([r["variant"] + (" (chosen here)" if r["variant"] == d["chosen"] else ""), _f(r["vision_ms"]),
                     _f(r["total_ms"]), _x(r["speedup_vs_float32"]),
                     f"{r['mask_agreement']:.2%}" if agree else "", f"{r['worst_mask_agreement']:.2%}" if agree else "",
                     f"{r['worst_iou']:.3f}" if agree else "", f"{r['lost_objects']} of {r['objects']}" if agree else "",
                     ("yes" if r["meets_goal"] else "no") if agree else ""])
    return _table([f"vision encoder, {d['prompts']} prompts ({d['cpu']})", "vision (ms)", "frame (ms)", "vs float32",
                   "mask pixels agreeing", "worst frame-and-prompt", "worst IoU", "objects lost", "meets the goal"],
                  "lrrrrrrrl", rows)


def part_runtimes(d: dict) -> str:
    """Each part of the model in what auto runs and in the alternatives (part_runtimes.py)."""
    rows = []
    for part, key in (("vision encoder", "vision_ms"), ("decoder", "decoder_ms"), ("text encoder", "text_ms")):
        found = d[part.split()[0]]["rows"]
        for variant in dict.fromkeys(r["variant"] for r in found):
            mine = [r for r in found if r["variant"] == variant]
            at8 = next((r for r in mine if r.get("prompts", 8) == 8), mine[-1])
            agree = "mask_agreement" in at8
            rows.append([part, variant, " / ".join(_f(r[key]) for r in mine),
                         _x(at8["gain_vs_auto"]) if "gain_vs_auto" in at8 else "",
                         f"{at8['mask_agreement']:.2%}" if agree else "", f"{at8['worst_iou']:.3f}" if agree else "",
                         f"{at8['lost_objects']} of {at8['objects']}" if agree else "",
                         ("yes" if at8["meets_goal"] else "no") if agree else "",
                         ("yes" if at8["better"] else "no") if "better" in at8 else
                         (f"once per prompt change: {at8['saved_ms_per_prompt_change']:g} ms saved"
                          if "saved_ms_per_prompt_change" in at8 else "")])
    return _table([f"part ({d['cpu']}, {d['prompts']} prompts)", "runtime", "ms (decoder: N = 1 / 4 / 8)",
                   "speed vs auto's", "mask pixels agreeing", "worst IoU", "objects lost", "meets the goal",
                   f"a candidate for auto (goal and >= {d['min_gain']:.2f}x)"], "llrrrrrll", rows)


def heap_settings(d: dict) -> str:
    """The node at 8 prompts with its heap kept mapped and with glibc's own thresholds (heap_settings.py)."""
    rows = [[r["heap"], _f(r["end_to_end_ms_p50"], 0), _f(r["outputs_per_s"], 2),
             f"{r['latency_ms_p50']:.0f} / {r['latency_ms_p95']:.0f}",
             f"{r['page_faults_per_output'].get('clipseg_inferen', 0):,}", _cores(r, "clipseg_inferen")]
            for r in d["rows"]]
    return _table([f"heap ({d['cpu']}, {d['prompts']} prompts, in run order)", "end to end p50 (ms)",
                   "outputs/s at 30 Hz", "latency p50 / p95 (ms)", "page faults per output: model thread",
                   "cores: model thread"], "lrrrrr", rows)


def thread_settings(d: dict) -> str:
    """The node at 8 prompts per num_threads and pipeline setting (thread_settings.py)."""
    rows = [["on" if r["pipeline"] else "off",
             f"{r['num_threads']} ({d['default_threads']}, the default)" if r["num_threads"] == 0 else r["num_threads"],
             _f(r["end_to_end_ms_p50"], 0), _f(r["outputs_per_s"], 2),
             f"{r['latency_ms_p50']:.0f} / {r['latency_ms_p95']:.0f}", _cores(r, "clipseg_inferen"), _cores(r, "python"),
             _cores(r, "clipseg_outputs") if r["pipeline"] else ""] for r in d["rows"]]
    return _table([f"pipeline ({d['cpu']}, {d['prompts']} prompts)", "num_threads", "end to end p50 (ms)",
                   "outputs/s at 30 Hz", "latency p50 / p95 (ms)", "cores: model thread", "pool threads",
                   "outputs thread"], "lrrrrrrr", rows)


def live_headline(d: dict) -> str:
    """The front page's: 8 prompts under the 30 Hz camera, pipelined or not, and the first start."""
    eight = {r["pipeline"]: r for r in d["node"] if r["prompts"] == 8}
    first = d["first_start"]
    return _table(["8 prompts, 640x480, 2 CPU cores (" + d["cpu"] + "), `dtype` auto", "figure"], "lr", [
        ["node outputs/s, pipeline on / off", f"{eight[True]['outputs_per_s']:.2f} / {eight[False]['outputs_per_s']:.2f}"],
        ["node latency p50, pipeline on / off (ms)", f"{eight[True]['latency_ms_p50']:.0f} / {eight[False]['latency_ms_p50']:.0f}"],
        ["node end to end vs the HF blog usage", _x(eight[True]["end_to_end_vs_blog"], 1)],
        ["first 30 s after the first output, outputs/s: prepared / empty cache",
         f"{first['prepared_cache']['outputs_per_s']:.2f} / {first['empty_cache']['outputs_per_s']:.2f}"],
    ])


RENDERERS = {f.__name__.replace("_", "-"): f for f in (
    live_engine, live_node, live_first_start, live_headline, int8_weights, part_runtimes, thread_settings, heap_settings,
    engine, precision_engine, precision_agreement, precision_node, onnx_probe, node_overhead, propagation_accuracy,
    propagation_node, label_speed, label_memory, spatial, consumers, soak, headline, refine_scenes, refine_summary, refine_cost,
    refine_radii)}


def documents() -> list[Path]:
    return [p for pattern in DOCUMENTS for p in sorted(ROOT.glob(pattern))]


def render(text: str, results: Path = RESULTS) -> str:
    """``text`` with every marked table rendered from its JSON."""
    def one(match):
        data = json.loads((results / match["file"]).read_text())
        return match.group(1) + RENDERERS[match["name"]](data) + match.group(5)
    return BLOCK.sub(one, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say which tables differ from their JSON")
    args = parser.parse_args(argv)
    stale = []
    for path in documents():
        text = path.read_text()
        rendered = render(text)
        if rendered != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(rendered)
    if args.check and stale:
        print("tables differ from benchmarks/results: " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    for path in stale:
        print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
