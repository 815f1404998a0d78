"""Randomly initialised CLIPSeg checkpoints, written with ``save_pretrained``.

For machines without the model hub: tests load a tiny one through the engine's real loading
code, the demo falls back to one (masks are meaningless: untrained weights), and the benchmark
uses one with the exact ``CIDAS/clipseg-rd64-refined`` architecture (speed does not depend on
weight values). The tokenizer is a byte-level CLIP BPE over a 514-token vocabulary (every byte,
as word-inner and word-final pieces, plus start/end tokens): real CLIP tokenisation rules, no
merges, no download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from clipseg_ros.core.model.precision import quiet_torchao_import

UNTRAINED_MARKER = "clipseg_ros_untrained.json"
UNTRAINED_NOTE = "untrained weights: masks are meaningless"  # said wherever such a model's output is shown


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte -> printable character map.
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_level_vocab() -> dict[str, int]:
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    # Start/end last, as in CLIP (49406, 49407): transformers pools text at argmax(input_ids)
    # for legacy configs, which must land on the end token.
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def make_tokenizer(directory: str | os.PathLike):
    """Build a CLIP tokenizer over :func:`byte_level_vocab`, save it into ``directory``."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = byte_level_vocab()
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps(vocab))
    merges_file.write_text("#version: 0.2\n")
    try:  # transformers 5.x: tokenizers-backed, takes the vocabulary itself
        tok = CLIPTokenizer(vocab=vocab, merges=[])
    except TypeError:  # transformers 4.x: slow tokenizer from files
        tok = CLIPTokenizer(vocab_file=str(vocab_file), merges_file=str(merges_file))
    tok.model_max_length = 77
    tok.save_pretrained(str(directory))
    return tok


def rd64_refined_config(**overrides):
    """The ``CIDAS/clipseg-rd64-refined`` architecture (150.7 M parameters).

    ViT-B/16 vision (CLIPSegVisionConfig defaults to patch 32: set 16), 512-wide 12-layer text,
    projection 512, extract_layers [3, 6, 9], reduce_dim 64, 4 decoder heads, decoder MLP 2048,
    complex transposed convolution.
    """
    from transformers import CLIPSegConfig

    text = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=16)
    kw = dict(projection_dim=512, extract_layers=[3, 6, 9], reduce_dim=64, decoder_num_attention_heads=4,
              decoder_intermediate_size=2048, conditional_layer=0, use_complex_transposed_convolution=True)
    kw.update(overrides)
    return CLIPSegConfig(text_config=text, vision_config=vision, **kw)


def tiny_config(**overrides):
    """A CLIPSeg small enough for tests (~0.3 M parameters) with the same structure as
    rd64-refined: patch 16, 3 extracted layers out of 5 (so layer skipping is exercised),
    complex transposed convolution, 224-px position grid (so 352-px inputs interpolate)."""
    from transformers import CLIPSegConfig

    vocab = len(byte_level_vocab())
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=2,
                  image_size=224, patch_size=16)
    kw = dict(projection_dim=16, extract_layers=[1, 2, 3], reduce_dim=16, decoder_num_attention_heads=2,
              decoder_intermediate_size=32, conditional_layer=0, use_complex_transposed_convolution=True)
    kw.update(overrides)
    return CLIPSegConfig(text_config=text, vision_config=vision, **kw)


def make_random_checkpoint(directory: str | os.PathLike, *, size: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised CLIPSeg (safetensors), its tokenizer and image processor
    config into ``directory``; returns the path. ``size``: ``tiny`` or ``rd64-refined``.

    Also writes ``clipseg_ros_untrained.json`` so tools can label outputs as meaningless.
    """
    quiet_torchao_import()
    from transformers import CLIPSegForImageSegmentation, ViTImageProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" in a tool's output says nothing

    directory = Path(directory)
    configs = {"tiny": tiny_config, "rd64-refined": rd64_refined_config}
    if size not in configs:
        raise ValueError(f"size must be one of {sorted(configs)}, got {size!r}")
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(configs[size]()).eval()
    _calibrate_logit_scale(model)
    model.save_pretrained(str(directory), safe_serialization=True)
    make_tokenizer(directory)
    # The rd64-refined processor: resize to 352x352 (PIL bilinear), rescale 1/255, ImageNet mean/std.
    ViTImageProcessor(do_resize=True, size={"height": 352, "width": 352}, resample=2, do_rescale=True,
                      rescale_factor=1 / 255, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(str(directory))
    (directory / UNTRAINED_MARKER).write_text(json.dumps({"size": size, "seed": seed,
                                                          "note": "untrained weights: masks are meaningless"}))
    return directory


@torch.no_grad()
def _calibrate_logit_scale(model, target_std: float = 4.0) -> None:
    """Scale the decoder's last layer so logits span a trained model's range (a few units)
    instead of random initialisation's hundreds: float rounding then compares as it would on
    real weights, and probabilities are not all saturated at 0 or 1."""
    size = 352
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(1, model.config.projection_dim, generator=torch.Generator().manual_seed(2))
    std = model(pixel_values=pixels, conditional_embeddings=cond).logits.std().item()
    last = model.decoder.transposed_convolution
    last = last[-1] if isinstance(last, torch.nn.Sequential) else last
    scale = target_std / max(std, 1e-6)
    last.weight.mul_(scale)
    if last.bias is not None:
        last.bias.mul_(scale)


def is_untrained(model: str | os.PathLike) -> bool:
    """True if ``model`` is a directory written by :func:`make_random_checkpoint`."""
    return os.path.isfile(os.path.join(os.path.expanduser(str(model)), UNTRAINED_MARKER))
