"""Decoding face images at the size they are used: JPEG DCT scaling instead of a full decode and a resize.

Public API::

    DECODERS                                            # ("auto", "simplejpeg", "pillow")
    reduction(width, height, min_side) -> int           # 1, 2, 4 or 8
    decode_rgb(path, min_side=0, decoder="auto") -> np.ndarray   # (H, W, 3) uint8
    image_decoder(decoder="auto") -> str                # the backend "auto" resolves to here
    crop_reduction(crop_height, crop_width, out_size) -> int                # 1, 2, 4 or 8
    decode_for_crop(path, sample, out_size, decoder="auto") -> (pixels, params)   # crop-aware, below

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

Crop-aware decoding (pretraining's default): a random crop's box depends only on the image's size and the RNG,
and a JPEG's size is in its header. :func:`decode_for_crop` reads the header, draws the crop there with
``sample(height, width)`` (the draws of :meth:`affectmae.models.augment.FaceAugment.sample`, so the box is the
one the full decode would get), then decodes at the largest reduction at which the crop still has ``out_size``
pixels on its shorter side (:func:`crop_reduction`): no crop is upsampled more than from the full image. The
box comes back in the reduced image's pixels (each covers ``d`` x ``d`` full-size pixels; the edges are
rounded to the nearest reduced pixel).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import torch
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


def crop_reduction(crop_height: int, crop_width: int, out_size: int) -> int:
    """The largest d in (8, 4, 2, 1) with ``min(crop_height, crop_width) >= out_size * d`` (1 when none is)."""
    short = min(crop_height, crop_width)
    return next(d for d in REDUCTIONS if short >= out_size * d or d == 1)


Choose = Callable[[int, int], int]  # (width, height) of the JPEG -> the reduction d to decode it at


def _pillow_draft(choose: Choose):
    def draft(img: Image.Image) -> None:
        if img.format == "JPEG":
            d = choose(*img.size)
            if d > 1:  # Pillow picks d from the requested size: (w // d, h // d) selects exactly d
                img.draft("RGB", (max(1, img.size[0] // d), max(1, img.size[1] // d)))
    return draft


def _simplejpeg(data: bytes, choose: Choose) -> np.ndarray | None:
    """The pixels by simplejpeg, or None when it cannot (or should not) decode ``data``: Pillow then does."""
    import simplejpeg

    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("Gray", "YCbCr", "RGB"):  # CMYK/YCCK: Pillow's conversion, as before
            return None
        d = choose(width, height)
        return simplejpeg.decode_jpeg(data, "RGB", min_height=-(-height // d), min_width=-(-width // d), strict=True)
    except ValueError:  # corrupt, truncated, or a JPEG flavour TurboJPEG refuses: Pillow's verdict counts
        return None


def _decode(path: Path, choose: Choose, decoder: str) -> np.ndarray:
    if image_decoder(decoder) == "simplejpeg":
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputFormatError(path, "image file not found") from None
        except OSError as err:
            raise InputFormatError(path, f"cannot read image ({err.strerror or err})") from None
        if data[:2] == _JPEG_MAGIC:
            pixels = _simplejpeg(data, choose)
            if pixels is not None:
                return pixels
    return np.array(open_rgb_reduced(path, _pillow_draft(choose)), dtype=np.uint8)


def decode_rgb(path: str | Path, min_side: int = 0, decoder: str = "auto") -> np.ndarray:
    """Decode ``path`` to RGB (H, W, 3) uint8, a JPEG reduced by :func:`reduction` (``min_side`` 0: full size).

    Raises InputFormatError naming ``path`` for a missing, unreadable, corrupt or truncated file, as
    :func:`~affectmae.datasets.images.open_rgb` does.
    """
    return _decode(Path(path), lambda width, height: reduction(width, height, min_side), decoder)


def decode_for_crop(path: str | Path, sample: Callable[[int, int], torch.Tensor], out_size: int,
                    decoder: str = "auto") -> tuple[np.ndarray, torch.Tensor]:
    """``path`` decoded for one random crop: ``(pixels (h, w, 3) uint8, params (5,) int64)``.

    ``sample(height, width)`` draws the crop params ``(top, left, height, width, flip)`` once, on the full size
    from the JPEG header; the JPEG is decoded reduced by :func:`crop_reduction` of that crop, and the params
    are returned in the reduced image's pixels. An image that is not a JPEG is decoded whole and the crop drawn
    on its size. The same errors as :func:`decode_rgb`.
    """
    drawn: dict[str, object] = {}

    def choose(width: int, height: int) -> int:
        if "params" not in drawn:  # a JPEG simplejpeg refused goes to Pillow: the crop is drawn once
            drawn.update(params=sample(height, width), size=(height, width))
        params = drawn["params"]
        drawn["d"] = crop_reduction(int(params[2]), int(params[3]), out_size)
        return drawn["d"]

    pixels = _decode(Path(path), choose, decoder)
    if "params" not in drawn:
        return pixels, sample(int(pixels.shape[0]), int(pixels.shape[1]))
    return pixels, _scaled_box(drawn["params"], drawn["size"], pixels.shape[:2], drawn["d"])


def _scaled_box(params: torch.Tensor, full: tuple[int, int], reduced: tuple[int, int], d: int) -> torch.Tensor:
    """Crop params on the full image -> on the image decoded at 1/d (reduced pixel j covers [j d, (j + 1) d))."""
    if d == 1 or (-(-full[0] // d), -(-full[1] // d)) != tuple(reduced):
        if tuple(reduced) == tuple(full):
            return params
        d = full[0] / reduced[0]  # a decoder that scaled otherwise: the measured ratio
    top, left, h, w, flip = (int(v) for v in params)
    y0, x0 = min(round(top / d), reduced[0] - 1), min(round(left / d), reduced[1] - 1)
    y1, x1 = min(max(round((top + h) / d), y0 + 1), reduced[0]), min(max(round((left + w) / d), x0 + 1), reduced[1])
    return torch.tensor([y0, x0, y1 - y0, x1 - x0, flip], dtype=torch.int64)
