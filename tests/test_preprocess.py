"""One input definition per encoder: every path that feeds an encoder prepares an image the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from affectmae.models.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    preprocess_frames,
    resize_frame,
    train_transform,
)


@pytest.fixture()
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)


def _reference(img: np.ndarray, size: int) -> torch.Tensor:
    """Written out by hand: float in [0, 1], bicubic antialiased resize, ImageNet normalisation."""
    x = torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return ((x - mean) / std)[0].float()


def test_frames_eval_and_training_paths_agree(image):
    ref = _reference(image, 32)
    batch = preprocess_frames(image[None], 32)[0]
    single = eval_transform(32)(Image.fromarray(image))
    # a crop covering the whole image, not flipped, is the evaluation transform
    torch.manual_seed(0)
    whole = train_transform(32, crop_scale_min=1.0, hflip=False)
    whole.transforms[1].ratio = (40 / 48, 40 / 48)
    crop = whole(Image.fromarray(image))
    assert batch.shape == single.shape == crop.shape == (3, 32, 32)
    assert torch.allclose(batch, ref, atol=1e-5)
    assert torch.allclose(single, ref, atol=1e-5)
    # the training crop is resized on uint8 as PIL resizes (clipped to uint8 between the two passes): measured
    # within one level of PIL's bicubic (mean 0.005 levels); the float resize is up to 0.20 away on this noise
    pil = np.asarray(Image.fromarray(image).resize((32, 32), Image.BICUBIC), dtype=np.float32)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    levels = ((crop * std + mean) * 255 - torch.from_numpy(pil).permute(2, 0, 1)).abs()
    assert levels.max().item() < 1.01 and levels.mean().item() < 0.01 and (crop - ref).abs().max().item() > 0.2


def test_native_size_is_only_normalised(image):
    x = preprocess_frames(image[None], 40)  # not square: resized
    assert x.shape == (1, 3, 40, 40)
    square = image[:40, :40]
    y = preprocess_frames(square[None], 40)[0]
    expected = (torch.from_numpy(square).permute(2, 0, 1).float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(y, expected, atol=1e-6)
    assert resize_frame(square, 40) is square


def test_resize_frame_uses_the_same_interpolation(image):
    small = resize_frame(image, 16)
    assert small.dtype == np.uint8 and small.shape == (16, 16, 3)
    ref = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(16, 16), mode="bicubic",
                        align_corners=False, antialias=True)[0].permute(1, 2, 0).round().clamp(0, 255)
    assert np.array_equal(small, ref.to(torch.uint8).numpy())


def test_train_transform_flips_and_crops_deterministically_per_seed(image):
    t = train_transform(24, crop_scale_min=0.3, hflip=True)
    torch.manual_seed(5)
    a = t(Image.fromarray(image))
    torch.manual_seed(5)
    b = t(Image.fromarray(image))
    assert a.shape == (3, 24, 24) and torch.equal(a, b)


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match=r"frames must be \(B, H, W, 3\) RGB, got shape \(8, 8, 3\)"):
        preprocess_frames(np.zeros((8, 8, 3), np.uint8), 8)
    with pytest.raises(ValueError, match="frames must be uint8, got torch.float32"):
        preprocess_frames(np.zeros((1, 8, 8, 3), np.float32), 8)
