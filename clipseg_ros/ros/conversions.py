"""sensor_msgs Image/CompressedImage <-> numpy, with cv_bridge's function names and semantics.

cv_bridge (ROS 2) is not on PyPI and PyPI's ``cv-bridge`` is a broken ROS 1 port, so this module
does the same job with numpy + OpenCV. No torch here.

- :func:`imgmsg_to_cv2` reads any encoding cv_bridge knows (rgb8/bgr8/rgba8/bgra8, mono8/16,
  8UC*, 16UC*, 16SC*, 32SC*, 32FC*, 64FC*, yuv422/uyvy/yuyv, bayer_*), honours padded ``step``
  and big-endian data, and converts to ``desired_encoding`` like cv_bridge.
- :func:`cv2_to_imgmsg` fills ``data`` with one copy (``frombytes`` on a memoryview: ~0.3 ms for
  1080p; assigning a numpy array to ``msg.data`` takes ~1.5 s).
- :func:`compressed_imgmsg_to_cv2` / :func:`cv2_to_compressed_imgmsg`: every format OpenCV encodes
  and decodes (jpeg/jpg/jpe, png, bmp/dib, tiff/tif, webp, pbm/pgm/ppm/pnm, sr/ras, ...), 16-bit
  PNG kept.
- :func:`read_rgb8` is what the node feeds the model: any readable Image or CompressedImage as RGB
  uint8, refused *before* decoding when it has more than ``max_pixels`` (a compressed image's size
  is read from its header, so a small file that would decode to 30000x30000 costs nothing).

Every failure raises :class:`ImageConversionError` with a message fit for a log line.
"""

from __future__ import annotations

import io
import re
import sys
import warnings

import cv2
import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image

# Header reads of images over PIL's own pixel limit warn; the size limit here is the caller's.
warnings.filterwarnings("ignore", category=PILImage.DecompressionBombWarning)


class ImageConversionError(ValueError):
    """The message cannot be read or converted; the text says why."""


_COLOR = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
          "rgb16": (np.uint16, 3), "bgr16": (np.uint16, 3), "rgba16": (np.uint16, 4), "bgra16": (np.uint16, 4),
          "mono8": (np.uint8, 1), "mono16": (np.uint16, 1)}
_CV_DEPTHS = {"8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16, "32S": np.int32,
              "32F": np.float32, "64F": np.float64}
_BAYER = {  # ROS pattern -> OpenCV code (OpenCV names the pattern by the second row's start)
    "rggb": "BayerBG", "bggr": "BayerRG", "gbrg": "BayerGR", "grbg": "BayerGB"}
_YUV422 = {"yuv422": cv2.COLOR_YUV2RGB_UYVY, "uyvy": cv2.COLOR_YUV2RGB_UYVY,
           "yuyv": cv2.COLOR_YUV2RGB_YUY2, "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2}


def encoding_layout(encoding: str) -> tuple[np.dtype, int]:
    """(numpy dtype, channels) of a ROS image encoding; ImageConversionError if unknown."""
    enc = encoding.lower()
    if enc in _COLOR:
        dt, ch = _COLOR[enc]
        return np.dtype(dt), ch
    m = re.fullmatch(r"(8u|8s|16u|16s|32s|32f|64f)c(\d+)", enc)
    if m:
        return np.dtype(_CV_DEPTHS[m.group(1).upper()]), int(m.group(2))
    m = re.fullmatch(r"bayer_(rggb|bggr|gbrg|grbg)(8|16)", enc)
    if m:
        return np.dtype(np.uint8 if m.group(2) == "8" else np.uint16), 1
    if enc in _YUV422:
        return np.dtype(np.uint8), 2
    raise ImageConversionError(f"unsupported image encoding '{encoding}'")


def check_image_layout(msg: Image) -> tuple[np.dtype, int]:
    """(dtype, channels) of a raw Image whose encoding, size, ``step`` and data length agree;
    ImageConversionError saying what does not. Cheap: looks at no pixel."""
    dtype, channels = encoding_layout(msg.encoding)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError(f"image has no pixels ({w}x{h})")
    row = w * channels * dtype.itemsize
    if step < row:
        raise ImageConversionError(f"step {step} is smaller than a row of {w} {msg.encoding} pixels ({row} bytes)")
    if step % dtype.itemsize:
        raise ImageConversionError(f"step {step} is not a multiple of the {dtype.itemsize}-byte element size")
    size = len(msg.data)
    if size < step * (h - 1) + row:
        raise ImageConversionError(f"data has {size} bytes, expected step*height = {step * h} for "
                                   f"{w}x{h} {msg.encoding}")
    return dtype, channels


def imgmsg_to_numpy(msg: Image) -> np.ndarray:
    """Zero-copy view of ``msg.data`` as (H, W) or (H, W, C) in native byte order (big-endian
    data is byte-swapped into a copy). Validates sizes; the view shares the message's memory."""
    dtype, channels = check_image_layout(msg)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row = w * channels * dtype.itemsize
    size = len(msg.data)
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if size < step * h:  # last row unpadded: pad virtually via a copy to keep one code path
        buf = np.concatenate([buf, np.zeros(step * h - size, np.uint8)])
    rows = buf[: step * h].reshape(h, step)[:, :row]
    arr = rows.view(dtype) if dtype.itemsize == 1 else np.ascontiguousarray(rows).view(dtype)
    arr = arr.reshape(h, w, channels) if channels > 1 else arr.reshape(h, w)
    big_endian_data = bool(msg.is_bigendian)
    if dtype.itemsize > 1 and big_endian_data != (sys.byteorder == "big"):
        arr = arr.byteswap()
    return arr


def _channel_order(encoding: str) -> str | None:
    enc = encoding.lower()
    if enc.startswith(("rgba", "bgra")):
        return enc[:4]
    if enc.startswith(("rgb", "bgr")):
        return enc[:3]
    if enc.startswith("mono"):
        return "mono"
    return None


def imgmsg_to_cv2(msg: Image, desired_encoding: str = "passthrough") -> np.ndarray:
    """cv_bridge's ``imgmsg_to_cv2``: numpy array in ``desired_encoding`` (or as sent).

    Supported targets: passthrough, rgb8, bgr8, rgba8, bgra8, mono8, and the 16-bit variants;
    bayer/yuv sources are demosaiced/decoded to colour. The result never aliases the message.
    """
    return convert_encoding(imgmsg_to_numpy(msg), msg.encoding, desired_encoding)


def convert_encoding(arr: np.ndarray, encoding: str, desired_encoding: str = "passthrough") -> np.ndarray:
    """Convert an array holding ``encoding`` data to ``desired_encoding`` like cv_bridge; always
    returns a new array (never a view of ``arr``)."""
    src = encoding.lower()
    dst = (desired_encoding or "passthrough").lower()
    if dst == "passthrough" or dst == src:
        return np.array(arr, copy=True)
    # Decode the special layouts to rgb first.
    if src in _YUV422:
        arr, src = cv2.cvtColor(np.ascontiguousarray(arr), _YUV422[src]), "rgb8"
    elif src.startswith("bayer_"):
        pattern = _BAYER[src[6:10]]
        arr = cv2.cvtColor(np.ascontiguousarray(arr), getattr(cv2, f"COLOR_{pattern}2RGB"))
        src = "rgb8" if arr.dtype == np.uint8 else "rgb16"
    src_order = _channel_order(src)
    dst_order = _channel_order(dst)
    if src_order is None or dst_order is None:
        raise ImageConversionError(f"cannot convert '{encoding}' to '{desired_encoding}'")
    # Bit depth first (cv_bridge scales 16 <-> 8 bit by 255/65535), then channels.
    dst_dtype = encoding_layout(dst)[0]
    if arr.dtype != dst_dtype:
        if arr.dtype == np.uint16 and dst_dtype == np.uint8:
            arr = cv2.convertScaleAbs(arr, alpha=255.0 / 65535.0)
        elif arr.dtype == np.uint8 and dst_dtype == np.uint16:
            arr = arr.astype(np.uint16) * 257
        else:
            raise ImageConversionError(f"cannot convert '{encoding}' to '{desired_encoding}'")
    return _convert_channels(np.ascontiguousarray(arr), src_order, dst_order)


def _convert_channels(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    if src == dst:
        return np.array(arr, copy=True)
    codes = {("rgb", "bgr"): cv2.COLOR_RGB2BGR, ("bgr", "rgb"): cv2.COLOR_BGR2RGB,
             ("rgba", "rgb"): cv2.COLOR_RGBA2RGB, ("rgba", "bgr"): cv2.COLOR_RGBA2BGR,
             ("bgra", "bgr"): cv2.COLOR_BGRA2BGR, ("bgra", "rgb"): cv2.COLOR_BGRA2RGB,
             ("rgb", "rgba"): cv2.COLOR_RGB2RGBA, ("bgr", "bgra"): cv2.COLOR_BGR2BGRA,
             ("rgb", "bgra"): cv2.COLOR_RGB2BGRA, ("bgr", "rgba"): cv2.COLOR_BGR2RGBA,
             ("rgba", "bgra"): cv2.COLOR_RGBA2BGRA, ("bgra", "rgba"): cv2.COLOR_BGRA2RGBA,
             ("mono", "rgb"): cv2.COLOR_GRAY2RGB, ("mono", "bgr"): cv2.COLOR_GRAY2BGR,
             ("mono", "rgba"): cv2.COLOR_GRAY2RGBA, ("mono", "bgra"): cv2.COLOR_GRAY2BGRA,
             ("rgb", "mono"): cv2.COLOR_RGB2GRAY, ("bgr", "mono"): cv2.COLOR_BGR2GRAY,
             ("rgba", "mono"): cv2.COLOR_RGBA2GRAY, ("bgra", "mono"): cv2.COLOR_BGRA2GRAY}
    return cv2.cvtColor(arr, codes[(src, dst)])


def imgmsg_to_rgb8(msg: Image) -> np.ndarray:
    """Any colour, mono, bayer or yuv image as (H, W, 3) RGB uint8, for the model.

    16-bit images are scaled to 8 bits like cv_bridge. Float and signed encodings (depth maps,
    e.g. 32FC1 or 16UC1 from a depth camera) have no colour meaning and are refused with a
    message saying so; 16UC1 is read as mono16.
    """
    enc = msg.encoding.lower()
    if enc in ("16uc1", "8uc1"):  # single-channel data read as grey, like mono16/mono8
        return convert_encoding(imgmsg_to_numpy(msg), "mono16" if enc == "16uc1" else "mono8", "rgb8")
    if enc in ("8uc3", "8uc4"):
        raise ImageConversionError(f"encoding '{msg.encoding}' has no channel order; publish rgb8/bgr8 instead")
    if re.fullmatch(r"(8s|16s|32s|32f|64f)c\d+", enc) or re.fullmatch(r"16uc\d+", enc):
        encoding_layout(msg.encoding)
        raise ImageConversionError(
            f"encoding '{msg.encoding}' is not a camera image (a depth map?); the model needs colour or mono")
    return imgmsg_to_cv2(msg, "rgb8")


def cv2_to_imgmsg(arr: np.ndarray, encoding: str = "passthrough", header=None) -> Image:
    """cv_bridge's ``cv2_to_imgmsg``: a new Image holding a copy of ``arr``.

    ``passthrough`` picks the OpenCV-style encoding from dtype and channels (e.g. 8UC3). Any
    layout is accepted (a non-contiguous slice is copied with its own ``step``); an array in
    non-native byte order keeps it and sets ``is_bigendian`` accordingly, as cv_bridge does.
    """
    arr = np.ascontiguousarray(arr)
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if arr.ndim not in (2, 3):
        raise ImageConversionError(f"expected an (H, W) or (H, W, C) array, got shape {arr.shape}")
    native = arr.dtype.newbyteorder("=")
    if encoding == "passthrough":
        depth = {v: k for k, v in _CV_DEPTHS.items()}.get(native.type)
        if depth is None:
            raise ImageConversionError(f"no ROS encoding for dtype {arr.dtype}")
        encoding = f"{depth}C{channels}"
    dtype, want = encoding_layout(encoding)
    if native != dtype or want != channels:
        raise ImageConversionError(f"array {arr.dtype} x{channels} does not match encoding '{encoding}'")
    # '>' / '<' as given; '=' (native) and '|' (bytes: order moot) follow this machine, as before.
    byteorder = arr.dtype.byteorder
    big_endian = byteorder == ">" or (byteorder in ("=", "|") and sys.byteorder == "big")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = big_endian
    msg.step = int(arr.shape[1] * channels * arr.dtype.itemsize)
    if arr.size:  # memoryview cannot cast a view with a zero in its shape; an empty image has no data
        msg.data.frombytes(memoryview(arr).cast("B"))  # one copy; never assign an ndarray
    return msg


# Tokens of CompressedImage.format that name a codec OpenCV reads, or an encoding
# image_transport writes before it ("bgr8; jpeg compressed bgr8", "16UC1; png compressed").
_COMPRESSED_TOKENS = {"jpeg", "jpg", "jpe", "png", "bmp", "dib", "tiff", "tif", "webp", "pbm", "pgm", "ppm",
                      "pnm", "pxm", "sr", "ras", "jp2", "pfm", "hdr", "pic", "exr", "avif", "compressed",
                      "rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16uc1", "8uc1", "32fc1"}


def compressed_image_size(msg: CompressedImage) -> tuple[int, int]:
    """(width, height) of a compressed image from its header, without decoding the pixels;
    ImageConversionError when no header can be read."""
    _check_compressed(msg)
    try:
        with PILImage.open(io.BytesIO(msg.data)) as img:
            return int(img.size[0]), int(img.size[1])
    except PILImage.DecompressionBombError as exc:  # over PIL's process-wide limit (PIL.Image.MAX_IMAGE_PIXELS)
        raise ImageConversionError(f"compressed '{msg.format}' image is far too large to read: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for unreadable headers
        raise ImageConversionError(f"could not read the image size from the header of {len(msg.data)} bytes "
                                   f"of compressed '{msg.format}' data") from exc


def _check_compressed(msg: CompressedImage) -> None:
    if len(msg.data) == 0:
        raise ImageConversionError("compressed image has no data")
    tokens = set(re.split(r"[^0-9a-z]+", msg.format.lower())) - {""}
    if tokens and not tokens & _COMPRESSED_TOKENS:
        raise ImageConversionError(f"unsupported compressed format '{msg.format}' (expected a format OpenCV "
                                   "decodes: jpeg, png, bmp, tiff, webp, pbm/pgm/ppm, sr/ras, ...)")


def compressed_imgmsg_to_cv2(msg: CompressedImage, desired_encoding: str = "passthrough") -> np.ndarray:
    """Decode any format OpenCV reads (16-bit PNG kept with IMREAD_UNCHANGED) to BGR/BGRA/mono
    numpy, or to ``desired_encoding`` (rgb8, bgr8, mono8, ...)."""
    _check_compressed(msg)
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageConversionError(f"could not decode {len(msg.data)} bytes of compressed '{msg.format}' data")
    dst = (desired_encoding or "passthrough").lower()
    if dst == "passthrough":
        return arr
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    depth = {np.dtype(np.uint8): "8", np.dtype(np.uint16): "16"}.get(arr.dtype)
    if depth is None or channels not in (1, 3, 4):
        raise ImageConversionError(f"compressed '{msg.format}' data decodes to {channels}-channel {arr.dtype}, "
                                   f"which cannot be converted to '{desired_encoding}'")
    return convert_encoding(arr, {1: "mono", 3: "bgr", 4: "bgra"}[channels] + depth, dst)


def read_rgb8(msg: Image | CompressedImage, max_pixels: int | None = None) -> np.ndarray:
    """Any readable camera image, raw or compressed, as (H, W, 3) RGB uint8 for the model;
    refused with ImageConversionError before decoding when it has more than ``max_pixels``."""
    if max_pixels is not None:
        check_image_size(msg, max_pixels)
    if isinstance(msg, CompressedImage):
        return compressed_imgmsg_to_cv2(msg, "rgb8")
    return imgmsg_to_rgb8(msg)


def check_image_size(msg: Image | CompressedImage, max_pixels: int) -> None:
    """ImageConversionError when the image has more than ``max_pixels`` (for a compressed image
    read from its header, or when its header cannot be read)."""
    if isinstance(msg, CompressedImage):
        width, height = compressed_image_size(msg)
    else:
        width, height = int(msg.width), int(msg.height)
    if width * height > max_pixels:
        raise ImageConversionError(f"{width}x{height} has {width * height} pixels, over "
                                   f"max_image_pixels={max_pixels}")


def cv2_to_compressed_imgmsg(arr: np.ndarray, dst_format: str = "jpg", header=None) -> CompressedImage:
    """Encode a BGR/mono numpy image in any format OpenCV writes (jpg, png, bmp, tiff, webp,
    pbm/pgm/ppm, sr/ras, ...) into a new CompressedImage."""
    fmt = dst_format.lower().lstrip(".")
    try:
        ok, enc = cv2.imencode("." + ("jpg" if fmt == "jpeg" else fmt), arr)
    except cv2.error as exc:
        raise ImageConversionError(f"could not encode a {arr.dtype} {arr.shape} image as {dst_format}: "
                                   f"{str(exc).strip().splitlines()[-1]}") from exc
    if not ok:
        raise ImageConversionError(f"could not encode a {arr.dtype} {arr.shape} image as {dst_format}")
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = "jpeg" if fmt in ("jpg", "jpeg") else fmt
    msg.data.frombytes(memoryview(enc).cast("B"))
    return msg
