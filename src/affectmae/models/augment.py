"""The training augmentation in two halves, so that the random choices and the pixel work can run apart.

    aug = FaceAugment(112, crop_scale_min=0.2, hflip=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x = aug(image)                              # one image (PIL, (H, W, 3) uint8 array) -> (3, S, S) float32
    params = aug.sample(height, width)          # (5,) int64: top, left, height, width, flip  (uses torch's RNG)
    x = aug.apply(image_u8_chw, params)         # the pixels of one image, on any device
    xb = aug.apply_batch(images, params_b)      # a list of B (3, H_i, W_i) uint8 tensors on one device, (B, 5)
                                                # -> (B, 3, S, S): crop + resize per image, flip and
                                                # normalisation over the whole batch

``aug(image)`` gives exactly the tensor of :func:`affectmae.models.preprocess.train_transform` with the same
settings and the same torch RNG state: :meth:`FaceAugment.sample` makes the same random draws in the same
order as torchvision's ``RandomResizedCrop`` followed by ``RandomHorizontalFlip`` (tested against it), and
:meth:`FaceAugment.apply` calls the same torchvision functions. The split lets a DataLoader worker draw the
parameters (seeded per sample, :mod:`affectmae.training.seeds`) and hand the uint8 image to the GPU, which
crops, resizes, flips and normalises whole batches (``device_augment``).

The crop is resized on the uint8 image and stays uint8 until the flip is done, as the reference MAE recipe's
PIL ``RandomResizedCrop`` works: on the CPU torch's uint8 antialiased bicubic kernel (fixed-point; 3x faster
than resizing the float crop, and within mean |diff| 0.0003 of PIL's bicubic on the same pixels, normalised
units, ``tests/test_crop_decode.py``); on CUDA torchvision resizes in float and rounds to uint8, so the device
path differs from the CPU path by the two roundings only (at most one level in a few pixels,
``tests/test_input_pipeline.py``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from affectmae.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATION

CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision's RandomResizedCrop default, as the reference MAE recipe


def as_uint8_chw(image: Any) -> torch.Tensor:
    """A PIL image, an (H, W, 3) uint8 array or a (3, H, W) uint8 tensor -> (3, H, W) uint8 tensor."""
    if isinstance(image, torch.Tensor):
        return image
    if isinstance(image, np.ndarray):
        if not image.flags.writeable:  # a read-only array (a memory-mapped pack): torch wants its own copy
            image = image.copy()
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return v2.functional.pil_to_tensor(image)


class FaceAugment:
    """RandomResizedCrop(scale=(crop_scale_min, 1), bicubic, antialiased, on uint8) + optional horizontal flip +
    normalisation, as ``train_transform``; see the module doc."""

    def __init__(self, img_size: int, crop_scale_min: float, hflip: bool, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        self.img_size, self.scale, self.hflip = int(img_size), (float(crop_scale_min), 1.0), bool(hflip)
        self.mean, self.std = tuple(mean), tuple(std)
        self._log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))

    def sample(self, height: int, width: int) -> torch.Tensor:
        """(5,) int64 (top, left, height, width, flip) for an image of ``height`` x ``width``, from torch's RNG."""
        area = height * width
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = torch.exp(torch.empty(1).uniform_(self._log_ratio[0], self._log_ratio[1])).item()
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,)).item())
                left = int(torch.randint(0, width - w + 1, size=(1,)).item())
                break
        else:  # the central crop torchvision falls back to
            in_ratio = width / height
            if in_ratio < CROP_RATIO[0]:
                w, h = width, int(round(width / CROP_RATIO[0]))
            elif in_ratio > CROP_RATIO[1]:
                h, w = height, int(round(height * CROP_RATIO[1]))
            else:
                w, h = width, height
            top, left = (height - h) // 2, (width - w) // 2
        flip = bool(self.hflip and torch.rand(1).item() < 0.5)
        return torch.tensor([top, left, h, w, int(flip)], dtype=torch.int64)

    def _crop(self, image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 -> (3, S, S) uint8: the crop resized on the uint8 image (see the module doc), not flipped."""
        top, left, h, w = (int(v) for v in params[:4])
        return TF.resized_crop(image, top, left, h, w, [self.img_size, self.img_size], interpolation=INTERPOLATION,
                               antialias=True)

    def apply(self, image: Any, params: torch.Tensor) -> torch.Tensor:
        """One image (any form :func:`as_uint8_chw` takes) -> (3, S, S) float32, normalised."""
        x = self._crop(as_uint8_chw(image), params)
        if int(params[4]):
            x = TF.horizontal_flip(x)
        return TF.normalize(TF.to_dtype(x, torch.float32, scale=True), list(self.mean), list(self.std))

    def apply_batch(self, images: Sequence[torch.Tensor], params: torch.Tensor) -> torch.Tensor:
        """B images (3, H_i, W_i) uint8 on one device, params (B, 5) -> (B, 3, S, S) float32 on that device."""
        x = torch.stack([self._crop(img, p) for img, p in zip(images, params, strict=True)])  # (B, 3, S, S) uint8
        flip = params[:, 4].to(device=x.device, dtype=torch.bool)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (TF.to_dtype(x, torch.float32, scale=True) - mean) / std

    def __call__(self, image: Any) -> torch.Tensor:
        x = as_uint8_chw(image)
        return self.apply(x, self.sample(int(x.shape[-2]), int(x.shape[-1])))
