"""A tiny CLIPSeg whose weights are set by hand so that its answer is known: for every prompt,
logits are about +8 on the 16 px patches of the 352x352 input that are red and about -8 on all
others. A patch is red when, on its mean colour, R - max(G, B) > 127.5 (0-255 units).

Written with ``save_pretrained`` and loaded through the engine's real loading code, it gives the
block masks of the real model's worst case (a patch is in or out as a whole) through every stage
of the node: refinement, objects, 3D, clouds and propagation can then be checked against the
truth of a synthetic scene to a pixel. The prompt has no effect (FiLM is the identity).

How it computes (stock ``CLIPSegForImageSegmentation`` forward, no code of ours):
- the patch convolution writes ``a = (R - G)/255 - 1/2`` and ``b = (R - B)/255 - 1/2`` (patch
  means, from the normalised pixels: the processor's mean/std are undone in the weights) as the
  channel pairs ``+a, -a, +b, -b``; a position embedding that is the same everywhere adds the
  constant terms and a constant pair ``+c, -c``. Opposite pairs keep every LayerNorm's mean at 0,
  so a LayerNorm only divides by a positive number: signs survive.
- every vision layer adds nothing to those channels (its ``out_proj`` and ``fc2`` rows for them
  are 0); the other channels stay random, so the quantisers still see real work.
- the decoder reads them (``reduces``), FiLM is the identity, the first decoder layer's ReLU MLP
  writes ``+-50 min(a, b)``, its post-LayerNorm makes that a soft sign, and the plain transposed
  convolution (kernel = stride = 16) turns each token into one constant 16x16 block of logits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from clipseg_ros.core.model.precision import quiet_torchao_import
from clipseg_ros.core.model.random_checkpoint import UNTRAINED_MARKER, byte_level_vocab, make_tokenizer

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
LOGIT = 8.0  # the logit's size on a clearly red or clearly not-red patch


def is_red(rgb_mean) -> bool:
    """The checkpoint's rule for one patch's mean colour (R, G, B) in 0-255."""
    r, g, b = (float(v) for v in rgb_mean)
    return r - max(g, b) > 127.5


def known_answer_config():
    """Tiny CLIPSeg: vision hidden 32, patch 16, 4 layers, extract_layers [1, 2], reduce_dim 16,
    ReLU decoder MLP, plain transposed convolution."""
    from transformers import CLIPSegConfig

    vocab = len(byte_level_vocab())
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                  image_size=224, patch_size=16)
    return CLIPSegConfig(text_config=text, vision_config=vision, projection_dim=16, extract_layers=[1, 2],
                         reduce_dim=16, decoder_num_attention_heads=2, decoder_intermediate_size=32,
                         decoder_hidden_act="relu", conditional_layer=0, use_complex_transposed_convolution=False)


@torch.no_grad()
def set_known_answer_weights(model) -> None:
    """Overwrite ``model``'s weights (a :func:`known_answer_config` CLIPSeg) as the module doc says."""
    vision = model.clip.vision_model
    emb = vision.embeddings
    patch = emb.patch_embedding.weight  # (hidden, 3, 16, 16)
    pixels = patch.shape[2] * patch.shape[3]
    patch.zero_()
    # a patch mean of (value/255) per colour: x_c * std_c + mean_c, with x_c the normalised pixel
    unit = [s / pixels for s in IMAGE_STD]
    for sign, channel in ((1.0, 0), (-1.0, 1)):  # +-a, a = R - G - 1/2 (in 0-1 units)
        patch[channel, 0] = sign * unit[0]
        patch[channel, 1] = -sign * unit[1]
    for sign, channel in ((1.0, 2), (-1.0, 3)):  # +-b, b = R - B - 1/2
        patch[channel, 0] = sign * unit[0]
        patch[channel, 2] = -sign * unit[2]
    const_a = IMAGE_MEAN[0] - IMAGE_MEAN[1] - 0.5
    const_b = IMAGE_MEAN[0] - IMAGE_MEAN[2] - 0.5
    position = torch.zeros_like(emb.position_embedding.weight)
    position[:, 0], position[:, 1] = const_a, -const_a
    position[:, 2], position[:, 3] = const_b, -const_b
    position[:, 4], position[:, 5] = 1.0, -1.0  # the constant pair: a LayerNorm never divides by ~0
    emb.position_embedding.weight.copy_(position)
    emb.class_embedding.zero_()
    read = list(range(6))
    vision.pre_layrnorm.weight.fill_(1.0)
    vision.pre_layrnorm.bias.zero_()
    for layer in vision.encoder.layers:  # pass channels 0-5 through every layer unchanged
        layer.self_attn.out_proj.weight[read] = 0.0
        layer.self_attn.out_proj.bias[read] = 0.0
        layer.mlp.fc2.weight[read] = 0.0
        layer.mlp.fc2.bias[read] = 0.0

    decoder = model.decoder
    first, second = decoder.reduces
    first.weight.zero_()
    first.bias.zero_()
    for channel in read:
        first.weight[channel, channel] = 1.0
    second.weight.zero_()  # the second activation adds nothing
    second.bias.zero_()
    decoder.film_mul.weight.zero_()
    decoder.film_mul.bias.fill_(1.0)
    decoder.film_add.weight.zero_()
    decoder.film_add.bias.zero_()
    for index, layer in enumerate(decoder.layers):
        layer.self_attn.out_proj.weight.zero_()
        layer.self_attn.out_proj.bias.zero_()
        for norm in (layer.layer_norm1, layer.layer_norm2):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        fc1, fc2 = layer.mlp.fc1, layer.mlp.fc2
        fc1.weight.zero_()
        fc1.bias.zero_()
        fc2.weight.zero_()
        fc2.bias.zero_()
        if index == 0:
            # hidden units relu(a), relu(-a), relu(a - b): min(a, b) = relu(a) - relu(-a) - relu(a - b)
            fc1.weight[0, 0] = 1.0
            fc1.weight[1, 0] = -1.0
            fc1.weight[2, 0], fc1.weight[2, 2] = 1.0, -1.0
            for out, sign in ((6, 50.0), (7, -50.0)):
                fc2.weight[out, 0], fc2.weight[out, 1], fc2.weight[out, 2] = sign, -sign, -sign
    head = decoder.transposed_convolution  # ConvTranspose2d(reduce_dim, 1, 16, stride=16)
    head.weight.zero_()
    head.bias.zero_()
    head.weight[6] = 1.0
    head.weight[7] = -1.0
    _scale_head(model)


@torch.no_grad()
def _scale_head(model) -> None:
    """Scale the head so a pure red patch gives +LOGIT (the soft sign's saturated value sets it)."""
    red = torch.zeros(1, 3, 352, 352)
    for c, (mean, std) in enumerate(zip(IMAGE_MEAN, IMAGE_STD)):
        red[:, c] = ((1.0 if c == 0 else 0.0) - mean) / std
    cond = torch.zeros(1, model.config.projection_dim)
    logit = model(pixel_values=red, conditional_embeddings=cond).logits.max().item()
    model.decoder.transposed_convolution.weight.mul_(LOGIT / logit)


def make_known_answer_checkpoint(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Write the known-answer CLIPSeg (safetensors), its tokenizer and the rd64-refined image
    processor config into ``directory``; returns the path. ``seed`` sets the random weights of
    the channels that do not matter."""
    quiet_torchao_import()
    from transformers import CLIPSegForImageSegmentation, ViTImageProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    directory = Path(directory)
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(known_answer_config()).eval()
    set_known_answer_weights(model)
    model.save_pretrained(str(directory), safe_serialization=True)
    make_tokenizer(directory)
    ViTImageProcessor(do_resize=True, size={"height": 352, "width": 352}, resample=2, do_rescale=True,
                      rescale_factor=1 / 255, do_normalize=True, image_mean=list(IMAGE_MEAN),
                      image_std=list(IMAGE_STD)).save_pretrained(str(directory))
    (directory / UNTRAINED_MARKER).write_text(json.dumps({
        "size": "known-answer", "seed": seed,
        "note": "hand-set weights: every prompt's mask is the red 16 px patches of the input"}))
    return directory
