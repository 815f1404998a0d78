#!/usr/bin/env python3
"""In which runtime and precision each part of the model should run on this CPU: the
alternatives to what ``dtype auto`` runs, speed and agreement, one run.

    python benchmarks/part_runtimes.py --json benchmarks/results/part_runtimes_cpu.json
    python benchmarks/part_runtimes.py --quick      # tiny model, a minute

Each part is measured on its own, every candidate put in place of that part of the ``auto``
engine (so the agreement is that of what the node would publish):

1. **Vision encoder**: what auto runs (onnxruntime's dynamic int8 where it picks int8, weights as
   ``int8_weight_type`` says) against static (calibrated) int8 in onnxruntime's QDQ format, with
   signed and unsigned weights, per tensor and per channel. Calibration (MinMax) runs on six
   bundled photos that the agreement check does not use.
2. **Decoder**: torch in auto's decoder dtype against an onnxruntime graph of the same decoder
   in float32 and in dynamic int8, at N = 1, 4, 8 prompts, on the coffee photo's activations.
3. **Text encoder**: torch against an onnxruntime float32 graph, 8 prompts embedded from scratch
   (what a prompt change costs; the node caches embeddings per text).

Agreement: with the float32 engine on the four bundled photos, 8 prompts, threshold 0.4 (random
weights in the real architecture: a proxy; ``agreement.py`` is the check with the real
checkpoint). Timings are medians of interleaved rounds, so that the host's drift hits all alike.
A per-frame candidate (vision, decoder) is ``better`` when it meets the agreement goal and is at
least ``MIN_GAIN`` faster than what auto runs for that part (at N = 8 for the decoder): a candidate
for auto, to be confirmed by a second run and by ``agreement.py`` on the real checkpoint (this
host's drift moved single figures by 10-15% between runs). The text encoder runs once per new
prompt text, not per frame: its rows give the speed-up and the milliseconds a prompt change saves,
and no verdict (a second exported graph would add its export to the first start to save that).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import median_ms, sample_image  # noqa: E402
from bench_precision import PROMPTS, photos  # noqa: E402
from results_file import cpu_name, write_results  # noqa: E402

from clipseg_ros.core.model import onnx_vision  # noqa: E402
from clipseg_ros.core.model.agreement import measure_agreement  # noqa: E402
from clipseg_ros.core.model.engine import SegmentationEngine  # noqa: E402
from clipseg_ros.core.model.precision import cpu_features, int8_weight_type  # noqa: E402

MIN_GAIN = 1.10  # what auto runs / candidate, in ms: less is within this host's drift
CALIBRATION_PHOTOS = ("motorcycle_left.png", "hubble_deep_field.jpg", "ihc.png", "coins.png", "retina.jpg", "color.png")
STATIC_VARIANTS = {  # name: (weight type, per channel)
    "static int8, int8 weights": ("int8", False),
    "static int8, uint8 weights": ("uint8", False),
    "static int8, int8 weights per channel": ("int8", True),
}


def calibration_photos(count: int) -> list[np.ndarray]:
    """Bundled photos (scikit-image's) other than the agreement's four, 640x480 RGB."""
    import cv2
    import skimage.io
    from skimage import data

    folder = Path(data.__file__).parent
    images = []
    for name in CALIBRATION_PHOTOS[:count]:
        image = skimage.io.imread(folder / name)
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image[..., :3]
        images.append(cv2.resize(image, (640, 480), interpolation=cv2.INTER_AREA))
    return images


def session(path: Path):
    """An onnxruntime session set up as the product's (:class:`onnx_vision.OnnxVisionPass`)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), onnx_vision.session_options(torch.get_num_threads()),
                                providers=["CPUExecutionProvider"])


def agreement_row(reference: SegmentationEngine, candidate: SegmentationEngine, images) -> dict:
    return measure_agreement(reference, candidate, images, PROMPTS).as_row()


# ---------------------------------------------------------------------------------- vision
def static_int8(float_path: Path, out: Path, engine: SegmentationEngine, images, weights: str,
                per_channel: bool) -> float:
    """onnxruntime's static int8 (QDQ, MinMax on ``images``) of the float32 vision graph; seconds taken."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Photos(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"pixels": engine.preprocess([im]).numpy()} for im in images])

        def get_next(self):
            return next(self.feeds, None)

    start = time.perf_counter()
    with onnx_vision._without_preprocessing_advice():
        # The ops dynamic int8 quantises: quantising also the additions and normalisations cost
        # 4 points of agreement on the tiny model.
        quantize_static(str(float_path), str(out), Photos(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv"], activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8 if weights == "int8" else QuantType.QUInt8)
    return time.perf_counter() - start


def vision_part(model: str, reference: SegmentationEngine, auto: SegmentationEngine, work: Path, images,
                calibration, rounds: int) -> dict:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_path, prepared = work / "vision.onnx", work / "vision_prepared.onnx"
    net = reference.network
    onnx_vision.export_float32(net.model, net._encode_pixels_torch, reference.preprocess_cfg.size[0], float_path)
    with onnx_vision._without_preprocessing_advice():
        quant_pre_process(str(float_path), str(prepared))  # shape inference, which static int8 needs
    engines = {"float32 (torch)": reference, f"auto: {auto.precision.name}": auto}
    quantise_s = {}
    for name, (weights, per_channel) in STATIC_VARIANTS.items():
        path = work / f"vision_{len(quantise_s)}.onnx"
        quantise_s[name] = static_int8(prepared, path, reference, calibration, weights, per_channel)
        candidate = SegmentationEngine.from_pretrained(model, device="cpu", dtype=auto.precision.name,
                                                       export_in_background=False)
        candidate.network.onnx_vision = onnx_vision.OnnxVisionPass(path, torch.get_num_threads())
        engines[name] = candidate
    image = sample_image()
    sets = {name: e.make_prompt_set(PROMPTS) for name, e in engines.items()}
    for name, e in engines.items():
        e.segment(image, sets[name])  # warm-up
    times = {name: [] for name in engines}
    for _ in range(rounds):
        for name, e in engines.items():
            times[name].append(e.segment(image, sets[name]).timings_ms["vision"])
    rows = []
    for name, e in engines.items():
        row = {"variant": name, "vision_ms": round(statistics.median(times[name]), 1)}
        if name in quantise_s:
            row["quantise_s"] = round(quantise_s[name], 1)
        if e is not reference:
            row.update(agreement_row(reference, e, images))
        rows.append(row)
    return {"calibration_photos": len(calibration), "rows": rows}


# ---------------------------------------------------------------------------------- decoder
class _Decoder(torch.nn.Module):
    def __init__(self, network):
        super().__init__()
        self.model = network.model  # registered: the exporter sees the weights
        self._network = network

    def forward(self, *inputs):
        return self._network.decode(list(inputs[:-1]), inputs[-1])


class OnnxDecoder:
    """``ClipSegNetwork.decode`` run by an onnxruntime session (one frame per run; float32)."""

    def __init__(self, path: Path):
        self.session = session(path)
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, activations, embeddings):
        frames = []
        for b in range(activations[0].shape[0]):
            feed = {name: a[b:b + 1].to(torch.float32).numpy() for name, a in zip(self.names, activations)}
            feed[self.names[-1]] = embeddings.to(torch.float32).numpy()
            frames.append(torch.from_numpy(self.session.run(None, feed)[0]))
        return torch.cat(frames)


def decoder_part(model: str, reference: SegmentationEngine, auto: SegmentationEngine, work: Path, images,
                 rounds: int) -> dict:
    net = auto.network
    image = sample_image()
    activations = net.encode_pixels(auto.preprocess([image]))
    embeddings = auto.make_prompt_set(PROMPTS).embeddings
    float_path, int8_path = work / "decoder.onnx", work / "decoder_int8.onnx"
    exporter = reference.network
    inputs = (*[a.to(torch.float32) for a in activations], embeddings[:2].to(torch.float32))
    names = [f"layer{i}" for i in range(len(activations))] + ["prompts"]
    onnx_vision.export_graph(_Decoder(exporter), inputs, float_path, names, ["logits"],
                             dynamic_axes={"prompts": {0: "n"}, "logits": {1: "n"}})
    weights = int8_weight_type(cpu_features())
    onnx_vision.quantize_int8(float_path, int8_path, weights)  # as the product quantises its vision graph
    runners = {f"torch {str(net.decoder_dtype).removeprefix('torch.')} (auto)": net.decode,
               "onnxruntime float32": OnnxDecoder(float_path),
               f"onnxruntime dynamic int8 ({weights} weights)": OnnxDecoder(int8_path)}
    rows = []
    for n in (1, 4, 8):
        cond = embeddings[:n]
        for run in runners.values():
            run(activations, cond)  # warm-up
        times = {name: [] for name in runners}
        for _ in range(rounds):
            for name, run in runners.items():
                times[name].append(median_ms(lambda: run(activations, cond), 1, warmup=0))
        for name in runners:
            rows.append({"variant": name, "prompts": n, "decoder_ms": round(statistics.median(times[name]), 1)})
    for name, run in list(runners.items())[1:]:
        candidate = SegmentationEngine.from_pretrained(model, device="cpu", dtype=auto.precision.name,
                                                       export_in_background=False)
        candidate.network.decode = run
        row = next(r for r in rows if r["variant"] == name and r["prompts"] == 8)
        row.update(agreement_row(reference, candidate, images))
    return {"rows": rows}


# ---------------------------------------------------------------------------------- text
class _Text(torch.nn.Module):
    def __init__(self, network):
        super().__init__()
        self.model = network.model
        self._network = network

    def forward(self, input_ids, attention_mask):
        return self._network.text_embeddings(input_ids, attention_mask)


class OnnxText:
    """``ClipSegNetwork.text_embeddings`` run by an onnxruntime session."""

    def __init__(self, path: Path, dtype: torch.dtype):
        self.session, self.dtype = session(path), dtype

    def __call__(self, input_ids, attention_mask):
        out = self.session.run(None, {"input_ids": input_ids.to(torch.int64).numpy(),
                                      "attention_mask": attention_mask.to(torch.int64).numpy()})[0]
        return torch.from_numpy(out).to(self.dtype)


def text_part(model: str, reference: SegmentationEngine, auto: SegmentationEngine, work: Path, images,
              rounds: int) -> dict:
    path = work / "text.onnx"
    sample = reference.tokenizer(["a cup", "the rim of a cup"], padding="longest", return_tensors="pt")
    onnx_vision.export_graph(_Text(reference.network), (sample["input_ids"], sample["attention_mask"]), path,
                             ["input_ids", "attention_mask"], ["embeddings"],
                             dynamic_axes={"input_ids": {0: "n", 1: "tokens"}, "attention_mask": {0: "n", 1: "tokens"},
                                           "embeddings": {0: "n"}})
    candidate = SegmentationEngine.from_pretrained(model, device="cpu", dtype=auto.precision.name,
                                                   export_in_background=False)
    candidate.network.text_embeddings = OnnxText(path, candidate.dtype)
    engines = {f"torch {str(auto.dtype).removeprefix('torch.')} (auto)": auto, "onnxruntime float32": candidate}

    def embed(engine):
        engine.clear_text_cache()
        return engine.embed_texts(PROMPTS)[0]

    difference = float((embed(candidate).float() - embed(auto).float()).abs().max())
    times = {name: [] for name in engines}
    for _ in range(3 * rounds):  # ~0.1 s a call: more rounds for the same share of the host's drift
        for name, e in engines.items():
            times[name].append(median_ms(lambda: embed(e), 1, warmup=0))
    rows = [{"variant": name, "prompts": len(PROMPTS), "text_ms": round(statistics.median(times[name]), 1)}
            for name in engines]
    rows[1]["max_embedding_difference"] = round(difference, 6)
    rows[1].update(agreement_row(reference, candidate, images))
    return {"rows": rows}


def mark_better(result: dict) -> None:
    """``better`` on each candidate row: meets the agreement goal and is MIN_GAIN faster than auto's."""
    for part, key, baseline in (("vision", "vision_ms", 1), ("decoder", "decoder_ms", 0), ("text", "text_ms", 0)):
        rows = [r for r in result[part]["rows"] if r.get("prompts", 8) == 8]
        auto_ms = rows[baseline][key]
        for r in rows[baseline + 1:]:
            r["gain_vs_auto"] = round(auto_ms / r[key], 2)
            if part == "text":
                r["saved_ms_per_prompt_change"] = round(auto_ms - r[key], 1)
            else:
                r["better"] = bool(r.get("meets_goal")) and r["gain_vs_auto"] >= MIN_GAIN


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 rounds, 2 calibration photos")
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default 7, quick 2)")
    parser.add_argument("--json", help="write results to this path")
    args = parser.parse_args(argv)
    from clipseg_ros.core.model.random_checkpoint import make_random_checkpoint

    rounds = args.rounds or (2 if args.quick else 7)
    from clipseg_ros.ros.glibc import keep_frame_buffers_mapped

    keep_frame_buffers_mapped()  # torch's parts measured under the node's own heap setting
    with tempfile.TemporaryDirectory(prefix="clipseg_part_runtimes_") as tmp:
        os.environ["CLIPSEG_ROS_CACHE"] = str(Path(tmp) / "cache")  # auto's own graph, exported for this run
        work = Path(tmp)
        model = str(make_random_checkpoint(work / "model", size="tiny" if args.quick else "rd64-refined"))
        reference = SegmentationEngine.from_pretrained(model, device="cpu", dtype="float32")
        auto = SegmentationEngine.from_pretrained(model, device="cpu", dtype="auto", export_in_background=False)
        images = photos()
        result = {"cpu": cpu_name(), "model": "random tiny" if args.quick else "random rd64-refined",
                  "image": "640x480", "prompts": len(PROMPTS), "auto": auto.precision.describe(),
                  "min_gain": MIN_GAIN, "threads": torch.get_num_threads()}
        result["vision"] = vision_part(model, reference, auto, work, images,
                                       calibration_photos(2 if args.quick else 6), rounds)
        print(result["vision"], flush=True)
        result["decoder"] = decoder_part(model, reference, auto, work, images, rounds)
        print(result["decoder"], flush=True)
        result["text"] = text_part(model, reference, auto, work, images, rounds)
        print(result["text"], flush=True)
    mark_better(result)
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
