"""Engine tests on a tiny random CLIPSeg loaded through the real loading code."""

import numpy as np
import pytest
import torch
from conftest import random_image

from clipseg_ros.core.model.device import check_device_name, resolve_device
from clipseg_ros.core.model.engine import ModelLoadError, SegmentationEngine
from clipseg_ros.core.model.preprocessing import preprocess_image
from clipseg_ros.core.model.random_checkpoint import is_untrained
from clipseg_ros.core.prompts.prompt_book import PromptError

PROMPTS3 = ["a cup", "door handle", "cat"]


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(tiny_checkpoint))


def stock_logits(model, **inputs):
    """The stock CLIPSegForImageSegmentation forward, logits normalised to (N, S, S)."""
    with torch.no_grad():
        logits = model(**inputs).logits
    return logits if logits.ndim == 3 else logits[None]


def test_loads_local_directory_with_safetensors(tiny_checkpoint, tiny_engine):
    assert (tiny_checkpoint / "model.safetensors").is_file()
    assert is_untrained(tiny_checkpoint)
    assert tiny_engine.network.vision_depth == 4  # extract_layers [1, 2, 3] of 5: layer 4 skipped
    assert tiny_engine.preprocess_cfg.size == (352, 352)


def test_missing_model_names_model_and_fix(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        SegmentationEngine.from_pretrained(str(tmp_path / "nope"), local_files_only=True)
    msg = str(err.value)
    assert "nope" in msg and "local" in msg.lower()


def test_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="Check that it holds a CLIPSeg checkpoint"):
        SegmentationEngine.from_pretrained(str(tmp_path), device="cpu")


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        assert resolve_device("cuda:0", fallback_to_cpu=True).type == "cpu"
    assert check_device_name(" CUDA:1 ") == "cuda:1"
    with pytest.raises(ValueError, match="unknown device"):
        check_device_name("cuda:x")


def test_corrupt_checkpoint_is_a_clear_error(tiny_checkpoint, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="broken") as err:
        SegmentationEngine.from_pretrained(str(broken), device="cpu")
    assert "Check that it holds a CLIPSeg checkpoint" in str(err.value)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="broken"):
        SegmentationEngine.from_pretrained(str(broken), device="cpu")


def test_not_a_clipseg_checkpoint_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                         vocab_size=10)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="bert"):
        SegmentationEngine.from_pretrained(str(tmp_path / "bert"), device="cpu")


def test_out_of_memory_retries_once_with_smaller_batches(tiny_engine, rng, monkeypatch):
    images = [random_image(rng), random_image(rng, 30, 40)]
    prompts = tiny_engine.make_prompt_set(["cup", "door", "cat"])
    expected = tiny_engine.segment_batch(images, prompts)
    real_decode = tiny_engine.decode
    calls = []

    def decode(activations, embeddings):
        calls.append((activations[0].shape[0], embeddings.shape[0]))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_decode(activations, embeddings)

    monkeypatch.setattr(tiny_engine, "decode", decode)
    before = tiny_engine.oom_retries
    results = tiny_engine.segment_batch(images, prompts)
    assert tiny_engine.oom_retries == before + 1
    # Whole batch first; then per frame, prompts in halves (2 + 1).
    assert calls == [(2, 3), (1, 2), (1, 1), (1, 2), (1, 1)]
    for got, want in zip(results, expected):
        assert got.prompts == want.prompts
        assert np.abs(got.masks.astype(int) - want.masks).max() <= 1


def test_second_out_of_memory_is_raised(tiny_engine, rng, monkeypatch):
    def decode(activations, embeddings):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(tiny_engine, "decode", decode)
    with pytest.raises(torch.OutOfMemoryError):
        tiny_engine.segment_batch([random_image(rng)], tiny_engine.make_prompt_set(["cup", "cat"]))


@pytest.mark.parametrize("size", [(480, 640), (352, 352), (31, 17), (1, 1)])
def test_preprocessing_matches_hf_processor(tiny_engine, processor, rng, size):
    img = random_image(rng, *size)
    ref = processor(images=[img], return_tensors="pt", input_data_format="channels_last")["pixel_values"][0].numpy()
    mine = preprocess_image(img, tiny_engine.preprocess_cfg)
    assert mine.shape == ref.shape == (3, 352, 352)
    assert np.abs(mine - ref).max() < 1e-6  # README: matches the processor to < 1e-6


@pytest.mark.parametrize("prompts", [PROMPTS3[:1], PROMPTS3])
def test_text_prompts_equal_stock_forward(tiny_engine, processor, rng, prompts):
    img = random_image(rng, 60, 80)
    n = len(prompts)
    # Same tokenisation as the engine (padding to the longest): identical logits.
    inputs = processor(text=prompts, images=[img] * n, padding="longest", return_tensors="pt")
    ref = stock_logits(tiny_engine.model, **inputs)
    ps = tiny_engine.make_prompt_set(prompts)
    mine = tiny_engine.predict_logits(inputs["pixel_values"][:1], ps.embeddings)[0]
    assert mine.shape == (n, 352, 352)
    assert (mine - ref).abs().max().item() <= 1e-4
    # The blog's padding="max_length": same within float rounding of a different batch shape.
    inputs = processor(text=prompts, images=[img] * n, padding="max_length", return_tensors="pt")
    ref = stock_logits(tiny_engine.model, **inputs)
    assert (mine - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_same_embeddings_give_identical_logits(tiny_engine, processor, rng):
    img = random_image(rng)
    ps = tiny_engine.make_prompt_set(PROMPTS3)
    pixels = processor(images=[img] * 3, return_tensors="pt")["pixel_values"]
    ref = stock_logits(tiny_engine.model, pixel_values=pixels, conditional_embeddings=ps.embeddings)
    mine = tiny_engine.predict_logits(pixels[:1], ps.embeddings)[0]
    assert (mine - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("n", [1, 3])
def test_image_prompts_equal_stock_forward(tiny_engine, processor, rng, n):
    img = random_image(rng)
    examples = [random_image(rng, 40 + 10 * k, 30 + 5 * k) for k in range(n)]
    inputs = processor(images=[img] * n, return_tensors="pt")
    cond = processor(images=examples, return_tensors="pt")["pixel_values"]
    ref = stock_logits(tiny_engine.model, pixel_values=inputs["pixel_values"], conditional_pixel_values=cond)
    ps = tiny_engine.make_prompt_set([], {f"example{k}": ex for k, ex in enumerate(examples)})
    assert ps.names == tuple(f"example{k}" for k in range(n))
    mine = tiny_engine.predict_logits(inputs["pixel_values"][:1], ps.embeddings)[0]
    assert (mine - ref).abs().max().item() <= 1e-4


def test_batched_frames_equal_stock_forward(tiny_engine, processor, rng):
    frames = [random_image(rng, 48, 64), random_image(rng, 100, 50)]
    ps = tiny_engine.make_prompt_set(PROMPTS3[:2])
    pixels = tiny_engine.preprocess(frames)
    mine = tiny_engine.predict_logits(pixels, ps.embeddings)
    assert mine.shape == (2, 2, 352, 352)
    for b in range(2):
        ref = stock_logits(tiny_engine.model, pixel_values=pixels[b:b + 1].repeat(2, 1, 1, 1),
                           conditional_embeddings=ps.embeddings)
        assert (mine[b] - ref).abs().max().item() <= 1e-4
    # The numpy front end returns one result per frame, at each frame's own size.
    results = tiny_engine.segment_batch(frames, ps)
    assert [r.masks.shape for r in results] == [(2, 48, 64), (2, 100, 50)]


def test_vision_runs_once_per_frame_for_many_prompts(tiny_engine, rng, monkeypatch):
    calls = []
    vm = tiny_engine.model.clip.vision_model
    original = vm.embeddings.patch_embedding.forward
    monkeypatch.setattr(vm.embeddings.patch_embedding, "forward",
                        lambda x: calls.append(x.shape[0]) or original(x))
    ps = tiny_engine.make_prompt_set([f"thing {k}" for k in range(8)])
    tiny_engine.segment(random_image(rng), ps)
    assert calls == [1]


def test_text_embeddings_are_cached(tiny_engine, monkeypatch):
    tiny_engine.make_prompt_set(["cached prompt"])
    calls = []
    original = tiny_engine.model.clip.get_text_features
    monkeypatch.setattr(tiny_engine.model.clip, "get_text_features",
                        lambda **kw: calls.append(kw["input_ids"].shape[0]) or original(**kw))
    tiny_engine.make_prompt_set(["cached prompt", "new prompt"])
    assert calls == [1]  # only the new one was encoded


def test_long_prompt_is_truncated_with_warning(tiny_engine):
    ps = tiny_engine.make_prompt_set(["word " * 100])
    assert len(ps) == 1 and ps.embeddings.shape[0] == 1
    assert any("truncated" in w for w in ps.warnings)


def test_empty_prompt_set_makes_no_model_call(tiny_engine, rng, monkeypatch):
    monkeypatch.setattr(tiny_engine, "encode", lambda *a, **k: pytest.fail("model called"))
    ps = tiny_engine.make_prompt_set([])
    r = tiny_engine.segment(random_image(rng, 20, 30), ps)
    assert r.masks.shape == (0, 20, 30) and r.label.shape == (20, 30) and not r.label.any()


def test_bad_image_prompt_is_refused(tiny_engine):
    with pytest.raises(PromptError, match="image prompt 'bad'"):
        tiny_engine.make_prompt_set([], {"bad": np.zeros((4, 4), np.float32)})


def test_segment_result_shapes_and_consistency(tiny_engine, rng):
    img = random_image(rng, 45, 70)
    ps = tiny_engine.make_prompt_set(PROMPTS3)
    r = tiny_engine.segment(img, ps, threshold=0.5)
    assert r.masks.shape == (3, 45, 70) and r.masks.dtype == np.uint8
    assert r.label.shape == (45, 70) and r.label.max() <= 3
    for k, s in enumerate(r.stats):
        frac = float((r.masks[k] >= 128).mean())
        assert abs(s.area_fraction - frac) < 0.02
        assert s.detected == (s.area_fraction > 0)
    for key in ("preprocess", "vision", "decoder", "post", "total"):
        assert r.timings_ms[key] >= 0
    model_grid = tiny_engine.segment(img, ps, output_size="model")
    assert model_grid.masks.shape == (3, 352, 352) and model_grid.image_size == (45, 70)


def test_bgr_input_equals_rgb_input(tiny_engine, rng):
    img = random_image(rng)
    ps = tiny_engine.make_prompt_set(["cup"])
    a = tiny_engine.segment(img, ps)
    b = tiny_engine.segment(np.ascontiguousarray(img[:, :, ::-1]), ps, color_order="bgr")
    assert np.array_equal(a.masks, b.masks)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_dtypes_end_to_end(tiny_checkpoint, tiny_engine, rng, dtype):
    engine = SegmentationEngine.from_pretrained(str(tiny_checkpoint), device="cpu", dtype=dtype)
    assert next(engine.model.parameters()).dtype == getattr(torch, dtype)
    example = random_image(rng, 30, 30)
    ps = engine.make_prompt_set(["cup", "door"], {"example": example})
    assert ps.embeddings.dtype == getattr(torch, dtype)
    img = random_image(rng)
    r = engine.segment(img, ps)
    ref = tiny_engine.segment(img, tiny_engine.make_prompt_set(["cup", "door"], {"example": example}))
    assert r.masks.shape == ref.masks.shape == (3, 48, 64)
    assert all(np.isfinite(s.max_score) for s in r.stats)
    # Reduced precision changes probabilities a little, not wholesale.
    diff = np.abs(r.masks.astype(int) - ref.masks.astype(int))
    assert np.median(diff) <= (0 if dtype == "float32" else 8)


def test_num_threads_knob(tiny_checkpoint):
    before = torch.get_num_threads()
    try:
        SegmentationEngine.from_pretrained(str(tiny_checkpoint), device="cpu", num_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError):
        SegmentationEngine.from_pretrained(str(tiny_checkpoint), device="cpu", num_threads=-1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_are_refused_not_turned_into_scores(tiny_engine, rng, monkeypatch, bad):
    # Review defect 9: an fp16 overflow on a GPU gives NaN/inf logits, which became NaN scores.
    from clipseg_ros.core.model.engine import NonFiniteLogitsError

    real = tiny_engine.network.decode

    def decode(activations, embeddings):
        logits = real(activations, embeddings).clone()
        logits[-1, 0, 5, 5] = bad  # one pixel of the last frame is enough
        return logits

    monkeypatch.setattr(tiny_engine.network, "decode", decode)
    with pytest.raises(NonFiniteLogitsError, match="NaN/inf logits for 1 of 2 frame"):
        tiny_engine.segment_batch([random_image(rng), random_image(rng)], tiny_engine.make_prompt_set(["cup"]))
