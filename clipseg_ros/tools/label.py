"""Pre-label a dataset offline: a folder of images, a video or a rosbag2 in; label images,
probabilities, per-frame JSON and COCO out; optionally the bag again with the node's outputs.

    clipseg-label INPUT --prompts "cup;door handle" --output labels/
    python -m clipseg_ros.tools.label run.mcap --topics /camera/image_raw --stride 5 --output labels/ --bag-out enriched/
    clipseg-label pictures/ --prompt-store ~/.ros/clipseg_prompts --output labels/ --probabilities

Uses the engine directly (no ROS graph, no DDS) and segments ``--batch`` frames per vision pass
(default 1), while a writer thread encodes and writes the previous ones. A rerun with the same settings
skips frames already written (checked by content: see :mod:`clipseg_ros.tools.label_outputs`), so an
interrupted run resumes. Unreadable frames are skipped, counted and listed at the end.

A frame whose segmentation or writing fails (non-finite logits, an I/O error other than a full
disk, ...) is skipped and listed with the reason; :data:`MAX_FAILURES_IN_A_ROW` such failures in a
row stop the run cleanly (what is done is kept, labels.json written).

Exit status: 0 done (also with skipped frames), 2 bad arguments or input, 3 disk full (rerun
to resume), 4 stopped after repeated failures (the reason is printed; rerun to resume once it is
fixed), 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from clipseg_ros.core.results.grids import resample_nearest
from clipseg_ros.tools.label_outputs import (
    DISK_FULL,
    DiskFull,
    FrameFiles,
    OutputConflict,
    OutputFolder,
    RunConfig,
    checkpoint_id,
    label_dtype,
    pixels_digest,
)
from clipseg_ros.tools.label_sources import LabelInputError, Selection, SourceFrame, open_source

EXIT_INPUT, EXIT_DISK_FULL, EXIT_FAILING, EXIT_INTERRUPTED = 2, 3, 4, 130
MAX_FAILURES_IN_A_ROW = 5  # frames; then the cause is not one frame


class RepeatedFailures(RuntimeError):
    """Frames keep failing: the run stops (EXIT_FAILING)."""


@dataclass(frozen=True)
class LabelOptions:
    """How frames are labelled (beyond the prompts): the default ``threshold``, objects'
    ``min_object_area`` (input px) and ``max_objects`` per prompt, ``probabilities`` PNGs."""

    threshold: float = 0.4
    min_object_area: float = 64.0
    max_objects: int = 16
    probabilities: bool = False
    refine: str = "guided"  # none | guided: refinement with the frame's own image (no depth offline)


# ---------------------------------------------------------------------- one frame
def frame_outputs(result, options: LabelOptions) -> tuple[np.ndarray, list[dict], list[dict]]:
    """(label, confidences, objects) of one engine result. The label is uint16 past 255 prompts;
    each object carries its full-resolution mask as COCO RLE (its region on the object grid,
    within the prompt's thresholded mask at input resolution)."""
    from clipseg_ros.core.results.objects import find_objects
    from clipseg_ros.core.results.postprocess import mask_level, wide_label_from_masks
    from clipseg_ros.tools.coco_export import encode_mask

    thresholds = result.prompt_thresholds
    label = wide_label_from_masks(result.masks, thresholds)
    h, w = result.masks.shape[1:]
    confidences = [{"prompt": s.prompt, "max_score": s.max_score, "mean_score": s.mean_score,
                    "area_fraction": s.area_fraction, "detected": s.detected, "bbox": list(s.bbox),
                    "centroid": [_finite(c) for c in s.centroid], "threshold": s.threshold} for s in result.stats]
    objects = []
    for k, found in enumerate(find_objects(result.masks, result.prompts, thresholds, result.image_size,
                                           options.min_object_area, options.max_objects)):
        if not found.objects:
            continue
        components = found.components
        if components.shape != (h, w):
            components = resample_nearest(components, (h, w))
        # transposed once, so that each object's mask comes out in the column order COCO RLE reads
        components_t = np.ascontiguousarray(components.T)
        inside_t = np.ascontiguousarray((result.masks[k] >= mask_level(thresholds[k])).T)
        for obj in found.objects:
            objects.append({"prompt_index": k, "prompt": obj.prompt, "bbox": list(obj.bbox),
                            "centroid": [_finite(c) for c in obj.centroid], "area": obj.area,
                            "max_score": obj.max_score, "mean_score": obj.mean_score,
                            "rle": encode_mask(((components_t == obj.component) & inside_t).T)})
    return label, confidences, objects


def _finite(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


# ---------------------------------------------------------------------- prompts
def load_prompts(engine, texts: Sequence[str], template: str, thresholds: dict, store: str | None):
    """The active PromptState: a saved prompt store (texts, example images, thresholds,
    template) and/or texts. PromptError / StoreCorrupt / LabelInputError when unusable."""
    from clipseg_ros.core.prompts.keeper import restoring
    from clipseg_ros.core.prompts.prompt_book import PromptBook, PromptChange
    from clipseg_ros.core.prompts.store import PromptStore

    book = PromptBook(texts, template=template, max_prompts=65535, thresholds=thresholds)
    book.attach(engine)
    if store:
        stored = PromptStore(store).load()
        if stored is None:
            raise LabelInputError(f"{store} holds no prompt store (no prompts.json)")
        change = restoring(book, stored)
        extra = tuple(t for t in texts if t not in change.texts and t not in {i.name for i in change.images})
        merged = dict(change.thresholds)
        merged.update(thresholds)
        book.apply(PromptChange(texts=tuple(change.texts) + extra, images=change.images,
                                template=change.template if template == "{}" else template, thresholds=merged))
    state = book.state
    if not state.names:
        raise LabelInputError("no prompts: give --prompts, --prompts-file or --prompt-store")
    return state


BAG_OUT_FILE = "bag_out.json"  # which enriched bag this folder wrote, so a rerun may rewrite it


def precision_label(precision) -> str:
    """What a run's precision is, as recorded in run.json (it decides resuming)."""
    name = lambda dtype: str(dtype).removeprefix("torch.")  # noqa: E731
    int8 = f", vision int8 ({precision.vision_int8})" if precision.vision_int8 else ""
    return f"{precision.name}: encoders {name(precision.encoders)}, decoder {name(precision.decoder)}{int8}"


def bag_metadata_digest(bag: Path) -> str:
    from clipseg_ros.tools.label_outputs import sha256_bytes

    return sha256_bytes((bag / "metadata.yaml").read_bytes())


def bag_out_to_replace(bag_out: str, output: str) -> bool:
    """Before the model loads: whether ``--bag-out`` exists as this output folder's own bag from
    an earlier run (unchanged since: it is rewritten at the end); LabelInputError when it exists
    otherwise; False when it does not exist."""
    path = Path(bag_out).expanduser()
    if not path.exists():
        return False
    try:
        own = json.loads((Path(output).expanduser() / BAG_OUT_FILE).read_text())
        if own["bag_out"] == str(path.resolve()) and own["metadata_sha256"] == bag_metadata_digest(path):
            return True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise LabelInputError(f"--bag-out {bag_out} exists and is not the bag this output folder wrote: give a new "
                          "path (or delete it)")


def prompts_from_file(path: str) -> list[str]:
    """One prompt per line ('#' starts a comment), or a JSON list of strings."""
    from clipseg_ros.core.prompts.prompt_book import tidy_texts

    text = Path(path).expanduser().read_text()
    if text.lstrip().startswith("["):
        texts = json.loads(text)
        if not all(isinstance(t, str) for t in texts):
            raise LabelInputError(f"{path}: a JSON prompts file must be a list of strings")
        return tidy_texts(texts)
    return tidy_texts(line.split("#", 1)[0] for line in text.splitlines())


# ---------------------------------------------------------------------- the run
@dataclass
class RunReport:
    """What a run did: frames labelled now, found done, skipped (name, origin, reason), its
    labelling loop's seconds, and why it stopped early ('' when it did not)."""

    labelled: int = 0
    resumed: int = 0
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = ""

    @property
    def frames_per_second(self) -> float:
        return self.labelled / self.seconds if self.seconds > 0 else 0.0


class FrameFailed(RuntimeError):
    """One frame's outputs could not be written (not a full disk)."""

    def __init__(self, name: str, origin: str, reason: str):
        super().__init__(reason)
        self.name, self.origin, self.reason = name, origin, reason


class Labeller:
    """Labels frames from a source into an :class:`OutputFolder` (see the module doc)."""

    def __init__(self, engine, prompt_state, folder: OutputFolder, options: LabelOptions, batch: int = 1):
        self.engine, self.folder, self.options = engine, folder, options
        self.prompt_set = prompt_state.prompt_set
        self.batch = max(1, int(batch))
        # Nothing per frame stays in memory: the frames met go to the folder's order file, their
        # records are on disk (31.8 kB a frame of RLE on smooth masks were kept before: 3.2 GB
        # per 100k frames).
        self._failures_in_a_row = 0

    def run(self, source, progress=None) -> RunReport:
        report = RunReport()
        t0 = time.perf_counter()
        pending: list[tuple[SourceFrame, str]] = []
        writes: list[Future] = []
        self.folder.start_order()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipseg_label_writer") as writer:
            try:
                for frame in source:
                    if frame.rgb is None:
                        report.skipped.append({"name": frame.name, "origin": frame.origin, "reason": frame.error})
                        self._tick(progress, report)
                        continue
                    digest = pixels_digest(frame.rgb)
                    self.folder.add_to_order(frame.name, digest)
                    if self.folder.done(frame.name, digest) is not None:
                        report.resumed += 1
                        self._tick(progress, report)
                        continue
                    pending.append((frame, digest))
                    if len(pending) >= self.batch:
                        writes = self._finish(writes, report, progress)
                        writes += self._segment(pending, writer, report, progress)
                        pending = []
                if pending:
                    writes = self._finish(writes, report, progress)
                    writes += self._segment(pending, writer, report, progress)
                self._finish(writes, report, progress, wait_all=True)
            except RepeatedFailures as exc:
                report.stopped = f"{exc}; fix it and run the same command again to resume"
                self._drain(writes, report)
            except DiskFull as exc:
                report.stopped = f"{exc.strerror}; free some space and run the same command again to resume"
                self._drain(writes, report)
            except KeyboardInterrupt:
                report.stopped = "interrupted; run the same command again to resume"
                self._drain(writes, report)
        self.folder.close_order()
        report.seconds = time.perf_counter() - t0
        return report

    def _segment(self, pending: list[tuple[SourceFrame, str]], writer: ThreadPoolExecutor, report: RunReport,
                 progress) -> list[Future]:
        try:
            results = self.engine.segment_batch([f.rgb for f, _ in pending], self.prompt_set,
                                                threshold=self.options.threshold)
        except Exception as exc:  # noqa: BLE001 - e.g. NonFiniteLogitsError, out of memory: skip these frames
            for frame, _ in pending:
                self._failed(frame.name, frame.origin, f"segmentation failed: {type(exc).__name__}: {exc}", report,
                             progress)
            return []
        if self.options.refine != "none":
            from clipseg_ros.core.results.refinement import RefineOptions, refine_result

            refine, refined = RefineOptions(mode=self.options.refine), []
            for (frame, _), result in zip(pending, results):
                try:
                    refined.append(refine_result(result, frame.rgb, None, refine))
                except Exception as exc:  # noqa: BLE001 - this frame goes out unrefined, said once per frame
                    print(f"clipseg-label: {frame.name}: refinement failed, labelled unrefined: "
                          f"{type(exc).__name__}: {exc}", file=sys.stderr)
                    refined.append(result)
            results = refined
        return [writer.submit(self._write, frame, digest, result)
                for (frame, digest), result in zip(pending, results)]

    def _failed(self, name: str, origin: str, reason: str, report: RunReport, progress) -> None:
        """Skip one frame that failed; RepeatedFailures after MAX_FAILURES_IN_A_ROW in a row."""
        report.skipped.append({"name": name, "origin": origin, "reason": reason})
        self._tick(progress, report)
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise RepeatedFailures(f"{self._failures_in_a_row} frames in a row failed, the last: {reason}")

    def _write(self, frame: SourceFrame, digest: str, result) -> dict:
        try:
            return self._write_frame(frame, digest, result)
        except DiskFull:
            raise
        except Exception as exc:  # noqa: BLE001 - the frame's writing failed: said by _finish
            raise FrameFailed(frame.name, frame.origin, f"writing failed: {type(exc).__name__}: {exc}") from exc

    def _write_frame(self, frame: SourceFrame, digest: str, result) -> dict:
        label, confidences, objects = frame_outputs(result, self.options)
        h, w = label.shape
        record = {"source_sha256": digest, "origin": frame.origin, "width": w, "height": h,
                  "confidences": confidences, "objects": objects}
        if frame.topic:
            record.update(topic=frame.topic, bag_time_ns=frame.bag_time_ns, stamp_ns=frame.stamp_ns,
                          frame_id=frame.frame_id)
        keep_image = not frame.file_name  # video and bag frames: written for labelling tools
        files = FrameFiles(label=label.astype(label_dtype(len(result.prompts)), copy=False),
                           probabilities=result.masks if self.options.probabilities else None,
                           image=frame.rgb if keep_image else None)
        record["file_name"] = f"images/{frame.name}.png" if keep_image else frame.file_name
        return self.folder.write_frame(frame.name, record, files)

    def _finish(self, writes: list[Future], report: RunReport, progress, wait_all: bool = False) -> list[Future]:
        """Collect finished writes (all of them with ``wait_all``); the unfinished ones. Each is
        taken out of ``writes`` before its result is read, so a stop in between (DiskFull,
        RepeatedFailures) never counts one twice."""
        for future in list(writes):
            if not (wait_all or future.done()):
                continue
            writes.remove(future)
            try:
                future.result()  # DiskFull propagates from here
            except FrameFailed as exc:
                self._failed(exc.name, exc.origin, exc.reason, report, progress)
                continue
            report.labelled += 1
            self._failures_in_a_row = 0
            self._tick(progress, report)
        return writes

    def _drain(self, writes: list[Future], report: RunReport) -> None:
        """After a stop: keep the writes that succeeded, drop the rest (they left nothing)."""
        for future in writes:
            try:
                future.result()
            except Exception:  # noqa: BLE001 - already stopping (DiskFull or else): the frame is simply not done
                continue
            report.labelled += 1

    @staticmethod
    def _tick(progress, report: RunReport) -> None:
        if progress is not None:
            progress.update(1)
            progress.set_postfix(labelled=report.labelled, resumed=report.resumed, skipped=len(report.skipped),
                                 refresh=False)

    def done_records(self) -> Iterator[dict]:
        """The records of this run's done frames, in source order, read from disk (see
        :meth:`OutputFolder.done_records`): call it again for another pass."""
        return self.folder.done_records()


def export_coco(folder: OutputFolder, records: Callable[[], Iterable[dict]], prompts: Sequence[str],
                polygons: bool = False) -> None:
    """coco_semantic.json (from the label images) and coco_instances.json (from the records);
    with ``polygons`` also their ``*_polygons.json`` twins (for Label Studio). ``records()``
    gives the records in order, afresh for each pass: every document is written as it is read
    (images, then annotations), so memory does not grow with the number of frames."""
    from clipseg_ros.tools.coco_export import categories, instance_annotations, polygon_annotation, semantic_annotations
    from clipseg_ros.tools.label_outputs import read_png

    def images():
        for image_id, record in enumerate(records(), start=1):
            yield {"id": image_id, "file_name": record["file_name"], "width": record["width"],
                   "height": record["height"]}

    def semantic():
        next_id = 1
        for image_id, record in enumerate(records(), start=1):
            for annotation in semantic_annotations(read_png(folder.label_path(record["name"])), image_id, next_id):
                next_id += 1
                yield annotation

    def instances():
        next_id = 1
        for image_id, record in enumerate(records(), start=1):
            for annotation in instance_annotations(record["objects"], image_id, next_id):
                next_id += 1
                yield annotation

    descriptions = {"coco_semantic": ("clipseg_ros labels: one mask per image and prompt (the label image)", semantic),
                    "coco_instances": ("clipseg_ros objects: one mask per connected region of a prompt's mask",
                                       instances)}
    for name, (description, annotated) in descriptions.items():
        head = {"info": {"description": description}, "licenses": [], "categories": categories(prompts)}
        folder.write_json_streamed(f"{name}.json", head, {"images": images(), "annotations": annotated()})
        if polygons:  # Label Studio reads polygons only
            folder.write_json_streamed(f"{name}_polygons.json", head, {
                "images": images(), "annotations": (polygon_annotation(a) for a in annotated())})


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipseg-label", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a folder of images, an image, a video, or a rosbag2 (folder, .db3 or .mcap)")
    p.add_argument("--output", "-o", required=True, help="output folder (created; reruns resume in it)")
    p.add_argument("--prompts", default="", help="prompts separated by ';'")
    p.add_argument("--prompts-file", help="one prompt per line ('#' comments), or a JSON list")
    p.add_argument("--prompt-store", help="a saved prompt store folder (the node's prompt_store): texts, "
                                          "example images, thresholds, template")
    p.add_argument("--template", default="{}", help="prompt template with one '{}' (default: the prompt as is, "
                                                    "or the prompt store's)")
    p.add_argument("--threshold", type=float, default=0.4, help="default threshold (default 0.4)")
    p.add_argument("--prompt-threshold", action="append", default=[], metavar="NAME=VALUE",
                   help="a prompt's own threshold (repeatable)")
    p.add_argument("--topics", nargs="+", default=[], help="rosbag image topics (default: every image topic)")
    p.add_argument("--stride", type=int, default=1, help="every n-th frame (per topic for a bag)")
    p.add_argument("--limit", type=int, default=0, help="at most this many frames (0 = all)")
    p.add_argument("--start", type=float, help="seconds from the first frame (video, bag)")
    p.add_argument("--end", type=float, help="seconds from the first frame (video, bag)")
    p.add_argument("--probabilities", action="store_true", help="also write each prompt's probability PNG")
    p.add_argument("--refine", choices=("none", "guided"), default="guided",
                   help="edge-aware refinement of the masks with the frame's image, as the node's refine "
                        "(default guided; the node's depth modes need a depth image, which the labeller does not "
                        "read)")
    p.add_argument("--min-object-area", type=float, default=64.0,
                   help="smaller regions (input px) are not objects (default 64, as the node)")
    p.add_argument("--max-objects", type=int, default=16, help="objects kept per prompt and frame (default 16, "
                                                               "as the node)")
    p.add_argument("--bag-out", help="write a new rosbag2: the input bag plus the node's outputs")
    p.add_argument("--bag-storage", choices=("mcap", "sqlite3"), help="storage of --bag-out (default: the input's)")
    p.add_argument("--replace", action="store_true", help="delete labels made with other settings in --output")
    p.add_argument("--model", default=None, help="hub id or local folder (default: CIDAS/clipseg-rd64-refined)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--batch", type=int, default=1,
                   help="frames per vision pass (default 1: on a 2-core CPU 4 was no faster, 2.29 frames/s both; try more "
                        "on a GPU)")
    p.add_argument("--coco-polygons", action="store_true",
                   help="also write coco_semantic_polygons.json and coco_instances_polygons.json: the masks as "
                        "polygons (Label Studio's COCO importer reads polygons only; holes are filled)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clipseg_ros.core.model.engine import DEFAULT_MODEL, ModelLoadError, SegmentationEngine
    from clipseg_ros.core.prompts.prompt_book import (
        PromptError,
        check_threshold,
        parse_prompt_text,
        thresholds_from_parameter,
    )
    from clipseg_ros.core.prompts.store import StoreCorrupt

    def fail(message: str, code: int = EXIT_INPUT) -> int:
        print(f"clipseg-label: {message}", file=sys.stderr)
        return code

    model = args.model or DEFAULT_MODEL
    try:
        check_threshold("--threshold", args.threshold)
        texts = parse_prompt_text(args.prompts)
        if args.prompts_file:
            texts = list(dict.fromkeys(texts + prompts_from_file(args.prompts_file)))
        thresholds = thresholds_from_parameter(args.prompt_threshold)
        selection = Selection(stride=args.stride, limit=args.limit, start=args.start, end=args.end)
        source = open_source(args.input, args.topics, selection, exclude=args.output)
        if args.bag_out and source.kind != "rosbag":
            raise LabelInputError("--bag-out needs a rosbag2 input")
        replace_bag = bag_out_to_replace(args.bag_out, args.output) if args.bag_out else False
    except (PromptError, LabelInputError, OSError, ValueError) as exc:
        return fail(str(exc))
    try:
        engine = SegmentationEngine.from_pretrained(model, device=args.device, dtype=args.dtype,
                                                    num_threads=args.threads)
    except (ModelLoadError, ValueError) as exc:
        return fail(str(exc))
    try:
        state = load_prompts(engine, texts, args.template, thresholds, args.prompt_store)
    except (PromptError, StoreCorrupt, LabelInputError, OSError) as exc:
        return fail(str(exc))
    names = state.names
    prompt_set = state.prompt_set
    precision = precision_label(engine.precision)
    print(f"clipseg-label: {model} on {engine.device}, precision {engine.precision.describe()}")
    config = RunConfig(model=model, model_id=checkpoint_id(model), precision=precision, device=engine.device.type,
                       prompts=tuple(names), thresholds=prompt_set.thresholds_or(args.threshold),
                       template=state.template, threshold=args.threshold,
                       image_prompts=tuple((i.name, pixels_digest(i.prompt_image))
                                           for i in state.images),
                       probabilities=bool(args.probabilities or args.bag_out),
                       min_object_area=args.min_object_area, max_objects=args.max_objects, refine=args.refine)
    try:
        folder = OutputFolder(args.output, config, replace=args.replace)
    except (OutputConflict, OSError) as exc:
        return fail(str(exc))
    for warning in prompt_set.warnings:
        print(f"clipseg-label: warning: {warning}", file=sys.stderr)
    options = LabelOptions(threshold=args.threshold, min_object_area=args.min_object_area,
                           max_objects=args.max_objects, probabilities=config.probabilities, refine=args.refine)
    labeller = Labeller(engine, state, folder, options, batch=args.batch)
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=source.expected_frames(), unit="frame", desc="labelling", dynamic_ncols=True)
    try:
        report = labeller.run(source, progress)
    finally:
        if progress is not None:
            progress.close()
    records = labeller.done_records  # read from disk, once per pass
    try:
        folder.write_summary(records(), report.skipped, {"input": str(args.input), "kind": source.kind,
                                                       "precision": engine.precision.describe(),
                                                       "device": str(engine.device)})
        if not report.stopped:
            export_coco(folder, records, names, polygons=args.coco_polygons)
            if args.bag_out:
                from clipseg_ros.tools.label_bag import write_enriched_bag

                if replace_bag:  # this folder's own bag from an earlier run of the same command
                    shutil.rmtree(args.bag_out)
                written = write_enriched_bag(Path(args.input), Path(args.bag_out), folder, records, config,
                                             storage=args.bag_storage)
                folder.write_json(BAG_OUT_FILE, {"bag_out": str(Path(args.bag_out).resolve()),
                                                 "metadata_sha256": bag_metadata_digest(Path(args.bag_out))})
                print(f"clipseg-label: wrote {args.bag_out} ({written} output messages added)")
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            return fail(str(exc), 1)
        report.stopped = report.stopped or (f"the disk is full ({exc.strerror}); free some space and run the same "
                                            "command again to resume")
    except LabelInputError as exc:
        return fail(str(exc), 1)
    print(f"clipseg-label: {report.labelled} frames labelled in {report.seconds:.1f} s "
          f"({report.frames_per_second:.2f} frames/s), {report.resumed} already done, "
          f"{len(report.skipped)} skipped -> {folder.root}")
    for skipped in report.skipped:
        print(f"  skipped {skipped['origin']}: {skipped['reason']}")
    if report.stopped:
        print(f"clipseg-label: stopped: {report.stopped}", file=sys.stderr)
        if report.stopped.startswith("interrupted"):
            return EXIT_INTERRUPTED
        return EXIT_FAILING if "in a row failed" in report.stopped else EXIT_DISK_FULL
    return 0


if __name__ == "__main__":
    sys.exit(main())
