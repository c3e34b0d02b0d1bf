"""Decoding encoded image bytes to H x W x 3 uint8 RGB arrays, with a short reason for every failure."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from curator_cli.options import DEFAULT_MAX_PIXELS, DecodeOptions


class DecodeError(Exception):
    """An image that cannot be turned into pixels; ``str(err)`` is the short reason written to ``error``."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha composited on white, 16-bit and float scaled to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        high = 65535.0 if mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        if mode in ("I", "F") and pixels.max() <= 255:
            high = 255.0
        grey = np.clip(pixels / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def square_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (antialiased) and cut the centre ``size`` x ``size`` square.

    Only the centre square is resampled (Pillow's ``box``): the picture resizing the whole image and
    cropping gives (centred to the sub-pixel rather than the pixel), for less work.
    """
    width, height = image.size
    side = min(width, height)
    if (width, height) == (size, size):
        return image
    left, top = (width - side) / 2, (height - side) / 2
    if side == size:
        return image.crop((int(left), int(top), int(left) + size, int(top) + size))
    return image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side),
                        reducing_gap=2.0)


def decode_image(
    data: bytes | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
    crop: bool = False,
) -> np.ndarray:
    """Decode ``data`` to an H x W x 3 uint8 RGB array (a writable copy: stages may normalise in
    place); see :func:`decode_picture`."""
    return np.array(decode_picture(data, max_pixels, min_side, crop), dtype=np.uint8)


def decode_picture(
    data: bytes | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
    crop: bool = False,
) -> Image.Image:
    """Decode ``data`` to an RGB picture, applying EXIF orientation.

    ``min_side``: decode no smaller than this on the shorter side, letting JPEG DCT scaling skip
    work (``Image.draft``); ``None`` decodes at full resolution. ``crop`` (with ``min_side``):
    return exactly ``min_side`` x ``min_side``, resized and centre-cropped, for the tensor fast path.
    The decode workers write the picture's bytes straight into shared memory.
    """
    if not data:
        raise DecodeError("empty image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(f"too many pixels ({width}x{height} > --max-pixels {max_pixels})")
            if min_side and image.format == "JPEG":
                scale = min(width, height) / min_side
                if scale >= 2:
                    image.draft("RGB", (max(1, int(width / scale + 0.999)), max(1, int(height / scale + 0.999))))
            image.load()
            if _may_be_rotated(image):
                ImageOps.exif_transpose(image, in_place=True)  # not a copy of every upright image
            rgb = _to_rgb(image)
            if crop and min_side:
                rgb = square_crop(rgb, min_side)
            width, height = rgb.size
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognized format)") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"too many pixels ({exc})") from None
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower():
            raise DecodeError("truncated image") from None
        raise DecodeError(f"cannot decode: {text}") from None
    except (ValueError, SyntaxError, TypeError, IndexError, MemoryError) as exc:
        raise DecodeError(f"cannot decode: {type(exc).__name__}: {exc}") from None
    if rgb.mode != "RGB" or width * height == 0:
        raise DecodeError(f"cannot decode: unexpected pixels ({rgb.mode} {width}x{height})")
    return rgb


def _may_be_rotated(image: Image.Image) -> bool:
    """False when the picture carries no EXIF or XMP at all (so no orientation tag): skips parsing."""
    info = image.info
    return image.format != "JPEG" or "exif" in info or "xmp" in info or "XML:com.adobe.xmp" in info


def decode_with(data: bytes | None, options: DecodeOptions) -> np.ndarray:
    """:func:`decode_image` with the run's :class:`DecodeOptions`."""
    return decode_image(data, options.max_pixels, options.min_side, options.crop)


def picture_with(data: bytes | None, options: DecodeOptions) -> Image.Image:
    """:func:`decode_picture` with the run's :class:`DecodeOptions`."""
    return decode_picture(data, options.max_pixels, options.min_side, options.crop)
