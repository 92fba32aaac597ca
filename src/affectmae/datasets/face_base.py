"""The common base of every face-image source (folder, FER2013, FER+, RAF-DB, AffectNet).

Items are ``(image, label)``: ``image`` an RGB PIL image (or ``transform(image)``), ``label`` an int in the
Aff-Wild2 expression order (:data:`affectmae.tasks.EXPRESSIONS`) or -1 when the source has none. A file
that cannot be decoded gives ``None`` (counted in ``skipped``) when ``skip_corrupt``, else raises
InputFormatError; batch with :func:`affectmae.datasets.images.collate_skip_corrupt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from affectmae.datasets.images import SkipCounter, load_item, open_rgb


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

    def __len__(self) -> int:
        return int(len(self._labels))

    def label(self, i: int) -> int:
        return int(self._labels[i])

    def load_image(self, i: int) -> Image.Image:
        """The RGB image of item ``i``; raises InputFormatError when it cannot be decoded."""
        return open_rgb(self._paths[i])

    def __getitem__(self, i: int) -> tuple[Any, int] | None:
        image = load_item(lambda: self.load_image(i), self.transform, self.skip_corrupt, self.skipped)
        return None if image is None else (image, self.label(i))
