"""The common base of every face-image source (folder, FER2013, FER+, RAF-DB, AffectNet).

Items are ``(image, label)``: ``image`` an RGB PIL image (or ``transform(image)``), ``label`` an int in the
Aff-Wild2 expression order (:data:`affectmae.tasks.EXPRESSIONS`) or -1 when the source has none. A file
that cannot be decoded gives ``None`` (counted in ``skipped``) when ``skip_corrupt``, else raises
InputFormatError; batch with :func:`affectmae.datasets.images.collate_skip_corrupt`.

``min_side`` > 0 decodes a JPEG reduced inside the decoder to at least that shorter side
(:func:`affectmae.datasets.decode.decode_rgb`; the image is then an (H, W, 3) uint8 array); ``pack`` (set by
:func:`affectmae.datasets.pack.attach_face_pack`) reads the same pixels from a packed folder instead.
:meth:`FaceImages.read_cropped` decodes an image file for one random crop (crop-aware decoding,
:func:`affectmae.datasets.decode.decode_for_crop`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from affectmae.datasets.images import SkipCounter, load_item, open_rgb
from affectmae.errors import InputFormatError


class FaceImages(Dataset):
    """Base class. Subclasses fill ``_labels`` (N,) int64 and either ``_paths`` or override ``load_image``."""

    kind = "base"

    def __init__(self, source: str, transform: Callable[[Any], Any] | None = None, skip_corrupt: bool = True):
        self.source = source
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.skipped = SkipCounter(f"{self.kind}:{source}")
        self._paths: list[Path] = []
        self._labels = np.zeros(0, dtype=np.int64)
        self.summary: dict[str, Any] = {"kind": self.kind, "source": source}
        self.min_side, self.decoder = 0, "auto"  # JPEG decoding (build_face_dataset sets them)
        self.pack: Any = None  # a datasets.pack.Pack holding this source's items from pack_offset on
        self.pack_offset = 0

    def __len__(self) -> int:
        return int(len(self._labels))

    def label(self, i: int) -> int:
        return int(self._labels[i])

    def load_image(self, i: int) -> Image.Image | np.ndarray:
        """The RGB image of item ``i``; raises InputFormatError when it cannot be decoded."""
        if self.min_side > 0:
            from affectmae.datasets.decode import decode_rgb

            return decode_rgb(self._paths[i], self.min_side, self.decoder)
        return open_rgb(self._paths[i])

    def read_image(self, i: int) -> Image.Image | np.ndarray:
        """Item ``i``'s image from the pack when one is attached, else :meth:`load_image`."""
        if self.pack is None:
            return self.load_image(i)
        try:
            return self.pack.pixels(self.pack_offset + i)
        except InputFormatError as err:  # undecodable when packed: named by its own file, as from the JPEG path
            where = self._paths[i] if i < len(self._paths) else self.source
            raise InputFormatError(where, err.message) from None

    def __getitem__(self, i: int) -> tuple[Any, int] | None:
        image = load_item(lambda: self.read_image(i), self.transform, self.skip_corrupt, self.skipped)
        return None if image is None else (image, self.label(i))

    def read_cropped(self, i: int, sample: Callable[[int, int], Any], out_size: int) -> tuple[Any, int] | None:
        """Item ``i`` for one random crop: ``((pixels (h, w, 3) uint8, params (5,)), label)``, or None (corrupt,
        counted as in ``__getitem__``). An image file is decoded at its crop's scale (``decode_for_crop``); a
        packed item, or a source that decodes otherwise, is read as usual and ``sample(h, w)`` drawn on it."""
        def load() -> tuple[np.ndarray, Any]:
            if self.pack is None and self._paths and type(self).load_image is FaceImages.load_image:
                from affectmae.datasets.decode import decode_for_crop

                return decode_for_crop(self._paths[i], sample, out_size, self.decoder)
            pixels = np.asarray(self.read_image(i), dtype=np.uint8)
            return pixels, sample(int(pixels.shape[0]), int(pixels.shape[1]))

        item = load_item(load, None, self.skip_corrupt, self.skipped)
        return None if item is None else (item, self.label(i))
