"""How a face image becomes the encoder's input: the one definition used by every stage.

Pretraining crops, fine-tuning crops, feature extraction and ``analyze`` all go through this module, so an
encoder sees its inputs prepared the same way in training and in use:

1. RGB, scaled to float32 in [0, 1];
2. resized to ``img_size`` x ``img_size`` with :data:`INTERPOLATION` (bicubic, antialiased); in training a
   random resized crop, resized on the uint8 image and rounded to uint8 before step 1, as the reference MAE
   recipe's PIL ``RandomResizedCrop`` does (torch's uint8 kernel: mean |diff| 0.0003 from PIL's on the same
   pixels, normalised units; 3x faster than the float resize, docs/benchmarks.md); elsewhere on the float image;
3. normalised with the encoder's mean and standard deviation: the ones recorded in its architecture
   (:func:`encoder_normalisation`; ImageNet's for this project's encoders and reference-MAE checkpoints,
   a timm checkpoint's own from its ``config.json``).

``preprocess_frames`` takes batches of uint8 frames (extraction, analysis); ``eval_transform`` and
``train_transform`` take single images (PIL or uint8 arrays) for the training datasets. For an image that
already has the encoder's size, ``eval_transform`` and ``preprocess_frames`` give the same tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATION = v2.InterpolationMode.BICUBIC
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, OpenCV's RGB -> grey


def encoder_normalisation(encoder: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) an encoder was trained with: recorded in ``encoder.arch``; ImageNet's when absent
    (the pixel baseline, encoders saved before the normalisation was recorded)."""
    arch = getattr(encoder, "arch", None) or {}
    return tuple(arch.get("mean") or IMAGENET_MEAN), tuple(arch.get("std") or IMAGENET_STD)


def grey_from_normalised(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised frames ``(B, 3, H, W)`` -> grey ``(B, 1, H, W)`` float32 in [0, 1]: the normalisation undone
    (``mean`` and ``std`` broadcastable to ``(1, 3, 1, 1)``), clamped, then BT.601 weights (as OpenCV's)."""
    rgb = (x.float() * std + mean).clamp(0.0, 1.0)
    weights = torch.tensor(GREY_WEIGHTS, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True)


def _normalise(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    shape = (1, 3, 1, 1) if x.ndim == 4 else (3, 1, 1)
    return (x - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def preprocess_frames(frames: np.ndarray | torch.Tensor, img_size: int, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD) -> torch.Tensor:
    """frames: uint8 (B, H, W, 3) RGB -> float32 (B, 3, S, S), S = ``img_size``, resized and normalised."""
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (B, H, W, 3) RGB, got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8, got {x.dtype}")
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode=INTERPOLATION.value, align_corners=False,
                          antialias=True)
    return _normalise(x, mean, std)


def resize_frame(image: np.ndarray, img_size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (S, S, 3) with the same interpolation, for batching frames of other sizes."""
    if image.shape[:2] == (img_size, img_size):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(img_size, img_size), mode=INTERPOLATION.value, align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _to_float() -> list[Any]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]


def eval_transform(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """One image -> float32 (3, S, S): resize and normalise, no randomness (validation, figures)."""
    return v2.Compose([*_to_float(), v2.Resize((img_size, img_size), interpolation=INTERPOLATION, antialias=True),
                       v2.Normalize(mean, std)])


def train_transform(img_size: int, crop_scale_min: float, hflip: bool, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD) -> v2.Compose:
    """One image -> float32 (3, S, S): a random resized crop covering ``crop_scale_min``-1 of the area, resized
    on the uint8 image, an optional horizontal flip, then the normalisation (MAE pretraining and fine-tuning)."""
    steps: list[Any] = [v2.ToImage(), v2.RandomResizedCrop(img_size, scale=(crop_scale_min, 1.0),
                                                           interpolation=INTERPOLATION, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)
