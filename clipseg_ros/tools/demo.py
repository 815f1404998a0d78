"""Run the real node on sample images and save what it publishes.

Starts ``clipseg_node`` as a separate process (as on a robot), plays images as a camera topic at
10 Hz, sets prompts from the command line, and writes what comes back on the output topics into
an output folder: ``<frame>_overlay.png``, ``<frame>_label.png``, ``<frame>_mask_<k>.png`` and
``confidences.json``; prints a per-prompt table.

    python -m clipseg_ros.tools.demo                                # bundled photos, default prompts
    python -m clipseg_ros.tools.demo --images ~/pictures --prompts "cup;door handle" --output out/
    python -m clipseg_ros.tools.demo --images clip.mp4 --max-frames 100   # a video; pre-label a dataset

Images: without --images, scikit-image's bundled photos (coffee: CC0, Rachel Michetti; chelsea:
CC0, Stefan van der Walt; astronaut: public domain, NASA; rocket: public domain, SpaceX).
Model: the real checkpoint by default; if the hub cannot be reached and it is not cached, a tiny
randomly initialised checkpoint is generated locally and every output is labelled untrained.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from clipseg_ros.core.model.engine import DEFAULT_MODEL
from clipseg_ros.core.model.random_checkpoint import UNTRAINED_NOTE, is_untrained, make_random_checkpoint
from clipseg_ros.ros.spinner import BackgroundSpinner
from clipseg_ros.tools.child_node import ChildNode

DEFAULT_PROMPTS = "cup;cat;person;rocket"
SAMPLE_PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Once the node says it is segmenting, its first answer takes one inference (1-5 s on a CPU); 30 s
# without one means DDS never paired this player with it (see child_node), so a new node is started.
ANSWER_TIMEOUT_S = 30.0
NODE_STARTS = 3


# ---------------------------------------------------------------------- inputs
def load_frames(source: str | None, max_frames: int) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 image) pairs from the bundled photos, a folder, an image or a video."""
    if source is None:
        from skimage import data

        return [(name, getattr(data, name)()[:, :, :3]) for name in SAMPLE_PHOTOS][:max_frames]
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        frames = [(p.stem, _read_rgb(p)) for p in files[:max_frames]]
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        frames = [(path.stem, _read_rgb(path))]
    else:
        frames = _read_video(path, max_frames)
    frames = [(n, im) for n, im in frames if im is not None]
    if not frames:
        raise SystemExit(f"demo: no readable images in {source}")
    return frames


def _read_rgb(path: Path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        print(f"demo: skipping unreadable {path}", file=sys.stderr)
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_video(path: Path, max_frames: int):
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f"demo: cannot open {path} as an image folder, image or video")
    frames = []
    while len(frames) < max_frames:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append((f"{path.stem}_{len(frames):05d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    cap.release()
    return frames


# ---------------------------------------------------------------------- model
def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_model(model: str, output: Path) -> tuple[str, bool]:
    """(model to load, untrained?) — a local dir, a cached/reachable hub id, or a generated tiny
    random checkpoint when the hub cannot be reached."""
    if os.path.isdir(os.path.expanduser(model)):
        return model, is_untrained(model)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model, local_files_only=True), False  # cached: no network needed
    except Exception:  # noqa: BLE001 - not cached (or no huggingface_hub): look further
        pass
    if hub_reachable():
        return model, False
    fallback = output / "untrained-model"
    print(f"demo: cannot reach the model hub for '{model}'; running with a locally generated tiny random "
          f"checkpoint ({UNTRAINED_NOTE})", flush=True)
    if not (fallback / "model.safetensors").is_file():
        make_random_checkpoint(fallback, size="tiny")
    return str(fallback), True


# ---------------------------------------------------------------------- run
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS, help="text prompts separated by ';'")
    parser.add_argument("--images", help="folder of images, one image, or a video (default: bundled photos)")
    parser.add_argument("--output", default="output/demo", help="folder for what the node published")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local checkpoint directory")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--camera-hz", type=float, default=10.0, help="rate the images are played at")
    parser.add_argument("--node-rate", type=float, default=5.0, help="the node's segmentation rate (0 = max)")
    parser.add_argument("--threshold", type=float, default=0.4)
    parser.add_argument("--max-frames", type=int, default=1000, help="at most this many images/video frames")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    args = parser.parse_args(argv)

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    frames = load_frames(args.images, args.max_frames)
    model, untrained = resolve_model(args.model, output)
    prompts = [p.strip() for p in args.prompts.split(";") if p.strip()]

    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))  # off a robot's default 0; 102+ meet ephemeral ports
    env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")  # large images between processes
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "FASTDDS_BUILTIN_TRANSPORTS")})
    node_cmd = node_command(model, prompts, device=args.device, rate=args.node_rate, threshold=args.threshold)
    print(f"demo: {len(frames)} images, prompts {prompts}, model {model}"
          + (f" ({UNTRAINED_NOTE})" if untrained else ""), flush=True)
    records = play(frames, output, args, lambda: ChildNode(node_cmd, env))
    summary = {"model": model, "untrained": untrained, "prompts": prompts, "threshold": args.threshold,
               "frames": records}
    if untrained:
        summary["note"] = UNTRAINED_NOTE
    (output / "confidences.json").write_text(json.dumps(summary, indent=2))
    print_table(records, prompts, untrained)
    print(f"demo: wrote {len(records)} frames to {output}/ (overlay, label, masks, confidences.json)")
    return 0 if len(records) == len(frames) else 1


def node_command(model: str, prompts: list[str], *, device: str = "auto", rate: float = 5.0,
                 threshold: float = 0.4) -> list[str]:
    """``python -m clipseg_ros`` named ``clipseg``, on the demo's camera topic."""
    return [sys.executable, "-m", "clipseg_ros", "--ros-args", "-r", "__node:=clipseg",
            "-p", f"model:={model}", "-p", f"device:={device}",
            "-p", "prompts:=[" + ", ".join(json.dumps(p) for p in prompts) + "]",
            "-p", "image_topics:=[/demo/image]", "-p", f"rate:={float(rate)}", "-p", f"threshold:={float(threshold)}"]


def play(frames, output: Path, args, start_node) -> list[dict]:
    """Start the node (``start_node()``: a :class:`ChildNode`), publish each frame at camera rate
    until the node's result for it arrives, save the results. A node that never answers is
    replaced (at most NODE_STARTS starts); frames already saved are kept."""
    import rclpy
    from clipseg_ros_interfaces.msg import Segmentation
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from clipseg_ros.ros.conversions import cv2_to_imgmsg, imgmsg_to_cv2
    from clipseg_ros.ros.messages import confidence_record

    rclpy.init()
    player = Node("clipseg_demo_player")
    pub = player.create_publisher(Image, "/demo/image", qos_profile_sensor_data)
    results: dict[str, object] = {}
    overlays: dict[str, object] = {}
    player.create_subscription(Segmentation, "/clipseg/segmentation",
                               lambda m: results.setdefault(m.header.frame_id, m), 10)
    player.create_subscription(Image, "/clipseg/overlay", lambda m: overlays.setdefault(m.header.frame_id, m), 10)
    spinner = BackgroundSpinner(player)
    records = []
    deadline = time.monotonic() + args.timeout
    period = 1.0 / args.camera_hz
    node, starts, answered = start_node(), 1, False
    try:
        for index, (name, rgb) in enumerate(frames):
            frame_id = f"demo/{index:05d}"
            msg = cv2_to_imgmsg(rgb, "rgb8")
            msg.header.frame_id = frame_id
            while not (frame_id in results and frame_id in overlays):
                if node.exit_code() is not None:
                    raise SystemExit(f"demo: the node exited with code {node.exit_code()}")
                if not answered and (node.ready_for() or 0.0) > ANSWER_TIMEOUT_S:
                    if starts == NODE_STARTS:
                        raise SystemExit(f"demo: the node never answered this player ({starts} starts); "
                                         f"check that ROS_DOMAIN_ID and FASTDDS_BUILTIN_TRANSPORTS match")
                    starts += 1
                    print(f"demo: the node has been segmenting for {ANSWER_TIMEOUT_S:.0f} s and no answer reached "
                          f"this player: DDS discovery between the two did not complete (Fast DDS does this now "
                          f"and then); starting a new node (start {starts} of {NODE_STARTS})", flush=True)
                    node.stop()
                    node = start_node()
                if time.monotonic() > deadline:
                    raise SystemExit(f"demo: no result for {name} within {args.timeout:.0f} s")
                msg.header.stamp = player.get_clock().now().to_msg()
                pub.publish(msg)
                time.sleep(period)  # camera frame period
            answered = True
            seg = results[frame_id]
            cv2.imwrite(str(output / f"{name}_overlay.png"), imgmsg_to_cv2(overlays[frame_id], "bgr8"))
            cv2.imwrite(str(output / f"{name}_label.png"), imgmsg_to_cv2(seg.label))
            for k, mask in enumerate(seg.masks):
                cv2.imwrite(str(output / f"{name}_mask_{k}.png"), imgmsg_to_cv2(mask))
            records.append({"frame": name, "inference_ms": round(seg.inference_ms, 1),
                            "confidences": [confidence_record(c) for c in seg.confidences]})
            print(f"demo: {name}: {seg.inference_ms:.0f} ms", flush=True)
    finally:
        node.stop()
        spinner.stop()
        player.destroy_node()
        rclpy.try_shutdown()
    return records


def print_table(records: list[dict], prompts: list[str], untrained: bool) -> None:
    if untrained:
        print(f"NOTE: {UNTRAINED_NOTE}")
    width = max([len(p) for p in prompts] + [6])
    print(f"{'frame':<16} {'prompt':<{width}} {'max':>6} {'mean':>6} {'area':>6} detected")
    for rec in records:
        for c in rec["confidences"]:
            print(f"{rec['frame']:<16} {c['prompt']:<{width}} {c['max_score']:6.3f} {c['mean_score']:6.3f} "
                  f"{c['area_fraction']:6.3f} {'yes' if c['detected'] else 'no'}")


if __name__ == "__main__":
    sys.exit(main())
