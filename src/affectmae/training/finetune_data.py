"""Data side of fine-tuning: Aff-Wild2 frames augmented with a transform seeded per (seed, epoch, index).

As in :mod:`affectmae.training.pretrain_data`, every random choice for sample ``i`` in epoch ``e`` comes from a
generator seeded by ``(seed, e, i)``, so workers, processes and resuming never change what a sample looks like.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from affectmae.datasets.images import collate_skip_corrupt
from affectmae.models.augment import as_uint8_chw
from affectmae.training.seeds import step_seed


class AugmentedFrames(Dataset):
    """(image, label) items with a transform seeded per (seed, epoch, index); None stays None (corrupt). An
    ``(epoch, i)`` key carries its own epoch (persistent workers, training/loader.py). With ``device_augment``
    (``transform`` a FaceAugment) items are ``(uint8 (3, H, W), params (5,), label)`` for the device."""

    def __init__(self, frames: Dataset, transform: Any, seed: int, device_augment: bool = False):
        self.frames, self.transform, self.seed, self.epoch = frames, transform, seed, 0
        self.device_augment = device_augment

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        item = self.frames[i]
        if item is None:
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(self.seed, epoch, i))
            if self.device_augment:
                pixels = as_uint8_chw(item[0])
                return pixels, self.transform.sample(int(pixels.shape[-2]), int(pixels.shape[-1])), item[1]
            return self.transform(item[0]), item[1]


def collate_frames(batch: list[Any]) -> tuple[Any, int]:
    """``collate_skip_corrupt``, and for ``device_augment`` items ``(list of uint8 images, params (B, 5), labels)``."""
    kept = [item for item in batch if item is not None]
    if kept and len(kept[0]) == 3:
        labels = torch.utils.data.default_collate([k[2] for k in kept])
        return ([k[0] for k in kept], torch.stack([k[1] for k in kept]), labels), len(batch) - len(kept)
    return collate_skip_corrupt(batch)


def unchanged(image: Any) -> Any:
    """The identity transform (the fixed frames of ``overfit_batches``)."""
    return image


def evenly_spaced(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n)`` (all of them when ``count >= n``)."""
    if count >= n:
        return list(range(n))
    return np.linspace(0, n - 1, count).round().astype(int).tolist()


def images_on_device(batch: Any, device: torch.device, augment: Any = None) -> torch.Tensor:
    """The batch's images on ``device``: ``batch[0]`` as it is, or with ``augment`` (``device_augment``) the
    uint8 images ``batch[0]`` cropped, resized, flipped and normalised there with the params ``batch[1]``."""
    if augment is None:
        return batch[0].to(device, non_blocking=True)
    return augment.apply_batch([im.to(device, non_blocking=True) for im in batch[0]], batch[1].to(device))
