"""A pixel limit read from an image's header, before anything is decoded (decompression bombs).

A 20000 x 20000 PNG of one colour is about a megabyte on the wire and 1.2 GB once decoded. PIL reads
the size from the header without decoding; ``pixels_over_limit`` and ``open_image`` refuse an image
with more than ``max_pixels`` pixels before its pixels are touched. PIL's own ``Image.MAX_IMAGE_PIXELS``
(which makes ``Image.open`` refuse twice its value anywhere in the process) is raised to a higher limit,
so that it never refuses what the configuration allows, and otherwise left at its default. Data that PIL
does not recognise as an image is refused too: what cannot be checked is not decoded.

The default limit is PIL's own (89,478,485 pixels: about 9459 x 9459, 268 MB decoded as RGB);
``data.download.max_image_pixels`` raises or lowers it for the downloads and the tokenize stage.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import BinaryIO, Optional, Union

from PIL import Image

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's default MAX_IMAGE_PIXELS
REASON_TOO_MANY_PIXELS = "refused: more pixels than data.download.max_image_pixels (not decoded)"
REASON_UNKNOWN_FORMAT = "refused: not an image format PIL recognises (not decoded)"

# Between the limit and twice it PIL only warns; those images are refused here anyway.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageRefused(ValueError):
    """An image not decoded: too many pixels, or not recognisable; ``str()`` is the fixed reason."""


def limit_pil(max_pixels: int) -> None:
    """Let PIL open images up to ``max_pixels`` in this process: its ``Image.MAX_IMAGE_PIXELS`` is raised to
    the limit when that is higher (never lowered, so other readers in the process keep PIL's default; the
    lower limit is enforced by ``header_size`` itself)."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def header_size(data: Union[bytes, BinaryIO], max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` from the header; ``ImageRefused`` over ``max_pixels`` or for unknown data.
    A stream is read from its current position and left there."""
    limit_pil(max_pixels)
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    start = stream.tell()
    try:
        with Image.open(stream) as im:
            width, height = im.size
    except Image.DecompressionBombError:
        raise ImageRefused(REASON_TOO_MANY_PIXELS) from None
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageRefused(REASON_UNKNOWN_FORMAT) from None
    finally:
        stream.seek(start)
    if width * height > max_pixels:
        raise ImageRefused(REASON_TOO_MANY_PIXELS)
    return width, height


def pixels_over_limit(data: Union[bytes, BinaryIO], max_pixels: int) -> Optional[str]:
    """The refusal reason for ``data``, or None when it may be decoded."""
    try:
        header_size(data, max_pixels)
    except ImageRefused as exc:
        return str(exc)
    return None


def open_image(source: Union[bytes, str, os.PathLike], max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Image bytes or an image file decoded by PIL after the header check (``ImageRefused`` otherwise)."""
    with contextlib.ExitStack() as stack:
        if isinstance(source, (bytes, bytearray, memoryview)):
            stream: BinaryIO = io.BytesIO(source)
        else:
            stream = stack.enter_context(open(source, "rb"))
        header_size(stream, max_pixels)
        img = Image.open(stream)
        img.load()
    return img
