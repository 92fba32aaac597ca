"""Pictures the input-pipeline tests build JPEGs from."""

from __future__ import annotations

import numpy as np


def face_picture(size: int, seed: int) -> np.ndarray:
    """A smooth face-like picture with texture, (size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([200 * np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) * 6), 150 * x, 120 * y], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
