"""Reading face images safely: one loader for every dataset, and a way to skip corrupt files visibly.

Public API::

    IMAGE_EXTENSIONS                                  # (".jpg", ".jpeg", ".png", ".bmp", ".webp")
    open_rgb(path) -> PIL.Image.Image                 # fully decoded, mode "RGB"
    open_rgb_reduced(path, draft) -> PIL.Image.Image  # draft(img) first (JPEG DCT scaling; datasets/decode.py)
    load_rgb(path) -> np.ndarray                      # (H, W, 3) uint8
    SkipCounter(name)                                 # .add(path, err), .count, .examples, summary()
    load_item(load, transform, skip_corrupt, skipped) -> image | None   # a dataset item's image
    collate_skip_corrupt(batch) -> (collated | None, n_skipped)

Both loaders raise :class:`~affectmae.errors.InputFormatError` naming the file for anything PIL cannot
decode: a missing file, an unknown format, a truncated or corrupt JPEG/PNG. Truncated files are errors
because we never set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` (which would silently fill the missing
part with grey).

Skipping corrupt images inside a dataset: the dataset's ``__getitem__`` reads through :func:`load_item`, which
catches the InputFormatError, logs a warning, adds it to the dataset's :class:`SkipCounter` and returns ``None``. DataLoader workers are separate
processes, so their counters never reach the main process; use ``collate_fn=collate_skip_corrupt``,
which drops the ``None`` items and returns how many it dropped next to the batch, so the training loop
can add them up and report the total.
"""

from __future__ import annotations

import logging
import struct
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from affectmae.errors import InputFormatError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Everything PIL is known to raise for a file it cannot decode. UnidentifiedImageError and
# "image file is truncated" are OSError; broken headers give SyntaxError/ValueError/struct.error.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    Image.DecompressionBombError,
)


def open_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode an image as an RGB PIL image (grayscale, palette and RGBA are converted).

    Raises InputFormatError naming ``path`` when the file is missing, unreadable, corrupt or truncated.
    """
    return open_rgb_reduced(path, None)


def open_rgb_reduced(path: str | Path, draft: Callable[[Image.Image], None] | None) -> Image.Image:
    """:func:`open_rgb` with ``draft(img)`` called on the opened, not yet decoded image (JPEG DCT scaling,
    :mod:`affectmae.datasets.decode`); the same errors."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # PIL warns (rather than raises) for some broken EXIF blocks; the pixels are still fine.
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as img:
                if draft is not None:
                    draft(img)
                img.load()
                if img.mode != "RGB":
                    # RGBA/LA: drop alpha; P/L/I;16/CMYK: convert to 8-bit RGB
                    img = img.convert("RGB")
                else:
                    img = img.copy()
    except FileNotFoundError:
        raise InputFormatError(path, "image file not found") from None
    except Image.DecompressionBombError as err:
        raise InputFormatError(path, f"image too large to decode safely ({err})") from None
    except _DECODE_ERRORS as err:
        raise InputFormatError(path, f"cannot decode image ({type(err).__name__}: {err})") from None
    return img


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file into an array ``(H, W, 3) uint8`` (RGB order). Raises InputFormatError."""
    return np.asarray(open_rgb(path), dtype=np.uint8)


class SkipCounter:
    """Counts images skipped because they could not be decoded, keeping a few examples for the report.

    Thread safe. In DataLoader worker processes each worker has its own copy; the authoritative count in
    that case is the one returned by :func:`collate_skip_corrupt`.
    """

    def __init__(self, name: str = "images", max_examples: int = 5):
        self.name = name
        self.max_examples = max_examples
        self.count = 0
        self.examples: list[str] = []
        self._lock = threading.Lock()

    def add(self, path: str | Path, err: BaseException | str) -> None:
        with self._lock:
            self.count += 1
            if len(self.examples) < self.max_examples:
                self.examples.append(f"{path}: {err}")
        log.warning("skipping corrupt image in %s (%d so far): %s", self.name, self.count, err)

    def summary(self) -> dict[str, Any]:
        return {"skipped_corrupt": self.count, "examples": list(self.examples)}

    # a Lock cannot be pickled; DataLoader workers get a fresh one
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def load_item(load: Callable[[], Image.Image], transform: Callable[[Any], Any] | None, skip_corrupt: bool,
              skipped: SkipCounter) -> Any | None:
    """The image of one dataset item: ``load()``, then ``transform`` when given. An image that cannot be decoded
    gives ``None``, counted in ``skipped``, when ``skip_corrupt``; otherwise its InputFormatError is raised."""
    try:
        image = load()
    except InputFormatError as err:
        if not skip_corrupt:
            raise
        skipped.add(err.path, err)
        return None
    return image if transform is None else transform(image)


def collate_skip_corrupt(batch: list[Any]) -> tuple[Any, int]:
    """``collate_fn`` for datasets that return ``None`` for a corrupt image.

    Returns ``(collated, n_skipped)``: ``collated`` is ``torch.utils.data.default_collate`` of the items
    that are not None (``None`` when every item was corrupt) and ``n_skipped`` the number dropped.
    """
    from torch.utils.data import default_collate

    kept = [item for item in batch if item is not None]
    skipped = len(batch) - len(kept)
    return (default_collate(kept) if kept else None), skipped
