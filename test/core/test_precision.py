"""Precision: what ``dtype auto`` picks per device and CPU (exact, on synthetic CPUs), that
explicit values win, that each precision builds the network it says, and that reduced
precisions agree with float32 (mask pixel agreement >= 99% on random weights)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from clipseg_ros.core.model import onnx_vision
from clipseg_ros.core.model.agreement import GOAL, compare_results, measure_agreement
from clipseg_ros.core.model.engine import SegmentationEngine
from clipseg_ros.core.model.precision import CpuFeatures, choose_precision, cpu_features

CPU = torch.device("cpu")
SAPPHIRE_RAPIDS = CpuFeatures("Intel Xeon", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                                                        "amx_int8"}))
EPYC_GENOA = CpuFeatures("AMD EPYC", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}))
CASCADE_LAKE = CpuFeatures("Intel Xeon", frozenset({"avx2", "avx512f", "avx512_vnni"}))
ALDER_LAKE = CpuFeatures("Intel Core", frozenset({"avx2", "avx_vnni"}))
HASWELL = CpuFeatures("Intel Xeon", frozenset({"avx", "avx2", "fma"}))


@pytest.mark.parametrize("cpu, onnxruntime, torchao, name, rest, vision_int8, flag", [
    (SAPPHIRE_RAPIDS, True, True, "int8", torch.bfloat16, "onnxruntime", "amx_int8"),
    (EPYC_GENOA, True, True, "int8", torch.bfloat16, "onnxruntime", "avx512_vnni"),
    (CASCADE_LAKE, True, True, "int8", torch.float32, "onnxruntime", "float32 (no native bf16)"),
    (ALDER_LAKE, True, False, "int8", torch.float32, "onnxruntime", "avx_vnni"),
    (EPYC_GENOA, False, True, "bfloat16", torch.bfloat16, "", "avx512_bf16"),
    (CASCADE_LAKE, False, True, "int8", torch.float32, "torchao", "avx512_vnni"),
    (CASCADE_LAKE, False, False, "float32", torch.float32, "", "neither onnxruntime nor torchao"),
    (HASWELL, True, True, "int8", torch.float32, "onnxruntime", "AVX2 but neither native bf16 nor int8"),
    (HASWELL, False, True, "float32", torch.float32, "", "onnxruntime for AVX2's int8 is not installed"),
])
def test_auto_follows_the_cpu(cpu, onnxruntime, torchao, name, rest, vision_int8, flag):
    p = choose_precision("auto", CPU, cpu, has_torchao=torchao, has_onnxruntime=onnxruntime)
    assert p.name == name and flag in p.reason and p.reason.startswith("auto")
    assert p.vision_int8 == vision_int8
    assert p.encoders == rest == p.decoder


def test_auto_on_cuda_is_float16_encoders_with_a_float32_decoder():
    p = choose_precision("auto", torch.device("cuda"), HASWELL, has_torchao=True)
    assert (p.name, p.encoders, p.decoder) == ("float16", torch.float16, torch.float32)
    assert "decoder in float32" in p.reason


def test_explicit_values_win():
    assert choose_precision("float32", CPU, SAPPHIRE_RAPIDS).encoders == torch.float32
    assert choose_precision(" BFloat16 ", CPU, HASWELL).encoders == torch.bfloat16
    int8 = choose_precision("int8", CPU, EPYC_GENOA, has_torchao=True, has_onnxruntime=True)
    assert (int8.vision_int8, int8.encoders, int8.decoder) == ("onnxruntime", torch.float32, torch.float32)
    assert choose_precision("int8", CPU, HASWELL, has_torchao=True, has_onnxruntime=False).vision_int8 == "torchao"
    fp16 = choose_precision("float16", CPU, HASWELL)
    assert (fp16.encoders, fp16.decoder) == (torch.float16, torch.float32)
    with pytest.raises(ValueError, match="int8 needs onnxruntime and onnx, or torchao"):
        choose_precision("int8", CPU, HASWELL, has_torchao=False, has_onnxruntime=False)
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        choose_precision("float8", CPU, HASWELL)


def test_this_machines_cpu_is_read():
    cpu = cpu_features()
    assert isinstance(cpu.model, str) and isinstance(cpu.flags, frozenset)
    assert choose_precision("auto", CPU).reason.startswith("auto")


@pytest.fixture(scope="module")
def engines(tiny_checkpoint):
    built = {name: SegmentationEngine.from_pretrained(str(tiny_checkpoint), device="cpu", dtype=name)
             for name in ("float32", "bfloat16", "float16", "int8")}
    with pytest.MonkeyPatch.context() as patch:  # a machine without onnxruntime: torchao's int8
        patch.setattr(onnx_vision, "onnxruntime_available", lambda: False)
        built["int8 torchao"] = SegmentationEngine.from_pretrained(str(tiny_checkpoint), device="cpu", dtype="int8")
    return built


def test_each_precision_builds_the_network_it_names(engines):
    from torchao.quantization import Int8Tensor

    fp16 = engines["float16"].model
    assert {p.dtype for p in fp16.clip.parameters()} == {torch.float16}
    assert {p.dtype for p in fp16.decoder.parameters()} == {torch.float32}
    assert {p.dtype for p in engines["bfloat16"].model.parameters()} == {torch.bfloat16}
    ort = engines["int8"]
    assert ort.precision.vision_int8 == "onnxruntime" and ort.network.onnx_vision is not None
    assert {p.dtype for p in ort.model.parameters()} == {torch.float32}  # the rest, and image prompts' encoder
    int8 = engines["int8 torchao"].model
    assert engines["int8 torchao"].precision.vision_int8 == "torchao"
    linears = [m for m in int8.clip.vision_model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m.weight, Int8Tensor) for m in linears)
    assert not any(isinstance(m.weight, Int8Tensor) for m in int8.decoder.modules() if isinstance(m, torch.nn.Linear))
    assert {p.dtype for p in int8.decoder.parameters()} == {torch.float32}


def pictures(count=4, h=96, w=128):
    import cv2

    rng = np.random.default_rng(5)
    return [cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3) for _ in range(count)]


@pytest.mark.parametrize("name", ["bfloat16", "float16", "int8", "int8 torchao"])
def test_reduced_precisions_agree_with_float32(engines, name):
    agreement = measure_agreement(engines["float32"], engines[name], pictures(), ["cup", "door handle", "cat"])
    assert agreement.frames == 4 and agreement.prompts == 3
    assert agreement.mask_agreement >= GOAL and agreement.meets_goal
    assert 0 < agreement.max_probability_difference < 0.2  # it differs, but a little


def test_agreement_counts_exactly():
    from clipseg_ros.core.results.postprocess import SegmentationResult

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
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "agreement.py"
    proc = subprocess.run([sys.executable, str(script), "--model", str(tiny_checkpoint), "--images", str(images),
                           "--device", "cpu", "--dtypes", "bfloat16,int8", "--prompts", "cup;cat", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["images"] == 2 and result["prompts"] == ["cup", "cat"]
    assert [r["precision"].split()[0] for r in result["results"]] == ["bfloat16", "int8"]
    assert all(r["meets_goal"] and r["mask_agreement"] >= 0.99 for r in result["results"])
    assert "| bfloat16 |" in proc.stdout


# ----------------------------------------------------------------------------- onnxruntime int8 graph
def int8_engine(checkpoint, **kwargs):
    return SegmentationEngine.from_pretrained(str(checkpoint), device="cpu", dtype="int8", **kwargs)


def graph_files(cache) -> list:
    return sorted((cache / "onnx").glob("vision_int8_*.onnx"))


def test_the_int8_graph_is_exported_once_and_reused(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSEG_ROS_CACHE", str(tmp_path))
    first = int8_engine(tiny_checkpoint)
    assert not first.network.onnx_vision_cached and len(graph_files(tmp_path)) == 1
    second = int8_engine(tiny_checkpoint)
    assert second.network.onnx_vision_cached and second.network.onnx_vision.path == graph_files(tmp_path)[0]
    image, prompts = pictures(1)[0], ["cup", "cat"]
    a = first.segment(image, first.make_prompt_set(prompts))
    b = second.segment(image, second.make_prompt_set(prompts))
    assert np.array_equal(a.masks, b.masks)
    assert not list((tmp_path / "onnx").glob(".export_*"))  # no temporary left behind


def test_a_damaged_cached_graph_is_exported_again(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSEG_ROS_CACHE", str(tmp_path))
    int8_engine(tiny_checkpoint)
    path = graph_files(tmp_path)[0]
    path.write_bytes(b"half a file")
    again = int8_engine(tiny_checkpoint)
    assert not again.network.onnx_vision_cached and again.precision.vision_int8 == "onnxruntime"
    assert path.stat().st_size > 1000


def test_a_background_export_runs_the_torch_pass_until_the_graph_is_ready(tiny_checkpoint, tmp_path, monkeypatch):
    import threading

    monkeypatch.setenv("CLIPSEG_ROS_CACHE", str(tmp_path))
    release, real_export = threading.Event(), onnx_vision.export_int8

    def held_export(*args):
        assert release.wait(60)
        real_export(*args)
    monkeypatch.setattr(onnx_vision, "export_int8", held_export)
    engine = int8_engine(tiny_checkpoint, export_in_background=True)
    assert "exporting that graph" in engine.precision.reason and engine.network.onnx_vision is None
    image, prompts = pictures(1)[0], engine.make_prompt_set(["cup"])
    during = engine.segment(image, prompts)  # the torch pass, meanwhile
    release.set()
    assert engine.network.wait_for_vision_graph(60)
    assert engine.network.onnx_vision is not None and "exporting" not in engine.precision.reason
    after = engine.segment(image, prompts)
    assert during.masks.shape == after.masks.shape
    assert compare_results([during], [after]).mask_agreement >= GOAL


def test_a_failed_export_leaves_the_vision_pass_in_torch_and_says_why(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSEG_ROS_CACHE", str(tmp_path))

    def broken_export(*args):
        raise RuntimeError("this exporter cannot\nsecond line")
    monkeypatch.setattr(onnx_vision, "export_int8", broken_export)
    engine = int8_engine(tiny_checkpoint)
    assert engine.precision.vision_int8 == "" and engine.network.onnx_vision is None
    assert "export failed (RuntimeError: this exporter cannot): vision encoder in torch float32" in engine.precision.reason
    assert engine.segment(pictures(1)[0], engine.make_prompt_set(["cup"])).masks.shape == (1, 96, 128)


def test_the_node_segments_during_its_first_export_and_logs_the_switch(tiny_checkpoint, tmp_path, client):
    from clipseg_ros_interfaces.msg import Segmentation
    from ros_helpers import CameraPublisher, assert_clean_exit, start_answering_node, wait_for

    name = "clipseg_int8_first_start"
    cam = CameraPublisher(client, "/int8_cam/image")
    segs = client.collect(Segmentation, f"/{name}/segmentation")
    proc = start_answering_node(client, name, {"model": str(tiny_checkpoint), "dtype": "int8", "prompts": ["cup"],
                                               "rate": 0.0, "image_topics": ["/int8_cam/image"]},
                                tmp_path / "logs", env={"CLIPSEG_ROS_CACHE": str(tmp_path / "cache")},
                                answering=lambda: cam.pub.get_subscription_count() > 0,
                                # a start this client never saw may have exported the graph already:
                                # each start begins with an empty cache, so each is a first start
                                before_start=lambda: shutil.rmtree(tmp_path / "cache", ignore_errors=True))
    try:
        assert "exporting that graph" in proc.log()
        cam.publish_until(segs, 1)
        wait_for(lambda: "precision now int8 (set; the vision encoder in dynamic int8 (onnxruntime)" in proc.log(),
                 30, what="the node to log the switch to the int8 graph")
        assert len(graph_files(tmp_path / "cache")) == 1
        cam.publish_until(segs, 1)  # and segments on with it
    finally:
        assert_clean_exit(proc, proc.stop())


def test_the_int8_graph_takes_a_batch_of_cameras(engines):
    """Two cameras in one vision pass give what each gives alone. Dynamic int8 scales activations
    per tensor: run as one batch, the second frame changed the first one's masks by up to 7/255."""
    engine = engines["int8"]
    prompts = engine.make_prompt_set(["cup", "cat"])
    first, second = pictures(2, h=60, w=80)
    batch = engine.segment_batch([first, second], prompts)
    for image, result in zip((first, second), batch):
        alone = engine.segment(image, prompts)
        # within one uint8 step: the decoder's float32 batch of two frames rounds its last bits
        # differently from a batch of one (seen with unsigned int8 weights, 1/255 on one pixel)
        assert np.abs(result.masks.astype(int) - alone.masks).max() <= 1


# ----------------------------------------------------------------------------- issue 19, points 18, 19
GRAVITON3_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


def test_arm_cpus_are_read_from_their_features_line():
    """Point 18: /proc/cpuinfo on aarch64 has 'Features', not 'flags': auto was always float32 there."""
    from clipseg_ros.core.model.precision import parse_cpuinfo

    cpu = parse_cpuinfo(GRAVITON3_CPUINFO)
    assert cpu is not None and cpu.native_bf16 == "bf16" and cpu.int8_dot == "i8mm"
    p = choose_precision("auto", CPU, cpu, has_torchao=False, has_onnxruntime=True)
    assert (p.name, p.vision_int8, p.encoders) == ("int8", "onnxruntime", torch.bfloat16)
    assert parse_cpuinfo("processor\t: 0\n") is None


def test_without_cpuinfo_avx512_bf16_implies_vnni(monkeypatch):
    """Point 18: torch's VNNI probe said no on an EPYC whose cpuinfo lists avx512_vnni, so the
    same CPU got int8 with cpuinfo and bfloat16 without."""
    import builtins

    from clipseg_ros.core.model import precision
    real_open = builtins.open

    def no_cpuinfo(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_vnni_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx2_vnni_supported", lambda: False, raising=False)
    cpu = precision.cpu_features.__wrapped__()
    assert cpu.flags == EPYC_GENOA.flags - {"avx2", "avx512f"}
    assert choose_precision("auto", CPU, cpu, has_onnxruntime=True).name == \
        choose_precision("auto", CPU, EPYC_GENOA, has_onnxruntime=True).name == "int8"


def test_int8_on_x86_without_vnni_quantises_unsigned_weights(tmp_path):
    """Point 18: int8 on x86 without VNNI used signed weights, whose u8s8 kernels saturate
    there. Unsigned (u8u8) weights cannot; the 7-bit cure agreed less (98.87% against 99.43% of
    mask pixels on an AVX2-only EPYC). The choice is part of the cache key."""
    from clipseg_ros.core.model.precision import int8_weight_type

    assert int8_weight_type(HASWELL, "x86_64") == "uint8" and int8_weight_type(CASCADE_LAKE, "x86_64") == "int8"
    assert int8_weight_type(HASWELL, "aarch64") == "int8"


def test_auto_without_avx2_or_off_x86_stays_float32():
    old_x86 = CpuFeatures("Intel Core 2", frozenset({"sse4_2"}))
    assert choose_precision("auto", CPU, old_x86, has_torchao=True, has_onnxruntime=True).name == "float32"
    arm = CpuFeatures("Cortex-A72", frozenset({"neon"}))
    p = choose_precision("auto", CPU, arm, has_torchao=True, has_onnxruntime=True, machine="aarch64")
    assert p.name == "float32" and p.reason.endswith("(VNNI)")
    # the AVX2 rule is x86's (an Arm /proc/cpuinfo never lists avx2, but the rule says so itself)
    assert choose_precision("auto", CPU, HASWELL, has_onnxruntime=True, machine="aarch64").name == "float32"


def test_the_graph_cache_key_names_every_library_that_shapes_the_graph(tiny_engine, monkeypatch):
    """Point 19: the key left out transformers and onnx (the traced code) and the quantisation."""
    import transformers

    from clipseg_ros.core.model.onnx_vision import cache_key

    vision = tiny_engine.network.model.clip.vision_model
    key = cache_key(vision, 2, [1, 2], 352)
    assert cache_key(vision, 2, [1, 2], 352, weights="uint8") != key
    monkeypatch.setattr(transformers, "__version__", "99.0.0")
    assert cache_key(vision, 2, [1, 2], 352) != key


def test_pixels_reach_the_vision_pass_in_float32(tiny_checkpoint):
    """Point 19: with bfloat16 encoders the engine rounded pixels to bf16 before the float32
    int8 graph (0.70% change of the last layer on the tiny model)."""
    from clipseg_ros.core.model.engine import SegmentationEngine

    engine = SegmentationEngine.from_pretrained(str(tiny_checkpoint), device="cpu", dtype="bfloat16")
    pixels = engine.preprocess([np.full((48, 64, 3), 77, np.uint8)])
    assert pixels.dtype == torch.float32
    assert engine.segment(np.full((48, 64, 3), 77, np.uint8), engine.make_prompt_set(["cup"])).masks.shape[0] == 1


def test_a_lost_object_fails_the_agreement_goal():
    """Point 17: a 40x60 object the candidate loses entirely still scored 99.22% pixel agreement
    and 'met the goal'."""
    from clipseg_ros.core.results.postprocess import SegmentationResult

    def result(mask):
        return SegmentationResult(prompts=["cup"], masks=mask[None], label=None, stats=[], threshold=0.4,
                                  image_size=mask.shape, thresholds=(0.4,))
    ref = np.zeros((480, 640), np.uint8)
    ref[100:140, 200:260] = 230  # the object
    ref[300:400, 300:500] = 230  # and a larger one both keep
    cand = ref.copy()
    cand[100:140, 200:260] = 0
    a = compare_results([result(ref)], [result(cand)])
    assert a.mask_agreement == pytest.approx(1 - 2400 / (480 * 640)) and a.mask_agreement > GOAL
    assert (a.objects, a.lost_objects) == (2, 1) and a.worst_iou == pytest.approx(20000 / 22400)
    assert not a.meets_goal
    alone = np.zeros((480, 640), np.uint8)
    alone[100:140, 200:260] = 230
    shrunk = np.zeros((480, 640), np.uint8)
    shrunk[100:140, 200:236] = 230  # 60% of it: found, but IoU 0.6 below the IoU goal
    b = compare_results([result(alone)], [result(shrunk)])
    assert b.lost_objects == 0 and b.worst_iou == pytest.approx(0.6) and b.mask_agreement > GOAL
    assert not b.meets_goal
    assert compare_results([result(ref)], [result(ref)]).meets_goal
