"""Query and example images -> the model's pixel values, exactly as the checkpoint's processor.

No ROS and no torch in here: numpy in, numpy out. Uses PIL's resize on the uint8 array (what the
Hugging Face image processor does), which matches it to < 1e-6; OpenCV's bilinear/area resizes
differ by up to 0.9 in normalised units (several percent of logit change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from PIL import Image as PILImage


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
    """Resize/rescale/normalise one RGB uint8 image like the checkpoint's processor.
    Returns (3, H, W) float32."""
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


def preprocess_batch(images: Sequence[np.ndarray], cfg: PreprocessConfig, color_order: str = "rgb") -> np.ndarray:
    """(B, 3, H, W) float32 pixel values for B images of any sizes (see :func:`as_rgb_uint8`)."""
    return np.stack([preprocess_image(as_rgb_uint8(im, color_order), cfg) for im in images])
