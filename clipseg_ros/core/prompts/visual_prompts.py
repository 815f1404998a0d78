"""Visual prompt engineering: turn an example image and a region into the image CLIPSeg embeds.

No ROS in here. The CLIPSeg paper (Lüddecke & Ecker, CVPR 2022, Table 2) measured how to present
an example object so that its embedding works as a prompt (gain in object probability over the
plain image): crop 13.60, background at 10% 13.85, background blur 13.15, crop + blur 15.34,
crop + 10% 21.73, crop + 10% + blur **23.50** (best). :data:`STYLES` names those variants;
:data:`DEFAULT_STYLE` is the best one.

What each step does, as in the paper's reference code (``img_preprocess`` with ``blur=3,
center_context=0.1, bg_fac=0.1``):

1. background = pixels outside the region; it is blurred (Gaussian, 15x15 kernel, sigma 3) and
   its contrast scaled by ``background_factor`` around the model's normalisation mean colour
   (the reference scales normalised pixels, whose zero is that mean; 0.1 = "10%");
2. crop: the bounding box of the region, widened by ``context`` (0.1 = 10% of its height and
   width on each side, clipped to the image), padded to a square with the mean colour (the
   model squashes whatever it gets to 352x352).

Images are (H, W, 3) uint8 RGB; a region is a (H, W) bool array of the same size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# CLIPSeg's normalisation mean (ImageNet), in 0..255 RGB: the colour a normalised zero stands for.
MEAN_RGB = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)


class RegionError(ValueError):
    """A region cannot be used on its image; the message says why."""


@dataclass(frozen=True)
class VisualPromptStyle:
    """How an example image is turned into a prompt image.

    ``crop``: crop to the region's box widened by ``context`` (fraction of its size per side);
    ``background_factor``: 1 keeps the background, 0.1 = the paper's "10%";
    ``blur_sigma``: Gaussian blur of the background (0 = none; kernel ``blur_kernel`` pixels).
    """

    name: str
    crop: bool = False
    context: float = 0.1
    background_factor: float = 1.0
    blur_sigma: float = 0.0
    blur_kernel: int = 15

    @property
    def touches_background(self) -> bool:
        return self.background_factor != 1.0 or self.blur_sigma > 0


# Table 2 of the paper, by the names used there; "plain" = the example image as sent.
STYLES: dict[str, VisualPromptStyle] = {s.name: s for s in (
    VisualPromptStyle("plain"),
    VisualPromptStyle("crop", crop=True),
    VisualPromptStyle("darken", background_factor=0.1),
    VisualPromptStyle("blur", blur_sigma=3.0),
    VisualPromptStyle("crop_blur", crop=True, blur_sigma=3.0),
    VisualPromptStyle("crop_darken", crop=True, background_factor=0.1),
    VisualPromptStyle("crop_darken_blur", crop=True, background_factor=0.1, blur_sigma=3.0),
)}
DEFAULT_STYLE = "crop_darken_blur"


def style_named(name: str) -> VisualPromptStyle:
    """The style called ``name`` ('' = the default); RegionError naming the choices otherwise."""
    key = name.strip() or DEFAULT_STYLE
    if key not in STYLES:
        raise RegionError(f"unknown visual prompt style '{name}': one of {', '.join(STYLES)}")
    return STYLES[key]


@dataclass(frozen=True)
class Box:
    """A rectangle in image pixels: columns x .. x + width - 1, rows y .. y + height - 1."""

    x: int
    y: int
    width: int
    height: int


def region_mask(image_size: tuple[int, int], box: Box | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """The region as an (H, W) bool array: the box's pixels, the mask's non-zero pixels, or both
    (the mask's pixels inside the box). RegionError for a box that is empty or not inside the
    image, a mask of another size, or a region without a pixel.
    """
    h, w = int(image_size[0]), int(image_size[1])
    if box is None and mask is None:
        raise RegionError("no region: give a box, a mask or both")
    region = np.ones((h, w), bool)
    if box is not None:
        if box.width <= 0 or box.height <= 0:
            raise RegionError(f"box {box.width}x{box.height} at ({box.x}, {box.y}) is empty")
        if box.x < 0 or box.y < 0 or box.x + box.width > w or box.y + box.height > h:
            raise RegionError(f"box {box.width}x{box.height} at ({box.x}, {box.y}) is not inside the "
                              f"{w}x{h} image")
        region[:] = False
        region[box.y:box.y + box.height, box.x:box.x + box.width] = True
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (h, w):
            raise RegionError(f"mask is {_size(mask.shape)} but the image is {w}x{h}: they must match")
        region &= mask != 0
    if not region.any():
        raise RegionError("the region has no pixel (an all-zero mask, or a mask with nothing inside the box)")
    return region


def region_box(region: np.ndarray) -> Box:
    """The tight bounding box of a non-empty (H, W) bool region."""
    x, y, w, h = cv2.boundingRect(region.astype(np.uint8))
    return Box(x, y, w, h)


def engineer(image: np.ndarray, region: np.ndarray, style: VisualPromptStyle,
             mean_rgb: tuple[float, float, float] = MEAN_RGB) -> np.ndarray:
    """The prompt image for ``image`` (H, W, 3 uint8 RGB) with the object at ``region`` (H, W
    bool, as from :func:`region_mask`): background treated, then cropped and padded to a square
    (see the module doc). Returns a new uint8 RGB array; ``plain`` returns a copy of the image.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise RegionError(f"example image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if region.shape != image.shape[:2]:
        raise RegionError(f"region is {_size(region.shape)} but the image is {_size(image.shape)}")
    out = image.copy()
    if style.touches_background:
        pixels = image.astype(np.float32)
        background = pixels
        if style.blur_sigma > 0:
            k = int(style.blur_kernel)
            background = cv2.GaussianBlur(pixels, (k, k), style.blur_sigma, borderType=cv2.BORDER_REFLECT_101)
        mean = np.asarray(mean_rgb, np.float32)
        background = mean + np.float32(style.background_factor) * (background - mean)
        outside = ~region
        out[outside] = np.clip(np.rint(background[outside]), 0, 255).astype(np.uint8)
    if style.crop:
        out = _crop_to_square(out, region_box(region), style.context, mean_rgb)
    return out


def crop_bounds(box: Box, context: float, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends: ``box`` widened by ``context`` x its width on the left
    and right and x its height above and below, truncated to whole pixels and clipped to the
    image (the reference code's ``crop_mask``)."""
    h, w = int(image_size[0]), int(image_size[1])
    x0 = int(max(0, box.x - context * box.width))
    x1 = int(min(w, box.x + box.width + context * box.width))
    y0 = int(max(0, box.y - context * box.height))
    y1 = int(min(h, box.y + box.height + context * box.height))
    return x0, y0, x1, y1


def _crop_to_square(image: np.ndarray, box: Box, context: float, mean_rgb) -> np.ndarray:
    x0, y0, x1, y1 = crop_bounds(box, context, image.shape[:2])
    crop = image[y0:y1, x0:x1]
    ch, cw = crop.shape[:2]
    side = max(ch, cw)
    fill = np.asarray(np.rint(mean_rgb), np.uint8)
    square = np.empty((side, side, 3), np.uint8)
    square[:] = fill
    top, left = (side - ch) // 2, (side - cw) // 2  # centred, the odd pixel after (as the reference)
    square[top:top + ch, left:left + cw] = crop
    return square


def _size(shape) -> str:
    return f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else str(shape)


@dataclass(frozen=True, eq=False)
class ExampleImage:
    """An example image as sent, the region that marks the object (or None: used as sent), the
    style applied and the resulting ``prompt_image`` (what is embedded). Arrays are not copied:
    treat them as read-only."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    box: Box | None
    mask: np.ndarray | None  # (H, W) uint8, non-zero = object
    style: str
    prompt_image: np.ndarray  # (h, w, 3) uint8 RGB

    @property
    def has_region(self) -> bool:
        return self.box is not None or self.mask is not None


def make_example(image: np.ndarray, box: Box | None = None, mask: np.ndarray | None = None,
                 style: str = "") -> ExampleImage:
    """An :class:`ExampleImage`: without a region the image is the prompt as sent (``plain``);
    with one, ``style`` ('' = :data:`DEFAULT_STYLE`) is applied. RegionError for a bad region,
    image or style name."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise RegionError(f"example image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if box is None and mask is None:
        style_named(style)  # a bad name is refused even when unused
        return ExampleImage(image, None, None, "plain", image)
    chosen = style_named(style)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.uint8:
            mask = (mask != 0).astype(np.uint8) * 255
    region = region_mask(image.shape[:2], box, mask)
    return ExampleImage(image, box, mask, chosen.name, engineer(image, region, chosen))
