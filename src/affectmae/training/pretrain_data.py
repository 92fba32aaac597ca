"""Data side of MAE pretraining: deterministic augmentation + masking noise per sample, and the
reconstruction figure.

Every random choice for sample ``i`` in epoch ``e`` (crop, flip, which patches are masked) comes from a
generator seeded by ``(seed, e, i)``. Batching, the number of processes, DataLoader workers and
resuming therefore never change what a sample looks like, which is what makes resume and multi-process
runs reproduce the single-process loss curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from affectmae.datasets.images import collate_skip_corrupt
from affectmae.io import atomic_path
from affectmae.models.augment import as_uint8_chw
from affectmae.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from affectmae.training.seeds import step_seed


def _image_of(item: Any) -> Any:
    """A face-image dataset item is ``(image, label)``; a bare image is accepted too."""
    return item[0] if isinstance(item, (tuple, list)) else item


class MAEAugmented(Dataset):
    """Wraps a face-image dataset: item ``i`` -> ``(image (3, S, S), noise (L,))``, or None if corrupt.

    ``set_epoch(e)`` sets the epoch of plain indices; an ``(epoch, i)`` key (:class:`affectmae.training.loader.
    EpochBatches`, for persistent workers) carries its own. With ``device_augment`` (``transform`` a
    :class:`~affectmae.models.augment.FaceAugment`) the item is ``(uint8 (3, H, W), params (5,), noise (L,))``:
    the same random draws, the pixel work left to :meth:`FaceAugment.apply_batch` on the training device.
    ``crop_decode`` (``images`` a :class:`~affectmae.datasets.face_images.FaceImageCollection`): each JPEG is
    decoded at its crop's scale, the crop drawn first on the header's size (``datasets/decode.py``).
    """

    def __init__(self, images: Dataset, transform: Any, num_patches: int, seed: int, device_augment: bool = False,
                 crop_decode: bool = False):
        self.images, self.transform, self.num_patches, self.seed = images, transform, num_patches, seed
        self.device_augment, self.crop_decode = device_augment, crop_decode
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        if self.crop_decode:
            return self._crop_decoded(epoch, i)
        item = self.images[i]
        if item is None:  # corrupt file: the source counted and logged it
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(self.seed, epoch, i))
            if self.device_augment:
                pixels = as_uint8_chw(_image_of(item))
                params = self.transform.sample(int(pixels.shape[-2]), int(pixels.shape[-1]))
                return pixels, params, torch.rand(self.num_patches)
            image = self.transform(_image_of(item))
            noise = torch.rand(self.num_patches)
        return image, noise

    def _crop_decoded(self, epoch: int, i: int):
        """The item with the crop drawn while decoding: the same draws, in the same order, as the other paths."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(self.seed, epoch, i))
            item = self.images.read_cropped(i, self.transform.sample, self.transform.img_size)
            if item is None:
                return None
            pixels, params = as_uint8_chw(item[0][0]), item[0][1]
            noise = torch.rand(self.num_patches)
        if self.device_augment:
            return pixels, params, noise
        return self.transform.apply(pixels, params), noise


def collate_augment(batch: list[Any]) -> tuple[Any, int]:
    """``collate_skip_corrupt`` for :class:`MAEAugmented` items, also with ``device_augment``: then
    ``(list of B uint8 (3, H_i, W_i), params (B, 5), noise (B, L))`` (the images may differ in size)."""
    kept = [item for item in batch if item is not None]
    if kept and len(kept[0]) == 3:
        return ([k[0] for k in kept], torch.stack([k[1] for k in kept]), torch.stack([k[2] for k in kept])), \
            len(batch) - len(kept)
    return collate_skip_corrupt(batch)


def fixed_batch(images: Dataset, img_size: int, count: int) -> torch.Tensor:
    """The first ``count`` readable images, resized and normalised: (N, 3, S, S) (for figures)."""
    transform = eval_transform(img_size)
    out = []
    for i in range(len(images)):
        item = images[i]
        if item is not None:
            out.append(transform(_image_of(item)))
        if len(out) == count:
            break
    return torch.stack(out)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Normalised images (N, 3, H, W) -> uint8 (N, H, W, 3)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (x.detach().float().cpu() * std + mean).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def save_reconstruction_figure(path: str | Path, original: torch.Tensor, masked: torch.Tensor,
                               recon: torch.Tensor, pad: int = 2) -> None:
    """One row per image: original | masked input | reconstruction (PNG, written atomically).

    All tensors (N, 3, H, W) in normalised pixel space; masked patches of ``masked`` are drawn grey.
    """
    cols = [to_uint8(original), to_uint8(masked), to_uint8(recon)]
    n, h, w, _ = cols[0].shape
    canvas = np.full((n * (h + pad) + pad, 3 * (w + pad) + pad, 3), 255, np.uint8)
    for r in range(n):
        for c, imgs in enumerate(cols):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y:y + h, x:x + w] = imgs[r]
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
