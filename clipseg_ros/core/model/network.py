"""CLIPSeg's forward pass taken apart: the one module that reaches into transformers' internals.

``CLIPSegForImageSegmentation.forward`` needs one query image per prompt, so N prompts on one
frame would run the vision encoder N times. :class:`ClipSegNetwork` calls the parts instead, as
transformers' ``modeling_clipseg.py`` wires them:

    pixel values (B, 3, 352, 352)
      --vision encoder, layers 0..max(extract_layers)--> activations at extract_layers (B, T, hidden)
    text tokens / example pixels --CLIP encoder + projection--> conditional embeddings (N, D)
    activations x embeddings --decoder, batch B*N--> logits (B, N, 352, 352)

Everything here is torch in, torch out, and covered by the equivalence tests against the stock
forward (``test/test_engine.py``). Differences between transformers 4.x and 5.x are absorbed here.
"""

from __future__ import annotations

import copy
import inspect
import math
import threading
from dataclasses import replace
from typing import Sequence

import torch

from clipseg_ros.core.model.precision import Precision, cpu_features, int8_weight_type, quantize_vision_int8


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


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _without_onnx(precision: Precision, exc: Exception) -> Precision:
    """``precision`` with the vision pass back in torch, saying why."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return replace(precision, vision_int8="", reason=f"{precision.reason}; but the onnxruntime export failed "
                   f"({type(exc).__name__}: {first_line}): vision encoder in torch {_name(precision.encoders)}")


class ClipSegNetwork:
    """A loaded ``CLIPSegForImageSegmentation`` (in eval mode, on its device), run part by part:
    one vision pass per frame, all prompts decoded in one batch. ``precision`` says in what
    dtype the encoders and the decoder run, and whether the vision encoder runs int8
    (:mod:`clipseg_ros.core.model.precision`); ``dtype`` is the encoders' (and the embeddings')."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: Precision, *,
                 vision_size: int = 352, cache_dir=None, export_in_background: bool = False):
        """``vision_size``: the square pixel size the onnxruntime graph is exported for;
        ``cache_dir``: where that graph is cached (:func:`clipseg_ros.core.model.onnx_vision.default_cache_dir`);
        ``export_in_background``: on a cache miss, export on a thread while the vision pass runs
        in torch (the node: first masks at once) instead of before returning (tools: the network
        is what its precision says from the first frame)."""
        model = model.eval().to(device=device)
        self.model = model
        self.device = device
        cfg = model.config
        self.extract_layers = list(cfg.extract_layers)
        # Layers after the last extracted one only feed the pooled output, which segmentation
        # does not use: skipping them saves ~17% of the vision pass for rd64 (layers 10, 11).
        self.vision_depth = max(self.extract_layers) + 1
        self.projection_dim = int(cfg.projection_dim)
        self.max_text_tokens = int(getattr(cfg.text_config, "max_position_embeddings", 77))
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.onnx_vision, self.onnx_vision_cached, self._export_thread = None, False, None
        self.onnx_vision_path = None  # where the int8 vision graph is (or will be) cached
        export = None
        if precision.vision_int8 == "onnxruntime":
            precision, export = self._load_onnx_vision(precision, vision_size, cache_dir)
        model.clip.to(dtype=precision.encoders)
        model.decoder.to(dtype=precision.decoder)
        if precision.vision_int8 == "torchao":
            quantize_vision_int8(model.clip.vision_model.encoder)
        self.dtype = precision.encoders
        self.decoder_dtype = precision.decoder
        if export is None:
            self.precision = precision
        elif export_in_background:
            self.precision = replace(precision, reason=f"{precision.reason}; exporting that graph (once per model, "
                                     f"~5 s on 2 cores): the vision encoder runs in torch {_name(precision.encoders)} "
                                     "until then")
            # Not a daemon: a tool that ends during the export waits for it (a daemon thread inside
            # onnxruntime at interpreter exit aborts the process). The node ends with os._exit.
            self._export_thread = threading.Thread(target=self._export_onnx_vision, args=(precision, *export),
                                                   name="onnx_vision_export")
            self._export_thread.start()
        else:
            self._export_onnx_vision(precision, *export)

    def _load_onnx_vision(self, precision: Precision, size: int, cache_dir) -> tuple[Precision, tuple | None]:
        """The onnxruntime int8 vision pass from the cache. On a miss, what the export needs
        (a float32 copy of the model, taken now: this one is about to change dtype). The
        precision without it when neither can be had."""
        from clipseg_ros.core.model.onnx_vision import graph_path, load_cached

        if self.device.type != "cpu":
            return replace(precision, vision_int8="", reason=f"{precision.reason}; onnxruntime int8 runs on CPUs "
                           f"only: vision encoder in torch {_name(precision.encoders)}"), None
        threads = torch.get_num_threads()
        try:
            weights = int8_weight_type(cpu_features())
            path = graph_path(self.model.clip.vision_model, self.vision_depth, self.extract_layers, size, cache_dir,
                              weights)
            self.onnx_vision_path = path
            self.onnx_vision = load_cached(path, threads)
            if self.onnx_vision is not None:
                self.onnx_vision_cached = True
                return precision, None
            return precision, (copy.deepcopy(self.model), path, size, threads, weights)
        except Exception as exc:  # noqa: BLE001 - no cache directory, no memory for the copy, ...
            return _without_onnx(precision, exc), None

    def _export_onnx_vision(self, precision: Precision, float32_model, path, size: int, threads: int,
                            weights: str) -> None:
        """Export, quantise and load the graph; the vision pass switches to it from the next frame.
        On any failure the vision pass stays in torch and the precision says why."""
        from clipseg_ros.core.model.onnx_vision import OnnxVisionPass, export_int8

        try:
            exporter = ClipSegNetwork(float32_model, torch.device("cpu"), Precision("float32", torch.float32, torch.float32))
            export_int8(exporter.model, exporter._encode_pixels_torch, size, path, weights)
            self.onnx_vision = OnnxVisionPass(path, threads)
            self.precision = precision
        except Exception as exc:  # noqa: BLE001 - any export failure: the vision pass stays in torch
            self.precision = _without_onnx(precision, exc)

    def wait_for_vision_graph(self, timeout: float | None = None) -> bool:
        """Wait for a running onnxruntime export (benchmarks, tests); whether none is running."""
        if self._export_thread is not None:
            self._export_thread.join(timeout)
        return self._export_thread is None or not self._export_thread.is_alive()

    @torch.inference_mode()
    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Conditional embeddings (N, D) of tokenised text prompts, in the model's dtype."""
        feats = _pooled(self.model.clip.get_text_features(input_ids=input_ids.to(self.device),
                                                          attention_mask=attention_mask.to(self.device)))
        return feats.to(self.dtype)

    @torch.inference_mode()
    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Conditional embeddings (N, D) of example images ("visual prompts"): CLIP's full vision
        encoder and visual projection, as CLIPSeg does for ``conditional_pixel_values``."""
        pixels = pixel_values.to(device=self.device, dtype=self.dtype)
        return _pooled(self.model.clip.get_image_features(pixel_values=pixels)).to(self.dtype)

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

    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Run the CLIP vision encoder up to the last extracted layer; (B, 3, H, W) in.

        Returns the hidden states after each of ``extract_layers`` (B, T, hidden), i.e. what the
        stock model takes from ``hidden_states[i + 1]`` (float32 from onnxruntime's int8 pass,
        else in the encoders' dtype).
        """
        if self.onnx_vision is not None and pixel_values.shape[-2:] == (self.onnx_vision.size,) * 2:
            return [a.to(self.device) for a in self.onnx_vision(pixel_values)]
        return self._encode_pixels_torch(pixel_values)

    @torch.inference_mode()
    def _encode_pixels_torch(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        vm = self.model.clip.vision_model
        emb = vm.embeddings
        h, w = pixel_values.shape[-2:]
        if h != w or h % emb.patch_size:
            # CLIPSeg's decoder reshapes tokens into a square grid.
            raise ValueError(f"pixel values must be square and a multiple of {emb.patch_size}, got {h}x{w}")
        x = emb.patch_embedding(pixel_values.to(device=self.device, dtype=self.dtype)).flatten(2).transpose(1, 2)
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

    @torch.inference_mode()
    def decode(self, activations: Sequence[torch.Tensor], embeddings: torch.Tensor) -> torch.Tensor:
        """CLIPSeg decoder for every (frame, prompt) pair in one batch.

        ``activations``: from :meth:`encode_pixels`, each (B, T, hidden). ``embeddings``: (N, D).
        Returns raw logits (B, N, 352, 352) in the decoder's dtype.

        Mirrors ``CLIPSegDecoder.forward`` with one saving: the ``reduces`` projections depend
        only on the frame, so they run on B rows and are broadcast over the N prompts instead of
        on B*N repeated rows.
        """
        dec = self.model.decoder
        b = activations[0].shape[0]
        n = embeddings.shape[0]
        activations = [a.to(self.decoder_dtype) for a in activations]  # no-op unless they differ
        cond = embeddings.to(self.decoder_dtype).repeat(b, 1)  # (B*N, D): frame-major, prompt-minor
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
