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

import inspect
import math
from typing import Sequence

import torch

from clipseg_ros.precision import Precision, quantize_vision_int8


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


class ClipSegNetwork:
    """A loaded ``CLIPSegForImageSegmentation`` (in eval mode, on its device), run part by part:
    one vision pass per frame, all prompts decoded in one batch. ``precision`` says in what
    dtype the encoders and the decoder run, and whether the vision encoder runs int8
    (:mod:`clipseg_ros.precision`); ``dtype`` is the encoders' (and the embeddings')."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: Precision):
        model = model.eval().to(device=device)
        model.clip.to(dtype=precision.encoders)
        model.decoder.to(dtype=precision.decoder)
        if precision.int8_vision:
            quantize_vision_int8(model.clip.vision_model.encoder)
        self.model = model
        self.device = device
        self.precision = precision
        self.dtype = precision.encoders
        self.decoder_dtype = precision.decoder
        cfg = model.config
        self.extract_layers = list(cfg.extract_layers)
        # Layers after the last extracted one only feed the pooled output, which segmentation
        # does not use: skipping them saves ~17% of the vision pass for rd64 (layers 10, 11).
        self.vision_depth = max(self.extract_layers) + 1
        self.projection_dim = int(cfg.projection_dim)
        self.max_text_tokens = int(getattr(cfg.text_config, "max_position_embeddings", 77))
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

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
        stock model takes from ``hidden_states[i + 1]``.
        """
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
