"""The labeller (clipseg-label): folders, videos and rosbag2 in; labels, JSON, COCO and an
enriched bag out; resuming, refusing, disk full. In-process runs of the real command on a tiny
random checkpoint; bags written here with rosbags (sqlite3 and mcap, raw and compressed)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from clipseg_ros.core.results.postprocess import label_from_masks, mask_level, wide_label_from_masks
from clipseg_ros.tools import label as label_cli
from clipseg_ros.tools.label_outputs import OutputFolder, read_png

PROMPTS = ["cup", "cat", "thing"]
# pycocotools' own decode trips numpy 2's copy-keyword deprecation
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def picture(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth random RGB picture (PNG and JPEG-free comparisons stay exact)."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)


def run(args, tiny_checkpoint) -> int:
    return label_cli.main([*map(str, args), "--model", str(tiny_checkpoint), "--device", "cpu",
                           "--dtype", "float32", "--no-progress"])


def labelled(engine, rgb, prompt_set, **kw):
    """What the labeller labels a frame with by default: the engine's result, refined with the
    frame's image (``--refine guided``)."""
    from clipseg_ros.core.results.refinement import RefineOptions, refine_result

    return refine_result(engine.segment(rgb, prompt_set, **kw), rgb, None, RefineOptions(mode="guided"))


def snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for k, name in enumerate(["a.png", "b.png", "sub/c.png"]):
        cv2.imwrite(str(images / name), cv2.cvtColor(picture(k), cv2.COLOR_RGB2BGR))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "empty.jpg").write_bytes(b"")
    return images


# ---------------------------------------------------------------------- folders, COCO, resume
def test_folder_labels_match_the_engine_and_coco_decodes_to_the_label(folder, tmp_path, tiny_checkpoint,
                                                                       tiny_engine, capsys):
    out = tmp_path / "out"
    code = run([folder, "-o", out, "--prompts", ";".join(PROMPTS), "--probabilities", "--batch", "1",
                "--threshold", "0.5"], tiny_checkpoint)
    assert code == 0
    summary = json.loads((out / "labels.json").read_text())
    assert [f["name"] for f in summary["frames"]] == ["a", "b", "sub/c"]
    assert sorted(s["origin"] for s in summary["skipped"]) == ["broken.png", "empty.jpg"]
    assert all(s["reason"] for s in summary["skipped"])
    assert "2 skipped" in capsys.readouterr().out
    for k, name in enumerate(["a", "b", "sub/c"]):
        expected = labelled(tiny_engine, picture(k), tiny_engine.make_prompt_set(PROMPTS), threshold=0.5)
        label = read_png(out / "labels" / f"{name}.png")
        assert label.dtype == np.uint8 and np.array_equal(label, expected.label)
        for p in range(len(PROMPTS)):
            assert np.array_equal(read_png(out / "probabilities" / name / f"{p}.png"), expected.masks[p])
        record = json.loads((out / "frames" / f"{name}.json").read_text())
        assert [c["max_score"] for c in record["confidences"]] == pytest.approx([s.max_score for s in expected.stats])
        assert record["file_name"] == f"{name}.png"

    from pycocotools.coco import COCO

    semantic = COCO(str(out / "coco_semantic.json"))
    assert [c["name"] for c in semantic.loadCats(semantic.getCatIds())] == PROMPTS
    for image in semantic.loadImgs(semantic.getImgIds()):
        rebuilt = np.zeros((image["height"], image["width"]), np.uint8)
        for ann in semantic.loadAnns(semantic.getAnnIds(imgIds=image["id"])):
            part = semantic.annToMask(ann).astype(bool)
            assert not rebuilt[part].any()  # a label's prompts never overlap
            rebuilt[part] = ann["category_id"]
        label = read_png(out / "labels" / (image["file_name"].rsplit(".", 1)[0] + ".png"))
        assert np.array_equal(rebuilt, label)
    instances = COCO(str(out / "coco_instances.json"))
    records = {f["file_name"]: f for f in summary["frames"]}
    for image in instances.loadImgs(instances.getImgIds()):
        anns = instances.loadAnns(instances.getAnnIds(imgIds=image["id"]))
        assert len(anns) == len(records[image["file_name"]]["objects"])
        # the summary leaves the masks to the records and the COCO file
        assert all("rle" not in o for o in records[image["file_name"]]["objects"])
        full = json.loads((out / "frames" / (image["file_name"].rsplit(".", 1)[0] + ".json")).read_text())
        assert [o["rle"] for o in full["objects"]] == [a["segmentation"] for a in anns]
        name = image["file_name"].rsplit(".", 1)[0]
        for ann in anns:
            k = ann["category_id"] - 1
            prompt_mask = read_png(out / "probabilities" / name / f"{k}.png") >= mask_level(0.5)
            inside = instances.annToMask(ann).astype(bool)
            assert inside.any() and not (inside & ~prompt_mask).any()


def test_batched_labels_agree_with_single_frames(folder, tmp_path, tiny_checkpoint):
    assert run([folder, "-o", tmp_path / "one", "--prompts", ";".join(PROMPTS), "--probabilities",
                "--batch", "1"], tiny_checkpoint) == 0
    assert run([folder, "-o", tmp_path / "three", "--prompts", ";".join(PROMPTS), "--probabilities",
                "--batch", "3"], tiny_checkpoint) == 0
    for name in ["a", "b", "sub/c"]:
        for p in range(len(PROMPTS)):
            one = read_png(tmp_path / "one" / "probabilities" / name / f"{p}.png").astype(int)
            three = read_png(tmp_path / "three" / "probabilities" / name / f"{p}.png").astype(int)
            assert np.abs(one - three).max() <= 1


def test_a_rerun_writes_nothing_and_relabels_only_what_changed(folder, tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "out"
    args = [folder, "-o", out, "--prompts", ";".join(PROMPTS)]
    assert run(args, tiny_checkpoint) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert run(args, tiny_checkpoint) == 0
    assert "0 frames labelled" in capsys.readouterr().out
    assert snapshot(out) == before  # not one file rewritten

    # a damaged label and a changed picture under the same name: exactly those two are redone
    (out / "labels" / "a.png").write_bytes(b"damaged")
    cv2.imwrite(str(folder / "b.png"), cv2.cvtColor(picture(7), cv2.COLOR_RGB2BGR))
    assert run(args, tiny_checkpoint) == 0
    printed = capsys.readouterr().out
    assert "2 frames labelled" in printed and "1 already done" in printed
    assert snapshot(out)["labels/sub/c.png"] == before["labels/sub/c.png"]
    assert read_png(out / "labels" / "a.png") is not None


def test_other_prompts_in_the_folder_are_refused_unless_replaced(folder, tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "out"
    assert run([folder, "-o", out, "--prompts", "cup"], tiny_checkpoint) == 0
    capsys.readouterr()
    assert run([folder, "-o", out, "--prompts", "cup;cat"], tiny_checkpoint) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "prompts" in err and "--replace" in err
    assert json.loads((out / "run.json").read_text())["prompts"] == ["cup"]
    assert run([folder, "-o", out, "--prompts", "cup;cat", "--replace"], tiny_checkpoint) == 0
    assert json.loads((out / "run.json").read_text())["prompts"] == ["cup", "cat"]


def test_disk_full_stops_cleanly_and_the_rerun_finishes(folder, tmp_path, tiny_checkpoint, monkeypatch, capsys):
    out = tmp_path / "out"
    real_write = OutputFolder._write
    calls = {"n": 0}

    def filling_write(path, data):
        calls["n"] += 1
        if calls["n"] > 4:  # run.json, then a's label and record, then b's label: b's record fails
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(OutputFolder, "_write", staticmethod(filling_write))
    args = [folder, "-o", out, "--prompts", ";".join(PROMPTS), "--batch", "1"]
    assert run(args, tiny_checkpoint) == 3
    captured = capsys.readouterr()
    assert "disk is full" in captured.err
    assert "1 frames labelled" in captured.out  # a only (issue 19, point 15: it was counted twice)
    assert (out / "frames" / "a.json").exists()
    assert not (out / "labels" / "b.png").exists() and not (out / "frames" / "b.json").exists()
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(OutputFolder, "_write", staticmethod(real_write))
    assert run(args, tiny_checkpoint) == 0
    printed = capsys.readouterr().out
    assert "2 frames labelled" in printed and "1 already done" in printed


def test_bad_arguments_are_refused_with_a_reason(folder, tmp_path, tiny_checkpoint, capsys):
    assert run([folder, "-o", tmp_path / "o1", "--prompts", "cup", "--start", "1"], tiny_checkpoint) == 2
    assert "--start/--end need timed frames" in capsys.readouterr().err
    assert run([tmp_path / "missing", "-o", tmp_path / "o2", "--prompts", "cup"], tiny_checkpoint) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run([folder, "-o", tmp_path / "o3"], tiny_checkpoint) == 2
    assert "no prompts" in capsys.readouterr().err
    assert run([folder, "-o", tmp_path / "o4", "--prompts", "cup", "--prompt-threshold", "cup=2"],
               tiny_checkpoint) == 2
    assert "must be in [0, 1]" in capsys.readouterr().err


def test_video_stride_limit_and_time_range(tmp_path, tiny_checkpoint):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for k in range(10):
        writer.write(cv2.cvtColor(picture(k), cv2.COLOR_RGB2BGR))
    writer.release()
    assert run([video, "-o", tmp_path / "a", "--prompts", "cup", "--stride", "3"], tiny_checkpoint) == 0
    names = [f["name"] for f in json.loads((tmp_path / "a" / "labels.json").read_text())["frames"]]
    assert names == ["frame_000000", "frame_000003", "frame_000006", "frame_000009"]
    assert (tmp_path / "a" / "images" / "frame_000003.png").exists()  # for labelling tools
    assert run([video, "-o", tmp_path / "b", "--prompts", "cup", "--start", "0.25", "--end", "0.55",
                "--limit", "2"], tiny_checkpoint) == 0
    names = [f["name"] for f in json.loads((tmp_path / "b" / "labels.json").read_text())["frames"]]
    assert names == ["frame_000003", "frame_000004"]


def test_prompts_from_a_saved_prompt_store(folder, tmp_path, tiny_checkpoint, tiny_engine):
    from clipseg_ros.core.prompts.store import PromptStore, StoredImagePrompt, StoredPrompts
    from clipseg_ros.core.prompts.visual_prompts import make_example

    example = make_example(picture(11, 40, 40))
    PromptStore(tmp_path / "store").save(StoredPrompts(texts=("cup",), thresholds=(("cup", 0.3),),
                                                       images=(StoredImagePrompt("my mug", example),)))
    out = tmp_path / "out"
    assert run([folder, "-o", out, "--prompt-store", tmp_path / "store", "--probabilities"], tiny_checkpoint) == 0
    config = json.loads((out / "run.json").read_text())
    assert config["prompts"] == ["cup", "my mug"] and config["thresholds"] == [0.3, 0.4]
    prompt_set = tiny_engine.make_prompt_set(["cup"], {"my mug": example.prompt_image})
    expected = labelled(tiny_engine, picture(0), prompt_set)
    assert np.array_equal(read_png(out / "probabilities" / "a" / "1.png"), expected.masks[1])


# ---------------------------------------------------------------------- labels past 255 prompts
def test_wide_label_is_uint16_past_255_prompts_and_exact_below():
    rng = np.random.default_rng(3)
    masks = rng.integers(0, 256, (300, 6, 7), dtype=np.uint8)
    thresholds = [0.5] * 150 + [0.2] * 150
    label = wide_label_from_masks(masks, thresholds)
    assert label.dtype == np.uint16
    levels = np.array([mask_level(t) for t in thresholds])[:, None, None]
    scores = np.where(masks >= levels, masks.astype(int), -1)
    expected = np.where(scores.max(0) >= 0, scores.argmax(0) + 1, 0)
    assert np.array_equal(label, expected) and label.max() > 255
    few = masks[:8]
    assert np.array_equal(wide_label_from_masks(few, thresholds[:8]), label_from_masks(few, thresholds[:8]))
    # PNG keeps all 16 bits
    assert np.array_equal(cv2.imdecode(cv2.imencode(".png", label)[1], cv2.IMREAD_UNCHANGED), label)


# ---------------------------------------------------------------------- rosbag2 in and out
def write_bag(path: Path, storage: str, frames: int = 3) -> dict:
    """A bag with /cam/image_raw (rgb8), /cam/image_raw/compressed (png), a string topic and a
    compressed message that does not decode; returns {(topic, time_ns): rgb}."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    Image, CompressedImage = store.types["sensor_msgs/msg/Image"], store.types["sensor_msgs/msg/CompressedImage"]
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    String = store.types["std_msgs/msg/String"]
    truth = {}
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        raw = writer.add_connection("/cam/image_raw", Image.__msgtype__, typestore=store)
        comp = writer.add_connection("/cam/image_raw/compressed", CompressedImage.__msgtype__, typestore=store)
        text = writer.add_connection("/chatter", String.__msgtype__, typestore=store)
        for k in range(frames):
            t = 1_000_000_000 + k * 100_000_000
            header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9 + 7), frame_id="cam_optical")
            rgb = picture(20 + k)
            msg = Image(header=header, height=48, width=64, encoding="rgb8", is_bigendian=0, step=64 * 3,
                        data=rgb.reshape(-1).copy())
            writer.write(raw, t, store.serialize_cdr(msg, Image.__msgtype__))
            truth[("/cam/image_raw", t)] = rgb
            png = np.frombuffer(cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1], np.uint8)
            cmsg = CompressedImage(header=header, format="png", data=png.copy())
            writer.write(comp, t + 1, store.serialize_cdr(cmsg, CompressedImage.__msgtype__))
            truth[("/cam/image_raw/compressed", t + 1)] = rgb
            writer.write(text, t + 2, store.serialize_cdr(String(data="hello"), String.__msgtype__))
        bad = CompressedImage(header=Header(stamp=Time(sec=9, nanosec=0), frame_id="cam_optical"), format="png",
                              data=np.frombuffer(b"not a png", np.uint8).copy())
        writer.write(comp, 2_000_000_000, store.serialize_cdr(bad, CompressedImage.__msgtype__))
    return truth


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_in_labels_raw_and_compressed_and_the_enriched_bag_replays(storage, tmp_path, tiny_checkpoint,
                                                                       tiny_engine):
    from clipseg_ros_interfaces.msg import Segmentation
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader

    bag = tmp_path / "in_bag"
    truth = write_bag(bag, storage)
    out, enriched = tmp_path / "out", tmp_path / "enriched"
    assert run([bag, "-o", out, "--prompts", ";".join(PROMPTS), "--batch", "2", "--bag-out", enriched],
               tiny_checkpoint) == 0
    summary = json.loads((out / "labels.json").read_text())
    assert len(summary["frames"]) == 6
    assert [s["origin"] for s in summary["skipped"]] == ["/cam/image_raw/compressed@2000000000"]
    prompt_set = tiny_engine.make_prompt_set(PROMPTS)
    for record in summary["frames"]:
        rgb = truth[(record["topic"], record["bag_time_ns"])]
        expected = labelled(tiny_engine, rgb, prompt_set)
        for p in range(len(PROMPTS)):
            got = read_png(out / "probabilities" / record["name"] / f"{p}.png").astype(int)
            assert np.abs(got - expected.masks[p]).max() <= 1  # batched vision pass: within one level
        assert np.array_equal(cv2.cvtColor(read_png(out / record["file_name"]), cv2.COLOR_BGR2RGB), rgb)

    with AnyReader([enriched]) as reader:
        topics = {c.topic: c.msgcount for c in reader.connections}
        assert topics["/chatter"] == 3 and topics["/cam/image_raw/compressed"] == 4  # input copied whole
        added = {t: n for t, n in topics.items() if t.startswith("/clipseg/")}
        assert sorted(added) == sorted(f"/clipseg/{cam}/{kind}" for cam in camera_names()
                                       for kind in ("segmentation", "label", "confidences"))
        assert set(added.values()) == {3}
        records = {(r["topic"], r["bag_time_ns"]): r for r in summary["frames"]}
        seg_connections = [c for c in reader.connections if c.topic.endswith("/segmentation")]
        seen = 0
        for connection, time_ns, raw in reader.messages(connections=seg_connections):
            msg = deserialize_message(bytes(raw), Segmentation)
            record = next(r for (topic, t), r in records.items() if t == time_ns)
            assert msg.header.frame_id == "cam_optical"
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == record["stamp_ns"]
            assert list(msg.prompts) == PROMPTS
            first = read_png(out / "probabilities" / record["name"] / "0.png")
            assert np.array_equal(np.frombuffer(bytes(msg.masks[0].data), np.uint8).reshape(first.shape), first)
            seen += 1
        assert seen == 6


def camera_names() -> list[str]:
    from clipseg_ros.ros.cameras import camera_specs

    return [s.name for s in camera_specs(["/cam/image_raw", "/cam/image_raw/compressed"])]


def test_bag_topics_are_checked(tmp_path, tiny_checkpoint, capsys):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    bag = tmp_path / "bag"
    write_bag(bag, "sqlite3", frames=1)
    assert run([bag, "-o", tmp_path / "o", "--prompts", "cup", "--topics", "/nope"], tiny_checkpoint) == 2
    err = capsys.readouterr().err
    assert "/nope is not in" in err and "/cam/image_raw" in err
    assert run([bag, "-o", tmp_path / "o", "--prompts", "cup", "--topics", "/chatter"], tiny_checkpoint) == 2
    assert "not images" in capsys.readouterr().err

    store = get_typestore(Stores.ROS2_KILTED)
    String = store.types["std_msgs/msg/String"]
    text_only = tmp_path / "text_only"
    with Writer(text_only, version=9) as writer:
        c = writer.add_connection("/chatter", String.__msgtype__, typestore=store)
        writer.write(c, 1, store.serialize_cdr(String(data="hi"), String.__msgtype__))
    assert run([text_only, "-o", tmp_path / "o2", "--prompts", "cup"], tiny_checkpoint) == 2
    assert "no image topics" in capsys.readouterr().err


def test_runs_as_a_module():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "clipseg_ros.tools.label", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "usage: clipseg-label" in done.stdout and "--bag-out" in done.stdout


def test_folder_names_keep_suffixes_only_where_stems_clash_and_skip_the_output_inside(tmp_path, tiny_checkpoint):
    images = tmp_path / "pictures"
    images.mkdir()
    for name, seed in (("a.png", 0), ("a.jpg", 1), ("b.png", 2)):
        cv2.imwrite(str(images / name), cv2.cvtColor(picture(seed), cv2.COLOR_RGB2BGR))
    out = images / "labels_out"  # inside the input: its PNGs must never become inputs
    args = [images, "-o", out, "--prompts", "cup", "--probabilities"]
    assert run(args, tiny_checkpoint) == 0
    names = [f["name"] for f in json.loads((out / "labels.json").read_text())["frames"]]
    assert names == ["a_jpg", "a_png", "b"]
    assert run(args, tiny_checkpoint) == 0  # the rerun still sees three inputs, all done
    summary = json.loads((out / "labels.json").read_text())
    assert [f["name"] for f in summary["frames"]] == names and summary["skipped"] == []


def as_humble_bag(path: Path) -> None:
    """Turn a sqlite3 bag written here into what Humble records: schema 3 without the
    message_definitions table (and no type hashes), metadata version 5."""
    import re
    import sqlite3

    (db,) = path.glob("*.db3")
    con = sqlite3.connect(db)
    con.execute("DROP TABLE message_definitions")
    con.execute("ALTER TABLE topics DROP COLUMN type_description_hash")
    con.execute("UPDATE schema SET schema_version = 3")
    con.commit()
    con.close()
    meta = path / "metadata.yaml"
    text = re.sub(r"\n\s*type_description_hash:[^\n]*(\n\s*RIHS01_\w+)?", "", meta.read_text())
    meta.write_text(text.replace("version: 9", "version: 5").replace("  custom_data: null\n", ""))


def test_a_bag_recorded_on_humble_is_labelled(tmp_path, tiny_checkpoint, tiny_engine):
    """Issue 19, point 11: sqlite3 bags without embedded definitions exited 2 with 'Bag contains
    no type definitions'."""
    bag = tmp_path / "humble"
    truth = write_bag(bag, "sqlite3", frames=2)
    as_humble_bag(bag)
    out, enriched = tmp_path / "out", tmp_path / "enriched"
    assert run([bag, "-o", out, "--prompts", ";".join(PROMPTS), "--bag-out", enriched], tiny_checkpoint) == 0
    summary = json.loads((out / "labels.json").read_text())
    assert len(summary["frames"]) == 4
    prompt_set = tiny_engine.make_prompt_set(PROMPTS)
    for record in summary["frames"]:
        rgb = truth[(record["topic"], record["bag_time_ns"])]
        expected = labelled(tiny_engine, rgb, prompt_set)
        got = read_png(out / "probabilities" / record["name"] / "0.png").astype(int)
        assert np.abs(got - expected.masks[0]).max() <= 1
    from clipseg_ros.tools.label_sources import open_bag

    with open_bag(enriched) as reader:
        assert sum(c.msgcount for c in reader.connections if c.topic.endswith("/segmentation")) == 4


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_output_files_honour_the_umask(folder, tmp_path, tiny_checkpoint, umask, mode):
    """Issue 19, point 14: every output file was 0600 (mkstemp + os.replace), so a labelling tool
    or a container running as another user could not read it."""
    import os
    import stat

    old = os.umask(umask)
    try:
        assert run([folder, "-o", tmp_path / "out", "--prompts", ";".join(PROMPTS)], tiny_checkpoint) == 0
    finally:
        os.umask(old)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert modes == {mode}, {oct(m) for m in modes}


def test_frames_that_fail_are_skipped_and_counted_and_repeated_failures_stop_cleanly(folder, tmp_path,
                                                                                    tiny_checkpoint, monkeypatch,
                                                                                    capsys):
    """Issue 19, point 13: an injected NonFiniteLogitsError or any OSError while writing was
    uncaught: a traceback, and labels.json and COCO never written."""
    from clipseg_ros.core.model.engine import NonFiniteLogitsError, SegmentationEngine

    real_segment = SegmentationEngine.segment_batch
    calls = {"n": 0}

    def segment_batch(self, images, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second frame
            raise NonFiniteLogitsError("the model produced NaN/inf logits (injected)")
        return real_segment(self, images, *args, **kwargs)

    monkeypatch.setattr(SegmentationEngine, "segment_batch", segment_batch)
    real_write = OutputFolder.write_frame

    def write_frame(self, name, record, files):
        if name == "sub/c":
            raise OSError(errno.EIO, "Input/output error")
        return real_write(self, name, record, files)

    monkeypatch.setattr(OutputFolder, "write_frame", write_frame)
    out = tmp_path / "out"
    assert run([folder, "-o", out, "--prompts", ";".join(PROMPTS)], tiny_checkpoint) == 0
    summary = json.loads((out / "labels.json").read_text())
    reasons = {s["name"]: s["reason"] for s in summary["skipped"]}
    assert "NonFiniteLogitsError" in reasons.pop("b") and "Input/output error" in reasons.pop("sub/c")
    assert [r["name"] for r in summary["frames"]] == ["a"] and (out / "coco_instances.json").exists()
    assert "1 frames labelled" in capsys.readouterr().out

    monkeypatch.setattr(SegmentationEngine, "segment_batch",
                        lambda self, *a, **k: (_ for _ in ()).throw(NonFiniteLogitsError("always (injected)")))
    many = tmp_path / "many"
    many.mkdir()
    for k in range(8):
        cv2.imwrite(str(many / f"f{k}.png"), picture(40 + k))
    again = tmp_path / "again"
    assert run([many, "-o", again, "--prompts", ";".join(PROMPTS)], tiny_checkpoint) == 4
    err = capsys.readouterr().err
    assert "5 frames in a row failed" in err and "always (injected)" in err
    assert len(json.loads((again / "labels.json").read_text())["skipped"]) == 5


def test_streams_without_a_length_and_time_windows_read_only_what_they_need(tmp_path, tiny_checkpoint,
                                                                          monkeypatch):
    """Issue 19, point 15: a raw MJPEG stream reports a negative frame count and
    tqdm(total=len(source)) raised before the first frame; --end never stopped reading (a
    300-frame video with --end 1.0 read all 301 attempts; a bag went through every message); the
    progress total ignored --limit and the window."""
    from clipseg_ros.tools import label as label_cli_module
    from clipseg_ros.tools.label_sources import Selection, VideoSource

    stream = tmp_path / "camera.mjpeg"  # what a webcam dump or `ffmpeg -f mjpeg` gives: JPEGs back to back
    stream.write_bytes(b"".join(cv2.imencode(".jpg", cv2.cvtColor(picture(k), cv2.COLOR_RGB2BGR))[1].tobytes()
                                for k in range(4)))
    assert VideoSource(stream).expected_frames() is None
    assert label_cli_module.main([str(stream), "-o", str(tmp_path / "s"), "--prompts", "cup", "--model",
                                  str(tiny_checkpoint), "--device", "cpu", "--dtype", "float32"]) == 0  # with a bar
    assert len(json.loads((tmp_path / "s" / "labels.json").read_text())["frames"]) == 4

    video = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for k in range(300):
        writer.write(cv2.cvtColor(picture(k % 5), cv2.COLOR_RGB2BGR))
    writer.release()
    from clipseg_ros.tools import label_sources
    reads = []

    class CountingCapture:  # delegates (subclassing OpenCV's C type crashed the interpreter at exit)
        def __init__(self, *args):
            self._capture = cv2.VideoCapture(*args)

        def read(self, *args):
            reads.append(1)
            return self._capture.read(*args)

        def __getattr__(self, name):
            return getattr(self._capture, name)

    class CountingCv2:
        VideoCapture = CountingCapture

        def __getattr__(self, name):
            return getattr(cv2, name)

    monkeypatch.setattr(label_sources, "cv2", CountingCv2())
    assert run([video, "-o", tmp_path / "v", "--prompts", "cup", "--end", "1.0"], tiny_checkpoint) == 0
    assert len(json.loads((tmp_path / "v" / "labels.json").read_text())["frames"]) == 11  # frames 0..10
    assert len(reads) <= 12
    assert VideoSource(video, Selection(limit=7)).expected_frames() == 7
    assert VideoSource(video, Selection(start=1.0, end=2.0, stride=2)).expected_frames() == 6


def test_a_bag_time_window_stops_reading_at_its_end(tmp_path, tiny_checkpoint, monkeypatch):
    from rosbags.highlevel import AnyReader

    bag = tmp_path / "bag"
    write_bag(bag, "sqlite3", frames=3)  # images at 0, 0.1, 0.2 s, a bad one at 1.0 s
    read = []
    real_messages = AnyReader.messages

    def messages(self, *args, **kwargs):
        for item in real_messages(self, *args, **kwargs):
            read.append(item[1])
            yield item

    monkeypatch.setattr(AnyReader, "messages", messages)
    assert run([bag, "-o", tmp_path / "out", "--prompts", "cup", "--end", "0.15"], tiny_checkpoint) == 0
    assert len(json.loads((tmp_path / "out" / "labels.json").read_text())["frames"]) == 4  # raw + compressed x 2
    assert max(read) - min(read) < 300_000_000  # stopped at the first message past 0.15 s


def test_coco_polygons_decode_to_the_same_masks_as_the_rle(folder, tmp_path, tiny_checkpoint):
    """Issue 19, point 16: Label Studio's COCO importer reads polygons only (RLE 'not yet
    supported'). With --coco-polygons each annotation also comes as polygons that rasterise to
    exactly its RLE mask (holes filled: COCO polygons cannot cut one out)."""
    from pycocotools import mask as coco_mask

    out = tmp_path / "out"
    assert run([folder, "-o", out, "--prompts", ";".join(PROMPTS), "--coco-polygons"], tiny_checkpoint) == 0
    checked = 0
    for name in ("coco_semantic", "coco_instances"):
        rle_doc = json.loads((out / f"{name}.json").read_text())
        poly_doc = json.loads((out / f"{name}_polygons.json").read_text())
        assert len(rle_doc["annotations"]) == len(poly_doc["annotations"]) > 0
        for rle_ann, poly_ann in zip(rle_doc["annotations"], poly_doc["annotations"]):
            h, w = rle_ann["segmentation"]["size"]
            polygons = poly_ann["segmentation"]
            assert isinstance(polygons, list) and all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
            rle = dict(rle_ann["segmentation"], counts=rle_ann["segmentation"]["counts"].encode("ascii"))
            mask = np.ascontiguousarray(coco_mask.decode(rle))  # pycocotools decodes column-major
            filled = np.zeros_like(mask)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(filled, contours, -1, 1, -1)
            decoded = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, h, w)))
            assert np.array_equal(decoded, filled)
            assert {k: v for k, v in poly_ann.items() if k != "segmentation"} == \
                {k: v for k, v in rle_ann.items() if k != "segmentation"}
            checked += 1
    assert checked >= 3


def test_resuming_follows_what_decides_the_masks(folder, tmp_path, tiny_checkpoint, capsys):
    """Issue 19, point 12: dtype and device did not decide resuming (a float32 run resumed in
    bfloat16 mixed precisions silently) while the same checkpoint by another path was refused;
    the precision was written nowhere."""
    out = tmp_path / "out"
    args = [folder, "-o", out, "--prompts", ";".join(PROMPTS)]
    assert run(args, tiny_checkpoint) == 0
    run_doc = json.loads((out / "run.json").read_text())
    assert run_doc["precision"].startswith("float32") and run_doc["device"] == "cpu"
    assert json.loads((out / "labels.json").read_text())["precision"].startswith("float32")
    assert "precision float32" in capsys.readouterr().out
    assert label_cli.main([*map(str, args), "--model", str(tiny_checkpoint), "--device", "cpu", "--dtype",
                           "bfloat16", "--no-progress"]) == 2
    assert "precision: 'float32" in capsys.readouterr().err
    elsewhere = tmp_path / "same_checkpoint"
    elsewhere.symlink_to(tiny_checkpoint, target_is_directory=True)
    assert run(args, elsewhere) == 0
    assert "3 already done" in capsys.readouterr().out


def test_bag_out_added_to_a_finished_folder_and_rerun(tmp_path, tiny_checkpoint, capsys):
    """Issue 19, point 12: adding --bag-out to a finished folder was refused as other settings,
    and an existing --bag-out path was found only after the whole run (rc 1)."""
    bag = tmp_path / "bag"
    write_bag(bag, "sqlite3", frames=2)
    out, enriched = tmp_path / "out", tmp_path / "enriched"
    assert run([bag, "-o", out, "--prompts", "cup"], tiny_checkpoint) == 0
    with_bag = [bag, "-o", out, "--prompts", "cup", "--bag-out", enriched]
    assert run(with_bag, tiny_checkpoint) == 0  # the frames are labelled again with their probabilities
    assert "4 frames labelled" in capsys.readouterr().out and (enriched / "metadata.yaml").exists()
    assert run(with_bag, tiny_checkpoint) == 0  # the same command again: resumes, rewrites its own bag
    printed = capsys.readouterr().out
    assert "4 already done" in printed and "wrote" in printed
    stranger = tmp_path / "someone_elses"
    stranger.mkdir()
    assert run([bag, "-o", tmp_path / "other", "--prompts", "cup", "--bag-out", stranger], tiny_checkpoint) == 2
    captured = capsys.readouterr()
    assert "exists and is not the bag this output folder wrote" in captured.err
    assert "precision" not in captured.out  # refused before the model loaded


def test_memory_does_not_grow_with_the_number_of_frames(tmp_path, tiny_checkpoint):
    """Issue 19, point 10: every record, with every object's RLE, stayed in memory for the whole
    run and the COCO export built both documents in memory (31.8 kB a frame on smooth masks).
    Measured here: the Python heap's peak over a run of 20 and of 80 frames (about 33 kB of
    records a frame: the old code's peak grew by ~2 MB between them)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    peaks = {}
    for n in (20, 80):
        images = tmp_path / f"images_{n}"
        images.mkdir()
        for k in range(n):
            cv2.imwrite(str(images / f"f{k:04d}.png"),
                        cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 4))
        tracemalloc.start()
        try:
            # the model's own noisy masks (--refine none): many objects, large records, which the run must not keep
            assert run([images, "-o", tmp_path / f"out_{n}", "--prompts", ";".join(PROMPTS), "--min-object-area",
                        "0", "--refine", "none"], tiny_checkpoint) == 0
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        summary = json.loads((tmp_path / f"out_{n}" / "labels.json").read_text())
        assert len(summary["frames"]) == n
        assert len(json.loads((tmp_path / f"out_{n}" / "coco_instances.json").read_text())["images"]) == n
    record_bytes = np.mean([p.stat().st_size for p in (tmp_path / "out_80" / "frames").glob("*.json")])
    assert record_bytes > 10_000  # what would have been kept per frame
    assert peaks[80] - peaks[20] < 0.2 * 60 * record_bytes, (peaks, record_bytes)


def test_a_stop_in_the_middle_of_collecting_writes_counts_each_frame_once(folder, tmp_path, tiny_checkpoint,
                                                                         monkeypatch, capsys):
    """Issue 19, point 15: after DiskFull in _finish, frames collected before it were counted
    again by _drain (report.labelled double-counted)."""
    out = tmp_path / "out"
    real_write = OutputFolder._write
    calls = {"n": 0}

    def filling_write(path, data):
        calls["n"] += 1
        if calls["n"] > 4:  # run.json, a's label and record, b's label: b's record fails
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(OutputFolder, "_write", staticmethod(filling_write))
    assert run([folder, "-o", out, "--prompts", ";".join(PROMPTS), "--batch", "2"], tiny_checkpoint) == 3
    printed = capsys.readouterr().out
    assert "1 frames labelled" in printed and len(list((out / "frames").glob("*.json"))) == 1


def test_refinement_brings_the_labels_to_the_edges_and_decides_resuming(tmp_path, known_answer_checkpoint, capsys):
    """With the known-answer checkpoint (masks = the red 16 px blocks) on a red disc, the
    default ``--refine guided`` labels the disc to its edge, ``--refine none`` gives the blocks;
    a folder labelled one way is not resumed the other."""
    from clipseg_ros.tools.mask_scores import iou
    from clipseg_ros.tools.synthetic_scenes import scenes

    scene = next(s for s in scenes((240, 320)) if s.name == "disc on plain")
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "disc.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    common = ["--prompts", "red thing", "--model", str(known_answer_checkpoint), "--device", "cpu", "--dtype",
              "float32", "--no-progress"]
    assert label_cli.main([str(images), "-o", str(tmp_path / "refined"), *common]) == 0
    assert label_cli.main([str(images), "-o", str(tmp_path / "blocks"), "--refine", "none", *common]) == 0
    refined = read_png(tmp_path / "refined" / "labels" / "disc.png") == 1
    blocks = read_png(tmp_path / "blocks" / "labels" / "disc.png") == 1
    assert iou(refined, scene.truth) >= 0.98 and iou(blocks, scene.truth) < 0.9
    assert json.loads((tmp_path / "refined" / "run.json").read_text())["refine"] == "guided"
    capsys.readouterr()
    assert label_cli.main([str(images), "-o", str(tmp_path / "blocks"), *common]) == 2  # blocks, now refined
    assert "refine" in capsys.readouterr().err
