"""CLIPSeg inference engine: loading, prompt embedding, batched segmentation, OOM retry, timings.

No ROS in here. Numpy in, numpy out (a torch twin, :meth:`SegmentationEngine.predict_logits`,
serves batched callers), following segment-anything's ``SamPredictor``: the expensive image
embedding (the CLIP vision encoder) runs once per frame, the cheap part (CLIPSeg's decoder) runs
once per prompt, batched. The parts:

- :mod:`clipseg_ros.core.model.preprocessing`: images -> pixel values, exactly as the checkpoint's processor;
- :mod:`clipseg_ros.core.model.device`: device and dtype choice;
- :mod:`clipseg_ros.core.model.network`: every call into transformers' CLIPSeg internals;
- :mod:`clipseg_ros.core.results.postprocess`: logits -> probabilities, masks, label, stats.

Prompts are embedded here (:meth:`embed_texts`, :meth:`embed_image`); which prompts are active is
:mod:`clipseg_ros.core.prompts.prompt_book`' business. Logits equal the stock forward within float rounding (tested).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from clipseg_ros.core.model.device import (
    OUT_OF_MEMORY_ERRORS,
    release_cache,
    resolve_device,
    set_num_threads,
    synchronize,
)
from clipseg_ros.core.model.network import ClipSegNetwork
from clipseg_ros.core.model.precision import Precision, choose_precision, quiet_torchao_import
from clipseg_ros.core.model.preprocessing import PreprocessConfig, as_rgb_uint8, preprocess_batch
from clipseg_ros.core.prompts.prompt_book import PromptError, PromptSet
from clipseg_ros.core.results import postprocess
from clipseg_ros.core.results.postprocess import SegmentationResult

DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"
# Cached text embeddings kept at most (oldest dropped first), so a robot whose prompts change
# every few seconds for hours does not grow without bound.
TEXT_CACHE_SIZE = 1024


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message names the model and what to do."""


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or infinite logits (e.g. an fp16 overflow on a GPU): the frames of
    that batch cannot be segmented."""


@dataclass(frozen=True)
class ImageEmbedding:
    """What the vision encoder produced for a batch of B frames (the expensive part).

    ``activations``: hidden states at the decoder's extract_layers, each (B, T, hidden).
    ``sizes``: the input images' (height, width), for post-processing.
    """

    activations: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    preprocess_ms: float = 0.0
    vision_ms: float = 0.0


@dataclass(frozen=True)
class InferenceOutput:
    """Vision pass + decoder for B frames and N prompts: raw logits (B, N, S, S), the frames'
    (height, width), and how long each stage took."""

    logits: torch.Tensor
    sizes: list[tuple[int, int]]
    preprocess_ms: float
    vision_ms: float
    decoder_ms: float

    @staticmethod
    def concatenate(parts: Sequence["InferenceOutput"]) -> "InferenceOutput":
        return InferenceOutput(logits=torch.cat([p.logits for p in parts]),
                               sizes=[s for p in parts for s in p.sizes],
                               preprocess_ms=sum(p.preprocess_ms for p in parts),
                               vision_ms=sum(p.vision_ms for p in parts),
                               decoder_ms=sum(p.decoder_ms for p in parts))


@dataclass(frozen=True)
class InferredBatch:
    """:meth:`SegmentationEngine.infer_batch`'s output, for :meth:`~SegmentationEngine.finish_batch`:
    the model's logits (None for an empty prompt set), the frames' (height, width), and the
    model's part of the time (ms, vision + decoder + its checks)."""

    output: InferenceOutput | None
    sizes: list[tuple[int, int]]
    model_ms: float


def check_output_size(output_size: str) -> None:
    if output_size not in ("input", "model"):
        raise ValueError(f"output_size must be 'input' or 'model', not {output_size!r}")


class SegmentationEngine:
    """Owns one CLIPSeg model and does all the math.

    Typical use::

        engine = SegmentationEngine.from_pretrained("CIDAS/clipseg-rd64-refined")
        prompts = engine.make_prompt_set(["cup", "door handle"])
        result = engine.segment(image_rgb, prompts, threshold=0.4)
        result.masks  # (N, H, W) uint8 probability masks
    """

    def __init__(self, model, tokenizer, preprocess_cfg: PreprocessConfig, *,
                 device: torch.device, precision: Precision, export_in_background: bool = False):
        self.network = ClipSegNetwork(model, device, precision, vision_size=preprocess_cfg.size[0],
                                      export_in_background=export_in_background)
        self.tokenizer = tokenizer
        self.preprocess_cfg = preprocess_cfg
        self.device = device
        self.dtype = self.network.dtype  # of the encoders, the embeddings and the pixel values
        self._text_cache_lock = threading.Lock()
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.oom_retries = 0  # batches that ran out of memory and were retried smaller

    @property
    def precision(self) -> Precision:
        """The precision as it runs now (an int8 graph still being exported, or one that failed,
        says so)."""
        return self.network.precision

    @property
    def model(self) -> torch.nn.Module:
        """The underlying ``CLIPSegForImageSegmentation``."""
        return self.network.model

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
                        num_threads: int = 0, local_files_only: bool | None = None,
                        export_in_background: bool = False) -> "SegmentationEngine":
        """Load a CLIPSeg checkpoint from a hub id or a local directory (safetensors only).

        ``device``: auto|cpu|cuda|cuda:i. ``dtype``: auto|float32|bfloat16|float16|int8 (see
        :mod:`clipseg_ros.core.model.precision`: ``auto`` follows the device and the CPU's features).
        ``num_threads``: torch CPU threads (0 = torch's default). ``export_in_background``: see
        :class:`~clipseg_ros.core.model.network.ClipSegNetwork` (int8 with onnxruntime, first use of a
        model only). Raises ModelLoadError with a
        message naming the model and how to point at a local copy.
        """
        quiet_torchao_import()
        # Imported here so that importing this module does not pay for transformers' import.
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPSegForImageSegmentation
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a node's log is no terminal
        set_num_threads(num_threads)
        torch_device = resolve_device(device)
        precision = choose_precision(dtype, torch_device)
        is_local = os.path.isdir(os.path.expanduser(model))
        source = os.path.expanduser(model) if is_local else model
        looks_like_path = model.startswith(("/", ".", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model)
        if looks_like_path and not is_local:  # hub ids are "name" or "owner/name"
            raise ModelLoadError(f"cannot load CLIPSeg model: local directory '{source}' does not exist. "
                                 "Set model to a directory saved with save_pretrained, or to a hub id.")
        kwargs = {}
        if local_files_only is not None:
            kwargs["local_files_only"] = local_files_only
        try:
            net = CLIPSegForImageSegmentation.from_pretrained(source, use_safetensors=True, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            try:
                processor = AutoImageProcessor.from_pretrained(source, **kwargs)
                pre = PreprocessConfig.from_image_processor(processor)
            except (OSError, ValueError, ImportError):
                # Some exported checkpoints lack preprocessor_config.json: CLIPSeg's defaults.
                pre = PreprocessConfig()
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
            where = f"local directory '{source}'" if is_local else f"hub id '{model}'"
            hint = (
                "Check that it holds a CLIPSeg checkpoint saved with save_pretrained "
                "(config.json, model.safetensors, tokenizer files)."
                if is_local else
                "If this machine is offline, download the checkpoint elsewhere (e.g. "
                f"`hf download {model} --local-dir DIR`), copy DIR here and set model to DIR."
            )
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load CLIPSeg model from {where}: {first_line}. {hint}") from exc
        if getattr(net.config, "model_type", "") != "clipseg":
            raise ModelLoadError(f"model '{model}' is a '{net.config.model_type}' checkpoint, not CLIPSeg")
        return cls(net, tokenizer, pre, device=torch_device, precision=precision,
                   export_in_background=export_in_background)

    # ------------------------------------------------------------------ prompt embeddings
    def embed_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """Conditional embeddings (N, D) of text prompts (used as given: templates are applied by
        the caller), cached per text; and warnings (texts over CLIP's 77 tokens are truncated)."""
        warnings: list[str] = []
        texts = [str(t) for t in texts]
        with self._text_cache_lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            limit = self.network.max_text_tokens
            # padding="longest": same pooled embedding as max_length within 2e-6, 2-7x cheaper.
            enc = self.tokenizer(missing, padding="longest", truncation=True, max_length=limit,
                                 return_tensors="pt", return_overflowing_tokens=False)
            untruncated = self.tokenizer(missing, padding=False, truncation=False, verbose=False)["input_ids"]
            for text, ids in zip(missing, untruncated):
                if len(ids) > limit:
                    warnings.append(f"prompt '{_ellipsize(text)}' has {len(ids)} tokens; truncated to "
                                    f"{limit} (CLIP's text limit)")
            feats = self.network.text_embeddings(enc["input_ids"], enc["attention_mask"])
            with self._text_cache_lock:
                for text, emb in zip(missing, feats):
                    self._text_cache[text] = emb
                    self._text_cache.move_to_end(text)
                while len(self._text_cache) > TEXT_CACHE_SIZE:
                    self._text_cache.popitem(last=False)
        with self._text_cache_lock:
            embs = [self._text_cache[t] for t in texts]
            for t in texts:
                self._text_cache.move_to_end(t)
        if not embs:
            return torch.empty((0, self.network.projection_dim), device=self.device, dtype=self.dtype), warnings
        return torch.stack(embs), warnings

    def clear_text_cache(self) -> None:
        with self._text_cache_lock:
            self._text_cache.clear()

    def embed_image(self, image: np.ndarray, color_order: str = "rgb") -> torch.Tensor:
        """Conditional embedding (D,) of an example image ("visual prompt"): one full CLIP vision
        pass. Not cached: the caller decides what to keep (see :class:`clipseg_ros.core.prompts.prompt_book.PromptBook`).
        Raises PromptError for an image that is not (H, W[, 1|3|4]) uint8."""
        try:
            pixels = preprocess_batch([image], self.preprocess_cfg, color_order)
        except ValueError as exc:
            raise PromptError(str(exc)) from exc
        return self.network.image_embeddings(torch.from_numpy(pixels))[0]

    def make_prompt_set(self, texts: Sequence[str] = (), images: Mapping[str, np.ndarray] | None = None,
                        color_order: str = "rgb") -> PromptSet:
        """A :class:`PromptSet` from text prompts (used as given) and named example images, text
        first. For scripts and benchmarks; the node keeps its prompts in a PromptBook."""
        text_emb, warnings = self.embed_texts(texts)
        image_embs = []
        for name, img in (images or {}).items():
            try:
                image_embs.append(self.embed_image(img, color_order))
            except PromptError as exc:
                raise PromptError(f"image prompt '{name}': {exc}") from exc
        embeddings = torch.cat([text_emb, torch.stack(image_embs)]) if image_embs else text_emb
        return PromptSet(names=tuple(str(t) for t in texts) + tuple(images or {}),
                         embeddings=embeddings if len(embeddings) else None, warnings=tuple(warnings))

    # ------------------------------------------------------------------ encode once, decode many
    def preprocess(self, images: Sequence[np.ndarray], color_order: str = "rgb") -> torch.Tensor:
        """(B, 3, 352, 352) float32 pixel values on the model's device. Each vision pass casts
        them to what it runs in; onnxruntime's int8 graph takes float32 (rounding them to bf16
        first, under auto on a bf16 CPU, changed the last layer by 0.70% on the tiny model)."""
        pixels = preprocess_batch(images, self.preprocess_cfg, color_order)
        return torch.from_numpy(pixels).to(device=self.device, dtype=torch.float32)

    def encode(self, images: Sequence[np.ndarray], color_order: str = "rgb") -> ImageEmbedding:
        """Preprocess and encode B frames (any sizes) in one batched vision pass."""
        t0 = time.perf_counter()
        pixels = self.preprocess(images, color_order)
        t1 = time.perf_counter()
        acts = self.network.encode_pixels(pixels)
        synchronize(self.device)
        t2 = time.perf_counter()
        return ImageEmbedding(activations=acts, sizes=[im.shape[:2] for im in images],
                              preprocess_ms=(t1 - t0) * 1e3, vision_ms=(t2 - t1) * 1e3)

    def decode(self, activations: Sequence[torch.Tensor], embeddings: torch.Tensor) -> torch.Tensor:
        """Logits (B, N, S, S) for every (frame, prompt) pair: see :meth:`ClipSegNetwork.decode`."""
        return self.network.decode(activations, embeddings)

    def predict_logits(self, pixel_values: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Torch twin for batched callers: (B, 3, 352, 352) pixels x (N, D) embeddings ->
        (B, N, 352, 352) raw logits. One vision pass for all N prompts."""
        return self.decode(self.network.encode_pixels(pixel_values), embeddings)

    # ------------------------------------------------------------------ numpy front end
    def segment(self, image: np.ndarray, prompts: PromptSet, *, threshold: float = 0.4,
                output_size: str = "input", color_order: str = "rgb") -> SegmentationResult:
        """Segment one (H, W, 3) uint8 image for every prompt in ``prompts``.

        ``output_size``: ``input`` (masks at H x W) or ``model`` (352 x 352; stats still in
        input pixels). Returns a :class:`SegmentationResult` of numpy arrays.
        """
        return self.segment_batch([image], prompts, threshold=threshold, output_size=output_size,
                                  color_order=color_order)[0]

    def segment_batch(self, images: Sequence[np.ndarray], prompts: PromptSet, *, threshold: float = 0.4,
                      output_size: str = "input", color_order: str = "rgb") -> list[SegmentationResult]:
        """Segment B images (e.g. one per camera, any sizes) with one vision pass and one
        decoder batch. ``threshold`` is the default for prompts without their own (see
        :attr:`PromptSet.thresholds`). An empty prompt set returns valid empty results without a
        model call. The same as :meth:`finish_batch` of :meth:`infer_batch` (a pipelined caller
        runs the two on different threads).
        Raises NonFiniteLogitsError when the model's output holds NaN or inf."""
        check_output_size(output_size)
        return self.finish_batch(self.infer_batch(images, prompts, color_order), prompts, threshold=threshold,
                                 output_size=output_size)

    def infer_batch(self, images: Sequence[np.ndarray], prompts: PromptSet,
                    color_order: str = "rgb") -> "InferredBatch":
        """The model's part of :meth:`segment_batch`: vision pass and decoder (retried in smaller
        batches after an out-of-memory error), and the check for NaN/inf logits."""
        if len(prompts) == 0 or prompts.embeddings is None:
            for im in images:
                as_rgb_uint8(im, color_order)  # still refuse bad images
            return InferredBatch(None, [im.shape[:2] for im in images], 0.0)
        t0 = time.perf_counter()
        try:
            out = self._infer(images, prompts.embeddings, color_order)
        except OUT_OF_MEMORY_ERRORS:
            out = None  # retried outside the handler: the traceback pins the failed tensors
        if out is None:
            # Free the cached blocks of the failed attempt, then once more in smaller batches:
            # one frame at a time, prompts through the decoder in halves. A second OOM raises.
            self.release_cache()
            self.oom_retries += 1
            half = max(1, (len(prompts) + 1) // 2)
            out = InferenceOutput.concatenate(
                [self._infer([im], prompts.embeddings, color_order, prompt_chunk=half) for im in images])
        bad = [k for k in range(out.logits.shape[0]) if not bool(torch.isfinite(out.logits[k]).all())]
        if bad:
            raise NonFiniteLogitsError(f"the model produced NaN/inf logits for {len(bad)} of {len(images)} "
                                       f"frame(s) (precision {self.precision.name}; float32 avoids overflow)")
        return InferredBatch(out, out.sizes, (time.perf_counter() - t0) * 1e3)

    @staticmethod
    def finish_batch(inferred: "InferredBatch", prompts: PromptSet, *, threshold: float = 0.4,
                     output_size: str = "input") -> list[SegmentationResult]:
        """Post-processing of :meth:`infer_batch`'s output (no model call: any thread may run it
        while the model works on the next batch): probabilities, masks, label and stats per
        frame, with the timings of every stage (``total`` = the model's part + this)."""
        check_output_size(output_size)
        out = inferred.output
        if out is None:
            return [postprocess.empty_result(size, threshold) for size in inferred.sizes]
        t2 = time.perf_counter()
        thresholds = prompts.thresholds_or(threshold)
        results = [postprocess.postprocess_logits(out.logits[k], prompts.names, size, threshold=threshold,
                                                  thresholds=thresholds,
                                                  output_size=None if output_size == "input" else out.logits.shape[-2:])
                   for k, size in enumerate(out.sizes)]
        post_ms = (time.perf_counter() - t2) * 1e3
        for r in results:
            r.timings_ms = {"preprocess": out.preprocess_ms, "vision": out.vision_ms, "decoder": out.decoder_ms,
                            "post": post_ms, "total": inferred.model_ms + post_ms}
        return results

    def _infer(self, images: Sequence[np.ndarray], embeddings: torch.Tensor, color_order: str,
               prompt_chunk: int | None = None) -> InferenceOutput:
        """Vision pass + decoder. ``prompt_chunk`` decodes the prompts in slices of that many
        (less peak memory)."""
        embedding = self.encode(images, color_order)
        t1 = time.perf_counter()
        if prompt_chunk is None or prompt_chunk >= embeddings.shape[0]:
            logits = self.decode(embedding.activations, embeddings)
        else:
            logits = torch.cat([self.decode(embedding.activations, embeddings[i:i + prompt_chunk])
                                for i in range(0, embeddings.shape[0], prompt_chunk)], dim=1)
        synchronize(self.device)
        return InferenceOutput(logits=logits, sizes=embedding.sizes, preprocess_ms=embedding.preprocess_ms,
                               vision_ms=embedding.vision_ms, decoder_ms=(time.perf_counter() - t1) * 1e3)

    def release_cache(self) -> None:
        """Return the CUDA caching allocator's free blocks to the driver (no-op on CPU)."""
        release_cache(self.device)


def _ellipsize(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
