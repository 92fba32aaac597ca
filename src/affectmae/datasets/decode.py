"""Decoding face images at the size they are used: JPEG DCT scaling instead of a full decode and a resize.

Public API::

    DECODERS                                            # ("auto", "simplejpeg", "pillow")
    reduction(width, height, min_side) -> int           # 1, 2, 4 or 8
    decode_rgb(path, min_side=0, decoder="auto") -> np.ndarray   # (H, W, 3) uint8
    image_decoder(decoder="auto") -> str                # the backend "auto" resolves to here

A JPEG decoder can scale the image down by 1/2, 1/4 or 1/8 inside the inverse DCT, which skips most of the
work of a full decode. ``decode_rgb(path, min_side)`` picks the largest of these reductions that keeps the
shorter side at least ``min_side`` pixels (:func:`reduction`) and returns the decoder's own pixels: no
resampling follows, so every backend gives the same array, which is what the packed form
(:mod:`affectmae.datasets.pack`) stores. ``min_side=0`` decodes at full size (the pixels of
:func:`affectmae.datasets.images.load_rgb`). Images that are not JPEG (PNG, BMP, WebP) are decoded whole.

Backends: ``simplejpeg`` (libjpeg-turbo through TurboJPEG, a dependency of the package: 20-45 % faster than
Pillow here, docs/benchmarks.md) and Pillow's draft mode (also libjpeg-turbo). Both give identical pixels for
the same reduction (``tests/test_input_pipeline.py``). ``auto`` takes simplejpeg where it imports and Pillow
elsewhere. A file simplejpeg rejects (corrupt, truncated, CMYK, anything unusual) goes through Pillow, so a
corrupt file raises the same :class:`~affectmae.errors.InputFormatError` naming it as
:func:`~affectmae.datasets.images.open_rgb`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from affectmae.datasets.images import open_rgb_reduced
from affectmae.errors import AffectMAEError, InputFormatError

DECODERS = ("auto", "simplejpeg", "pillow")
REDUCTIONS = (8, 4, 2, 1)
_JPEG_MAGIC = b"\xff\xd8"


def reduction(width: int, height: int, min_side: int) -> int:
    """The largest d in (8, 4, 2, 1) with ``ceil(min(width, height) / d) >= min_side`` (1 when ``min_side`` is 0)."""
    if min_side <= 0:
        return 1
    short = min(width, height)
    return next(d for d in REDUCTIONS if -(-short // d) >= min_side or d == 1)


def image_decoder(decoder: str = "auto") -> str:
    """The backend ``decoder`` means on this machine: ``auto`` -> simplejpeg when installed, else pillow."""
    if decoder not in DECODERS:
        raise AffectMAEError(f"unknown image decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    have = importlib.util.find_spec("simplejpeg") is not None
    if decoder == "simplejpeg" and not have:
        raise AffectMAEError("decoder=simplejpeg needs the simplejpeg package: pip install simplejpeg")
    if decoder == "auto":
        return "simplejpeg" if have else "pillow"
    return decoder


def _pillow_draft(min_side: int):
    def draft(img: Image.Image) -> None:
        if img.format == "JPEG" and min_side > 0:
            d = reduction(*img.size, min_side)
            if d > 1:  # Pillow picks d from the requested size: (w // d, h // d) selects exactly d
                img.draft("RGB", (max(1, img.size[0] // d), max(1, img.size[1] // d)))
    return draft


def _simplejpeg(data: bytes, min_side: int) -> np.ndarray | None:
    """The pixels by simplejpeg, or None when it cannot (or should not) decode ``data``: Pillow then does."""
    import simplejpeg

    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("Gray", "YCbCr", "RGB"):  # CMYK/YCCK: Pillow's conversion, as before
            return None
        d = reduction(width, height, min_side)
        return simplejpeg.decode_jpeg(data, "RGB", min_height=-(-height // d), min_width=-(-width // d), strict=True)
    except ValueError:  # corrupt, truncated, or a JPEG flavour TurboJPEG refuses: Pillow's verdict counts
        return None


def decode_rgb(path: str | Path, min_side: int = 0, decoder: str = "auto") -> np.ndarray:
    """Decode ``path`` to RGB (H, W, 3) uint8, a JPEG reduced by :func:`reduction` (``min_side`` 0: full size).

    Raises InputFormatError naming ``path`` for a missing, unreadable, corrupt or truncated file, as
    :func:`~affectmae.datasets.images.open_rgb` does.
    """
    path = Path(path)
    if image_decoder(decoder) == "simplejpeg":
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputFormatError(path, "image file not found") from None
        except OSError as err:
            raise InputFormatError(path, f"cannot read image ({err.strerror or err})") from None
        if data[:2] == _JPEG_MAGIC:
            pixels = _simplejpeg(data, min_side)
            if pixels is not None:
                return pixels
    return np.array(open_rgb_reduced(path, _pillow_draft(min_side)), dtype=np.uint8)
