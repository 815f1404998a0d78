"""CLIPSeg inference engine: model loading, prompt embedding cache, encode once / decode many.

No ROS in here. Numpy in, numpy out (a torch twin, :meth:`SegmentationEngine.predict_logits`,
serves batched callers), following segment-anything's ``SamPredictor``: the expensive image
embedding (the CLIP vision encoder) runs once per frame, the cheap part (CLIPSeg's decoder) runs
once per prompt, batched.

Data flow, as in transformers' ``modeling_clipseg.py``:

    image (H, W, 3) uint8 --preprocess--> pixel values (B, 3, 352, 352)
      --vision encoder, layers 0..max(extract_layers)--> activations at extract_layers (B, T, 768)
    prompts --text / image encoder + projection (cached)--> conditional embeddings (N, 512)
    activations x embeddings --decoder, batch B*N--> logits (B, N, 352, 352)
      --postprocess--> probabilities, masks, label, per-prompt stats

``CLIPSegForImageSegmentation.forward`` needs one query image per prompt, so N prompts on one
frame would run the vision encoder N times; this engine runs it once and reuses the activations.
Logits equal the stock forward within float rounding (tested).
"""

from __future__ import annotations

import inspect
import math
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image as PILImage

from clipseg_ros import postprocess
from clipseg_ros.postprocess import SegmentationResult

DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"
DEFAULT_TEMPLATE = "{}"
# Cached text embeddings kept at most (oldest dropped first), so a robot whose prompts change
# every few seconds for hours does not grow without bound.
TEXT_CACHE_SIZE = 1024
IMAGE_PROMPT_CACHE_SIZE = 64

# torch >= 2.5 has torch.OutOfMemoryError (CUDA's is an alias); older releases only the CUDA one.
OUT_OF_MEMORY_ERRORS = tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
                              torch.cuda.OutOfMemoryError})

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message names the model and what to do."""


class PromptError(ValueError):
    """A prompt set was refused (e.g. a bad template or image); the message says why."""


def check_device_name(device: str) -> str:
    """Normalised device name (auto, cpu, cuda, cuda:<i>); ValueError if it is none of those.
    Only the spelling is checked: whether the device exists is :func:`resolve_device`'s job."""
    name = (device or "auto").strip().lower()
    if name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name):
        return name
    raise ValueError(f"unknown device '{device}' (expected auto, cpu, cuda or cuda:<index>)")


def resolve_device(device: str, fallback_to_cpu: bool = False) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cpu``, ``cuda``, ``cuda:i`` as given.

    Raises ValueError for an unknown name, and for a CUDA device this machine lacks unless
    ``fallback_to_cpu`` (then the CPU is returned; compare ``.type`` to notice).
    """
    name = check_device_name(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if fallback_to_cpu:
            return torch.device("cpu")
        raise ValueError(f"device '{device}' requested but CUDA is not available on this machine")
    dev = torch.device(name)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        if fallback_to_cpu:
            return torch.device("cpu")
        raise ValueError(f"device '{device}': only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float16 on CUDA, float32 on CPU; else ``float32|float16|bfloat16``."""
    name = (dtype or "auto").strip().lower()
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype '{dtype}' (expected auto, float32, float16 or bfloat16)")
    return _DTYPES[name]


def _call_layer(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Run one CLIPSeg encoder/decoder layer on any supported transformers version.

    transformers 4.x layers take ``(hidden, attention_mask, causal_attention_mask)`` and return a
    tuple; 5.x layers take ``(hidden, attention_mask)`` and return the tensor.
    """
    takes_causal = getattr(layer, "_clipseg_takes_causal", None)
    if takes_causal is None:
        takes_causal = "causal_attention_mask" in inspect.signature(layer.forward).parameters
        layer._clipseg_takes_causal = takes_causal
    out = layer(hidden, None, None) if takes_causal else layer(hidden, None)
    return out[0] if isinstance(out, (tuple, list)) else out


def _pooled(features) -> torch.Tensor:
    """``get_text_features``/``get_image_features`` return a tensor in 4.x, a model output in 5.x."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


@dataclass(frozen=True)
class PreprocessConfig:
    """What the checkpoint's image processor does, read from its config."""

    size: tuple[int, int] = (352, 352)  # (height, width)
    rescale_factor: float = 1.0 / 255.0
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resample: int = PILImage.BILINEAR
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def from_image_processor(cls, processor) -> "PreprocessConfig":
        size = getattr(processor, "size", None) or {}
        if hasattr(size, "height"):  # SizeDict in transformers 5.x
            hw = (int(size.height), int(size.width))
        elif isinstance(size, Mapping) and "height" in size:
            hw = (int(size["height"]), int(size["width"]))
        elif isinstance(size, Mapping) and "shortest_edge" in size:
            hw = (int(size["shortest_edge"]),) * 2
        else:
            hw = (352, 352)
        resample = getattr(processor, "resample", PILImage.BILINEAR)
        resample = int(getattr(resample, "value", resample) if resample is not None else PILImage.BILINEAR)
        return cls(
            size=hw,
            rescale_factor=float(getattr(processor, "rescale_factor", 1.0 / 255.0)),
            image_mean=tuple(float(v) for v in getattr(processor, "image_mean", cls.image_mean)),
            image_std=tuple(float(v) for v in getattr(processor, "image_std", cls.image_std)),
            resample=resample,
            do_resize=bool(getattr(processor, "do_resize", True)),
            do_rescale=bool(getattr(processor, "do_rescale", True)),
            do_normalize=bool(getattr(processor, "do_normalize", True)),
        )


def as_rgb_uint8(image: np.ndarray, color_order: str = "rgb") -> np.ndarray:
    """Return an (H, W, 3) RGB uint8 view/copy of ``image``.

    Accepts (H, W) grey, (H, W, 1), (H, W, 3) and (H, W, 4) uint8 arrays in ``rgb`` or ``bgr``
    channel order (alpha is dropped). Raises ValueError for anything else.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 numpy image, got {getattr(image, 'dtype', type(image))}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image of shape {image.shape}")
    image = image[:, :, :3]
    if color_order == "bgr":
        image = image[:, :, ::-1]
    elif color_order != "rgb":
        raise ValueError(f"color_order must be 'rgb' or 'bgr', not {color_order!r}")
    return image


def preprocess_image(image_rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Resize/rescale/normalise one RGB uint8 image exactly like the checkpoint's processor.

    Uses PIL's resize on the uint8 array (what the HF processor does), which matches it to
    <1e-6; cv2's bilinear/area resizes differ by up to 0.9 in normalised units.
    Returns (3, H, W) float32.
    """
    arr = np.ascontiguousarray(image_rgb)
    if cfg.do_resize and arr.shape[:2] != cfg.size:
        arr = np.asarray(PILImage.fromarray(arr).resize((cfg.size[1], cfg.size[0]), resample=cfg.resample))
    out = arr.astype(np.float32)
    if cfg.do_rescale:
        out *= np.float32(cfg.rescale_factor)
    if cfg.do_normalize:
        out -= np.asarray(cfg.image_mean, dtype=np.float32)
        out /= np.asarray(cfg.image_std, dtype=np.float32)
    return out.transpose(2, 0, 1)


@dataclass(frozen=True)
class PromptSet:
    """One consistent, immutable set of prompts and their conditional embeddings.

    ``names[i]`` is the prompt as given (text, or the image prompt's name); ``embeddings`` is
    (N, projection_dim) in the model's dtype and device. Frames are segmented with one PromptSet,
    so a prompt change during inference never mixes sets.
    """

    names: tuple[str, ...]
    embeddings: torch.Tensor | None
    text_count: int = 0
    warnings: tuple[str, ...] = ()
    version: int = 0

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class ImageEmbedding:
    """What the vision encoder produced for a batch of B frames (the expensive part).

    ``activations``: hidden states at the decoder's extract_layers, each (B, T, hidden).
    ``sizes``: the input images' (height, width), for post-processing.
    """

    activations: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    preprocess_ms: float = 0.0
    vision_ms: float = 0.0

    @property
    def batch_size(self) -> int:
        return len(self.sizes)


class SegmentationEngine:
    """Owns one CLIPSeg model and does all the math.

    Typical use::

        engine = SegmentationEngine.from_pretrained("CIDAS/clipseg-rd64-refined")
        prompts = engine.make_prompt_set(["cup", "door handle"])
        result = engine.segment(image_rgb, prompts, threshold=0.4)
        result.masks  # (N, H, W) uint8 probability masks
    """

    def __init__(self, model, tokenizer, preprocess_cfg: PreprocessConfig, *,
                 device: torch.device, dtype: torch.dtype, prompt_template: str = DEFAULT_TEMPLATE,
                 model_name: str = ""):
        self.model = model.eval().to(device=device, dtype=dtype)
        self.tokenizer = tokenizer
        self.preprocess_cfg = preprocess_cfg
        self.device = device
        self.dtype = dtype
        self.model_name = model_name
        self._template = DEFAULT_TEMPLATE
        self.prompt_template = prompt_template

        cfg = model.config
        self.extract_layers = list(cfg.extract_layers)
        # Layers after the last extracted one only feed the pooled output, which segmentation
        # does not use: skipping them saves ~17% of the vision pass for rd64 (layers 10, 11).
        self.vision_depth = max(self.extract_layers) + 1
        self.projection_dim = int(cfg.projection_dim)
        self.max_text_tokens = int(getattr(cfg.text_config, "max_position_embeddings", 77))

        self._lock = threading.Lock()  # guards the caches, not inference
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._image_prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._prompt_version = 0
        self.oom_retries = 0  # batches that ran out of memory and were retried smaller

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
                        num_threads: int = 0, prompt_template: str = DEFAULT_TEMPLATE,
                        local_files_only: bool | None = None) -> "SegmentationEngine":
        """Load a CLIPSeg checkpoint from a hub id or a local directory (safetensors only).

        ``device``: auto|cpu|cuda|cuda:i. ``dtype``: auto|float32|float16|bfloat16.
        ``num_threads``: torch CPU threads (0 = torch's default). Raises ModelLoadError with a
        message naming the model and how to point at a local copy.
        """
        # Imported here so that importing this module (e.g. for PromptSet or preprocessing)
        # does not pay for transformers' import.
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPSegForImageSegmentation
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a node's log is no terminal
        set_num_threads(num_threads)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
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
        return cls(net, tokenizer, pre, device=torch_device, dtype=torch_dtype,
                   prompt_template=prompt_template, model_name=model)

    # ------------------------------------------------------------------ prompts
    @property
    def prompt_template(self) -> str:
        return self._template

    @prompt_template.setter
    def prompt_template(self, template: str) -> None:
        validate_template(template)
        self._template = template

    def _apply_template(self, prompt: str) -> str:
        # str.replace, not str.format: a prompt or template with other braces must not raise.
        return self._template.replace("{}", prompt, 1)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """Conditional embeddings (N, D) for text prompts (template applied), cached per text.

        Texts longer than the text encoder's 77 tokens are truncated, with a warning returned.
        """
        warnings: list[str] = []
        full = [self._apply_template(t) for t in texts]
        with self._lock:
            missing = [t for t in dict.fromkeys(full) if t not in self._text_cache]
        if missing:
            # padding="longest": same pooled embedding as max_length within 2e-6, 2-7x cheaper.
            enc = self.tokenizer(missing, padding="longest", truncation=True,
                                 max_length=self.max_text_tokens, return_tensors="pt",
                                 return_overflowing_tokens=False)
            untruncated = self.tokenizer(missing, padding=False, truncation=False, verbose=False)["input_ids"]
            for text, ids in zip(missing, untruncated):
                if len(ids) > self.max_text_tokens:
                    warnings.append(f"prompt '{_ellipsize(text)}' has {len(ids)} tokens; truncated to "
                                    f"{self.max_text_tokens} (CLIP's text limit)")
            feats = _pooled(self.model.clip.get_text_features(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=enc["attention_mask"].to(self.device)))
            with self._lock:
                for text, emb in zip(missing, feats):
                    self._text_cache[text] = emb.to(self.dtype)
                    self._text_cache.move_to_end(text)
                while len(self._text_cache) > TEXT_CACHE_SIZE:
                    self._text_cache.popitem(last=False)
        with self._lock:
            embs = [self._text_cache[t] for t in full]
            for t in full:
                self._text_cache.move_to_end(t)
        if not embs:
            return torch.empty((0, self.projection_dim), device=self.device, dtype=self.dtype), warnings
        return torch.stack(embs), warnings

    @torch.inference_mode()
    def embed_image_prompt(self, name: str, image: np.ndarray | None = None,
                           color_order: str = "rgb") -> torch.Tensor:
        """Conditional embedding (D,) of an example image ("visual prompt"), cached by ``name``.

        With ``image`` given, (re)computes and caches it; without, returns the cached one
        (KeyError if unknown). The example is preprocessed like a query image and passed through
        CLIP's full vision encoder and visual projection, as CLIPSeg does for
        ``conditional_pixel_values``.
        """
        if image is None:
            with self._lock:
                return self._image_prompt_cache[name]
        try:
            rgb = as_rgb_uint8(image, color_order)
        except ValueError as exc:
            raise PromptError(f"image prompt '{name}': {exc}") from exc
        pixels = torch.from_numpy(preprocess_image(rgb, self.preprocess_cfg))[None]
        emb = _pooled(self.model.clip.get_image_features(
            pixel_values=pixels.to(device=self.device, dtype=self.dtype)))[0].to(self.dtype)
        with self._lock:
            self._image_prompt_cache[name] = emb
            self._image_prompt_cache.move_to_end(name)
            while len(self._image_prompt_cache) > IMAGE_PROMPT_CACHE_SIZE:
                self._image_prompt_cache.popitem(last=False)
        return emb

    def make_prompt_set(self, texts: Sequence[str] = (),
                        image_prompts: Mapping[str, np.ndarray | None] | None = None,
                        color_order: str = "rgb") -> PromptSet:
        """Build an immutable :class:`PromptSet` from text prompts and named example images.

        ``image_prompts`` maps name -> (H, W, 3) uint8 image, or -> None to reuse a cached one.
        Order: text prompts first, then image prompts. Raises PromptError for a bad image.
        """
        texts = [str(t) for t in texts]
        text_emb, warnings = self.embed_texts(texts) if texts else (None, [])
        image_embs, image_names = [], []
        for name, img in (image_prompts or {}).items():
            try:
                image_embs.append(self.embed_image_prompt(name, img, color_order))
            except KeyError as exc:
                raise PromptError(f"image prompt '{name}' is not known: send its image first") from exc
            image_names.append(name)
        parts = [t for t in (text_emb, torch.stack(image_embs) if image_embs else None) if t is not None]
        embeddings = torch.cat(parts) if parts else None
        with self._lock:
            self._prompt_version += 1
            version = self._prompt_version
        return PromptSet(names=tuple(texts) + tuple(image_names), embeddings=embeddings,
                         text_count=len(texts), warnings=tuple(warnings), version=version)

    # ------------------------------------------------------------------ encode once
    def _position_embeddings(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings for a (grid_h x grid_w) patch grid, bicubically interpolated
        from the checkpoint's 224-px grid exactly as transformers does, cached per size
        (the interpolation costs ~3 ms per call)."""
        key = (grid_h, grid_w)
        pos = self._pos_cache.get(key)
        if pos is None:
            emb = self.model.clip.vision_model.embeddings
            patch = emb.patch_size
            dummy = torch.empty((1, grid_h * grid_w + 1, emb.embed_dim), device=self.device, dtype=self.dtype)
            pos = emb.interpolate_pos_encoding(dummy, grid_h * patch, grid_w * patch)
            self._pos_cache[key] = pos
        return pos

    def preprocess(self, images: Sequence[np.ndarray], color_order: str = "rgb") -> torch.Tensor:
        """(B, 3, 352, 352) pixel values, in the model's dtype and on its device."""
        arrays = [preprocess_image(as_rgb_uint8(im, color_order), self.preprocess_cfg) for im in images]
        return torch.from_numpy(np.stack(arrays)).to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Run the CLIP vision encoder up to the last extracted layer; (B, 3, H, W) in.

        Returns the hidden states after each of ``extract_layers`` (B, T, hidden), i.e. what the
        stock model takes from ``hidden_states[i + 1]``.
        """
        vm = self.model.clip.vision_model
        emb = vm.embeddings
        h, w = pixel_values.shape[-2:]
        if h != w or h % emb.patch_size:
            # CLIPSeg's decoder reshapes tokens into a square grid.
            raise ValueError(f"pixel values must be square and a multiple of {emb.patch_size}, got {h}x{w}")
        x = emb.patch_embedding(pixel_values.to(dtype=self.dtype)).flatten(2).transpose(1, 2)
        cls_tok = emb.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_tok, x], dim=1) + self._position_embeddings(h // emb.patch_size, w // emb.patch_size)
        x = vm.pre_layrnorm(x)
        wanted = set(self.extract_layers)
        activations = []
        for i, layer in enumerate(vm.encoder.layers[: self.vision_depth]):
            x = _call_layer(layer, x)
            if i in wanted:
                activations.append(x)
        return activations

    def encode(self, images: Sequence[np.ndarray], color_order: str = "rgb") -> ImageEmbedding:
        """Preprocess and encode B frames (any sizes) in one batched vision pass."""
        t0 = time.perf_counter()
        pixels = self.preprocess(images, color_order)
        t1 = time.perf_counter()
        acts = self.encode_pixels(pixels)
        _sync(self.device)
        t2 = time.perf_counter()
        return ImageEmbedding(activations=acts, sizes=[im.shape[:2] for im in images],
                              preprocess_ms=(t1 - t0) * 1e3, vision_ms=(t2 - t1) * 1e3)

    # ------------------------------------------------------------------ decode many
    @torch.inference_mode()
    def decode(self, activations: Sequence[torch.Tensor], embeddings: torch.Tensor) -> torch.Tensor:
        """CLIPSeg decoder for every (frame, prompt) pair in one batch.

        ``activations``: from :meth:`encode_pixels`, each (B, T, hidden). ``embeddings``: (N, D).
        Returns raw logits (B, N, 352, 352) in the model's dtype.

        Mirrors ``CLIPSegDecoder.forward`` with one saving: the ``reduces`` projections depend
        only on the frame, so they run on B rows and are broadcast over the N prompts instead of
        on B*N repeated rows.
        """
        dec = self.model.decoder
        b = activations[0].shape[0]
        n = embeddings.shape[0]
        cond = embeddings.to(self.dtype).repeat(b, 1)  # (B*N, D): frame-major, prompt-minor
        output = None
        for i, (act, layer, reduce) in enumerate(zip(activations[::-1], dec.layers, dec.reduces)):
            reduced = reduce(act)  # (B, T, R)
            if output is None:
                output = reduced.repeat_interleave(n, dim=0)
            else:
                output = (output.view(b, n, *output.shape[1:]) + reduced[:, None]).flatten(0, 1)
            if i == dec.conditional_layer:
                output = dec.film_mul(cond)[:, None, :] * output + dec.film_add(cond)[:, None, :]
            output = _call_layer(layer, output)
        tokens = output[:, 1:, :].transpose(1, 2)  # drop CLS -> (B*N, R, T-1)
        side = int(math.isqrt(tokens.shape[2]))
        grid = tokens.reshape(b * n, tokens.shape[1], side, side)
        logits = dec.transposed_convolution(grid)  # (B*N, 1, S, S)
        return logits.reshape(b, n, *logits.shape[-2:])

    def predict_logits(self, pixel_values: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Torch twin for batched callers: (B, 3, 352, 352) pixels x (N, D) embeddings ->
        (B, N, 352, 352) raw logits. One vision pass for all N prompts."""
        return self.decode(self.encode_pixels(pixel_values), embeddings)

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
        decoder batch. An empty prompt set returns valid empty results without a model call."""
        if output_size not in ("input", "model"):
            raise ValueError(f"output_size must be 'input' or 'model', not {output_size!r}")
        if len(prompts) == 0 or prompts.embeddings is None:
            for im in images:
                as_rgb_uint8(im, color_order)  # still refuse bad images
            return [postprocess.empty_result(im.shape[:2], threshold) for im in images]
        t0 = time.perf_counter()
        try:
            sizes, logits, pre_ms, vision_ms, dec_ms = self._infer(images, prompts.embeddings, color_order)
        except OUT_OF_MEMORY_ERRORS:
            retry = True  # retried outside the handler: the traceback pins the failed tensors
        else:
            retry = False
        if retry:
            # Free the cached blocks of the failed attempt, then once more in smaller batches:
            # one frame at a time, prompts through the decoder in halves. A second OOM raises.
            self.release_cache()
            self.oom_retries += 1
            half = max(1, (len(prompts) + 1) // 2)
            parts = [self._infer([im], prompts.embeddings, color_order, prompt_chunk=half) for im in images]
            sizes = [size for part in parts for size in part[0]]
            logits = torch.cat([part[1] for part in parts])
            pre_ms, vision_ms, dec_ms = (sum(part[k] for part in parts) for k in (2, 3, 4))
        t2 = time.perf_counter()
        results = []
        for k, size in enumerate(sizes):
            results.append(postprocess.postprocess_logits(
                logits[k], list(prompts.names), size, threshold=threshold,
                output_size=None if output_size == "input" else logits.shape[-2:]))
        t3 = time.perf_counter()
        total = (t3 - t0) * 1e3
        for r in results:
            r.timings_ms = {"preprocess": pre_ms, "vision": vision_ms, "decoder": dec_ms,
                            "post": (t3 - t2) * 1e3, "total": total}
            r.prompt_version = prompts.version
        return results

    def _infer(self, images: Sequence[np.ndarray], embeddings: torch.Tensor, color_order: str,
               prompt_chunk: int | None = None):
        """Vision pass + decoder: (sizes, logits (B, N, S, S), preprocess, vision, decoder ms).
        ``prompt_chunk`` decodes the prompts in slices of that many (less peak memory)."""
        embedding = self.encode(images, color_order)
        t1 = time.perf_counter()
        with torch.inference_mode():
            if prompt_chunk is None or prompt_chunk >= embeddings.shape[0]:
                logits = self.decode(embedding.activations, embeddings)
            else:
                logits = torch.cat([self.decode(embedding.activations, embeddings[i:i + prompt_chunk])
                                    for i in range(0, embeddings.shape[0], prompt_chunk)], dim=1)
            _sync(self.device)
        dec_ms = (time.perf_counter() - t1) * 1e3
        return embedding.sizes, logits, embedding.preprocess_ms, embedding.vision_ms, dec_ms

    def release_cache(self) -> None:
        """Return the CUDA caching allocator's free blocks to the driver (no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def validate_template(template: str) -> None:
    """A prompt template must contain exactly one ``{}`` where the prompt goes."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise PromptError(f"prompt template must contain '{{}}' exactly once, got {template!r}")


def set_num_threads(num_threads: int) -> None:
    """Set torch's intra-op CPU threads; 0 keeps torch's default. Negative raises ValueError."""
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")
    if num_threads > 0 and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)


def _sync(device: torch.device) -> None:
    # Honest stage timings on CUDA need the queued kernels to finish.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ellipsize(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
