"""Precision: what ``dtype auto`` picks per device and CPU (exact, on synthetic CPUs), that
explicit values win, that each precision builds the network it says, and that reduced
precisions agree with float32 (mask pixel agreement >= 99% on random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipseg_ros.agreement import GOAL, compare_results, measure_agreement
from clipseg_ros.engine import SegmentationEngine
from clipseg_ros.precision import CpuFeatures, choose_precision, cpu_features

CPU = torch.device("cpu")
SAPPHIRE_RAPIDS = CpuFeatures("Intel Xeon", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                                                        "amx_int8"}))
EPYC_GENOA = CpuFeatures("AMD EPYC", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}))
CASCADE_LAKE = CpuFeatures("Intel Xeon", frozenset({"avx2", "avx512f", "avx512_vnni"}))
ALDER_LAKE = CpuFeatures("Intel Core", frozenset({"avx2", "avx_vnni"}))
HASWELL = CpuFeatures("Intel Xeon", frozenset({"avx", "avx2", "fma"}))


@pytest.mark.parametrize("cpu, torchao, name, flag", [
    (SAPPHIRE_RAPIDS, True, "bfloat16", "amx_bf16"),
    (EPYC_GENOA, True, "bfloat16", "avx512_bf16"),
    (CASCADE_LAKE, True, "int8", "avx512_vnni"),
    (ALDER_LAKE, True, "int8", "avx_vnni"),
    (CASCADE_LAKE, False, "float32", "torchao is not installed"),
    (HASWELL, True, "float32", "neither native bf16 nor int8"),
])
def test_auto_follows_the_cpu(cpu, torchao, name, flag):
    p = choose_precision("auto", CPU, cpu, has_torchao=torchao)
    assert p.name == name and flag in p.reason and p.reason.startswith("auto")
    assert p.int8_vision == (name == "int8")
    assert p.encoders == {"bfloat16": torch.bfloat16}.get(name, torch.float32) == p.decoder


def test_auto_on_cuda_is_float16_encoders_with_a_float32_decoder():
    p = choose_precision("auto", torch.device("cuda"), HASWELL, has_torchao=True)
    assert (p.name, p.encoders, p.decoder) == ("float16", torch.float16, torch.float32)
    assert "decoder in float32" in p.reason


def test_explicit_values_win():
    assert choose_precision("float32", CPU, SAPPHIRE_RAPIDS).encoders == torch.float32
    assert choose_precision(" BFloat16 ", CPU, HASWELL).encoders == torch.bfloat16
    assert choose_precision("int8", CPU, HASWELL, has_torchao=True).int8_vision
    fp16 = choose_precision("float16", CPU, HASWELL)
    assert (fp16.encoders, fp16.decoder) == (torch.float16, torch.float32)
    with pytest.raises(ValueError, match="int8 needs torchao"):
        choose_precision("int8", CPU, HASWELL, has_torchao=False)
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        choose_precision("float8", CPU, HASWELL)


def test_this_machines_cpu_is_read():
    cpu = cpu_features()
    assert isinstance(cpu.model, str) and isinstance(cpu.flags, frozenset)
    assert choose_precision("auto", CPU).reason.startswith("auto")


@pytest.fixture(scope="module")
def engines(tiny_checkpoint):
    return {name: SegmentationEngine.from_pretrained(str(tiny_checkpoint), device="cpu", dtype=name)
            for name in ("float32", "bfloat16", "float16", "int8")}


def test_each_precision_builds_the_network_it_names(engines):
    from torchao.quantization import Int8Tensor

    fp16 = engines["float16"].model
    assert {p.dtype for p in fp16.clip.parameters()} == {torch.float16}
    assert {p.dtype for p in fp16.decoder.parameters()} == {torch.float32}
    assert {p.dtype for p in engines["bfloat16"].model.parameters()} == {torch.bfloat16}
    int8 = engines["int8"].model
    linears = [m for m in int8.clip.vision_model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m.weight, Int8Tensor) for m in linears)
    assert not any(isinstance(m.weight, Int8Tensor) for m in int8.decoder.modules() if isinstance(m, torch.nn.Linear))
    assert {p.dtype for p in int8.decoder.parameters()} == {torch.float32}


def pictures(count=4, h=96, w=128):
    import cv2

    rng = np.random.default_rng(5)
    return [cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3) for _ in range(count)]


@pytest.mark.parametrize("name", ["bfloat16", "float16", "int8"])
def test_reduced_precisions_agree_with_float32(engines, name):
    agreement = measure_agreement(engines["float32"], engines[name], pictures(), ["cup", "door handle", "cat"])
    assert agreement.frames == 4 and agreement.prompts == 3
    assert agreement.mask_agreement >= GOAL and agreement.meets_goal
    assert 0 < agreement.max_probability_difference < 0.2  # it differs, but a little


def test_agreement_counts_exactly():
    from clipseg_ros.postprocess import SegmentationResult

    def result(mask):
        return SegmentationResult(prompts=["a"], masks=mask[None], label=None, stats=[], threshold=0.4,
                                  image_size=mask.shape, thresholds=(0.4,))
    ref = np.full((10, 10), 200, np.uint8)
    cand = ref.copy()
    cand[0, :5] = 50  # 5 of 100 pixels fall below the threshold (level 102)
    cand[1, 0] = 190  # moves, stays above
    a = compare_results([result(ref), result(ref)], [result(ref), result(cand)])
    assert a.mask_agreement == pytest.approx(195 / 200) and a.worst_mask_agreement == pytest.approx(0.95)
    assert a.max_probability_difference == pytest.approx(150 / 255)
    assert not a.meets_goal
    with pytest.raises(ValueError):
        compare_results([result(ref)], [])


def test_agreement_script_runs_on_a_users_folder(tmp_path, tiny_checkpoint):
    import json
    import subprocess
    import sys
    from pathlib import Path

    import cv2

    images = tmp_path / "frames"
    images.mkdir()
    for k, picture in enumerate(pictures(2)):
        cv2.imwrite(str(images / f"{k}.png"), picture)
    (images / "broken.png").write_bytes(b"no image")
    out = tmp_path / "agreement.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "agreement.py"
    proc = subprocess.run([sys.executable, str(script), "--model", str(tiny_checkpoint), "--images", str(images),
                           "--device", "cpu", "--dtypes", "bfloat16,int8", "--prompts", "cup;cat", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["images"] == 2 and result["prompts"] == ["cup", "cat"]
    assert [r["precision"].split()[0] for r in result["results"]] == ["bfloat16", "int8"]
    assert all(r["meets_goal"] and r["mask_agreement"] >= 0.99 for r in result["results"])
    assert "| bfloat16 |" in proc.stdout
