"""Data side of fine-tuning: Aff-Wild2 frames augmented with a transform seeded per (seed, epoch, index).

As in :mod:`affectmae.training.pretrain_data`, every random choice for sample ``i`` in epoch ``e`` comes from a
generator seeded by ``(seed, e, i)``, so workers, processes and resuming never change what a sample looks like.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from affectmae.datasets.images import collate_skip_corrupt
from affectmae.models.augment import as_uint8_chw
from affectmae.training.seeds import step_seed

log = logging.getLogger(__name__)


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


def frame_sets(cfg: Any, spec: Any, img_size: int, norm: tuple = ()) -> tuple[Any, AugmentedFrames, Dataset]:
    """(training frames, augmented training set, validation set) of a ``FinetuneConfig``; with ``overfit_batches``
    a few fixed training frames, unaugmented, for both training and scoring. ``norm``: the encoder's (mean, std)."""
    from affectmae.datasets.affwild2 import AffWild2Frames
    from affectmae.datasets.pack import open_frames_pack
    from affectmae.models.augment import FaceAugment
    from affectmae.models.preprocess import eval_transform

    frames_root = cfg.frames or cfg.annotations
    min_side = img_size if cfg.decode_min_side is None else cfg.decode_min_side
    read = {"allow_missing_videos": cfg.allow_missing_videos, "min_side": min_side,
            "decoder": cfg.decoder, "pack": open_frames_pack(cfg.pack) if cfg.pack else None}
    train_frames = AffWild2Frames(cfg.annotations, frames_root, spec.name, "train", **read)
    val_frames = AffWild2Frames(cfg.annotations, frames_root, spec.name, "val", transform=eval_transform(img_size, *norm),
                                **read)
    train_set = AugmentedFrames(Subset(train_frames, range(0, len(train_frames), cfg.frame_stride)),
                                FaceAugment(img_size, cfg.crop_scale_min, cfg.hflip, *norm), cfg.seed,
                                device_augment=cfg.device_augment)
    val_set = Subset(val_frames, range(0, len(val_frames), cfg.val_stride))
    if cfg.overfit_batches:
        keep = evenly_spaced(len(train_frames), cfg.overfit_batches * cfg.batch_size)
        train_frames.transform = eval_transform(img_size, *norm)
        train_set = AugmentedFrames(Subset(train_frames, keep), unchanged, cfg.seed)  # no device_augment: fixed
        val_set = Subset(train_frames, keep)
        log.info("sanity mode: fitting %d fixed training frames (%d batches); the loss should fall towards 0",
                 len(keep), cfg.overfit_batches)
    return train_frames, train_set, val_set
