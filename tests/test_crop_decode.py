"""Crop-aware decoding: the crop drawn on the JPEG header's size, the JPEG decoded at the crop's scale."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from affectmae.datasets.decode import crop_reduction, decode_for_crop
from affectmae.datasets.face_images import build_face_dataset
from affectmae.datasets.images import load_rgb
from affectmae.errors import InputFormatError
from affectmae.models.augment import FaceAugment
from affectmae.models.preprocess import train_transform
from affectmae.training.pretrain_data import MAEAugmented, collate_augment
from image_helpers import face_picture

pytest.importorskip("simplejpeg")


def _jpegs(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(sizes):
        Image.fromarray(face_picture(s, i)).save(folder / f"{i:03d}.jpg", quality=95)
    return folder


def test_crop_reduction_keeps_the_output_size_on_the_crop():
    assert [crop_reduction(s, 1000, 112) for s in (100, 223, 224, 447, 448, 895, 896)] == [1, 1, 2, 2, 4, 4, 8]
    assert crop_reduction(300, 200, 64) == 2 and crop_reduction(112, 112, 112) == 1


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_the_crop_is_drawn_on_the_full_size_and_scaled_to_the_decoded_pixels(tmp_path, decoder):
    path = _jpegs(tmp_path, (500,)) / "000.jpg"
    aug = FaceAugment(112, 0.2, True)
    seen = []
    for seed in range(40):
        torch.manual_seed(seed)
        full = aug.sample(500, 500)  # what the full decode draws
        after = torch.rand(1).item()
        torch.manual_seed(seed)
        pixels, params = decode_for_crop(path, aug.sample, 112, decoder)
        d = crop_reduction(int(full[2]), int(full[3]), 112)
        seen.append(d)
        assert pixels.shape == (math.ceil(500 / d),) * 2 + (3,)
        top, left, h, w, flip = full.tolist()
        assert params.tolist() == [round(top / d), round(left / d), round((top + h) / d) - round(top / d),
                                   round((left + w) / d) - round(left / d), flip]
        assert min(params[2:4].tolist()) >= 112  # never smaller than the output: no more upsampling than full size
        assert torch.rand(1).item() == after  # the crop was drawn exactly once
    assert set(seen) == {1, 2, 4}


def test_a_crop_decoded_at_full_size_is_train_transform_exactly(tmp_path):
    path = _jpegs(tmp_path, (200,)) / "000.jpg"  # every crop of a 200-px image is under 224 px: d = 1
    aug, ref = FaceAugment(112, 0.2, True), train_transform(112, 0.2, True)
    for seed in range(5):
        torch.manual_seed(seed)
        expected = ref(Image.fromarray(load_rgb(path)))
        torch.manual_seed(seed)
        pixels, params = decode_for_crop(path, aug.sample, 112)
        assert pixels.shape == (200, 200, 3) and torch.equal(aug.apply(pixels, params), expected)


def test_the_crop_decoded_tensor_against_the_reference_mae_pipeline(tmp_path):
    """Independent references: PIL's bicubic on the same decoded crop, and torchvision's RandomResizedCrop
    (interpolation=3) + flip + ToTensor + Normalize (the MAE recipe) on the full decode, with the same seed."""
    path = _jpegs(tmp_path, (500,)) / "000.jpg"
    aug, norm = FaceAugment(112, 0.2, True), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    ref = T.Compose([T.RandomResizedCrop(112, scale=(0.2, 1.0), interpolation=3), T.RandomHorizontalFlip(),
                     T.ToTensor(), norm])
    same, full = [], []
    for seed in range(12):
        torch.manual_seed(seed)
        pixels, params = decode_for_crop(path, aug.sample, 112)
        ours = aug.apply(pixels, params)
        top, left, h, w, flip = params.tolist()
        pil = Image.fromarray(pixels).crop((left, top, left + w, top + h)).resize((112, 112), Image.BICUBIC)
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else pil
        same.append((ours - norm(T.functional.to_tensor(pil))).abs())
        torch.manual_seed(seed)
        full.append((ours - ref(Image.fromarray(load_rgb(path)))).abs())
    same, full = torch.stack(same), torch.stack(full)
    # measured on the same pixels: mean 0.000046, at most one level (1 / 255 / 0.224 = 0.0175; both fixed point)
    assert same.mean().item() < 6e-5 and same.max().item() < 0.0176
    # against the full decode: the DCT-scaled decode's pixels (measured mean 0.0103, max 0.120)
    assert full.mean().item() < 0.012 and full.max().item() < 0.13


def test_corrupt_files_raise_the_errors_of_load_rgb(tmp_path):
    data = (_jpegs(tmp_path, (300,)) / "000.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    aug = FaceAugment(112, 0.2, True)
    for name in ("cut.jpg", "absent.jpg"):
        with pytest.raises(InputFormatError) as today:
            load_rgb(tmp_path / name)
        for decoder in ("simplejpeg", "pillow"):
            with pytest.raises(InputFormatError) as err:
                decode_for_crop(tmp_path / name, aug.sample, 112, decoder)
            assert str(err.value) == str(today.value)


def test_mae_items_with_crop_decoding_are_the_full_decode_within_resampling(tmp_path):
    folder = _jpegs(tmp_path / "faces", (500, 480, 260, 120))
    Image.fromarray(face_picture(300, 9)).save(folder / "004.png")  # not a JPEG: decoded whole, the crop drawn on it
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8 broken")
    aug = FaceAugment(112, 0.2, True)
    faces = build_face_dataset([f"folder:{folder}"])
    full = MAEAugmented(faces, aug, 49, seed=0)  # the full decode (min_side 0)
    cropped = MAEAugmented(faces, aug, 49, seed=0, crop_decode=True)
    diffs = []
    for key in [(e, i) for e in (0, 1) for i in range(5)]:
        x, y = full[key], cropped[key]
        assert torch.equal(x[1], y[1])  # the masking noise: the same draws in the same order
        diffs.append((x[0] - y[0]).abs().mean().item())
        if key[1] >= 3:  # 120 px and the PNG: decoded at full size, identical
            assert torch.equal(x[0], y[0])
    assert max(diffs) < 0.05  # normalised units: the DCT-scaled decode's resampling, nothing else
    assert full[(0, 5)] is None and cropped[(0, 5)] is None and faces.sources[0].skipped.count == 2
    device = MAEAugmented(faces, aug, 49, seed=0, device_augment=True, crop_decode=True)
    (images, params, noise), skipped = collate_augment([device[(1, i)] for i in range(6)])
    assert skipped == 1 and params.shape == (5, 5) and noise.shape == (5, 49)
    assert [im.shape[1] for im in images[2:]] == [260, 120, 300]  # crops under 224 px: decoded whole
    assert all(min(p[2:4].tolist()) >= 112 for p in params[:3])
    on_device = aug.apply_batch(images, params)
    assert (on_device - torch.stack([cropped[(1, i)][0] for i in range(5)])).abs().max().item() < 1e-6


def test_pretrain_decodes_at_the_crop_scale_by_default_and_records_it(tmp_path):
    from affectmae.cli import main
    from affectmae.training.metrics_log import read_metrics

    folder = _jpegs(tmp_path / "faces", (200, 180, 150, 120, 100, 90))
    losses = {}
    for name, extra in (("cpu", []), ("device", ["device_augment=true"]), ("fixed", ["decode_min_side=0"])):
        run = tmp_path / name
        assert main(["pretrain", "--images", f"folder:{folder}", "-o", str(run), "--config", "pretrain_tiny",
                     "depth=1", "img_size=32", "decoder_dim=32", "decoder_depth=1", "decoder_heads=2", "epochs=2",
                     "batch_size=3", "recon_every_epochs=0", "tensorboard=false", *extra]) == 0
        losses[name] = [e["loss"] for e in read_metrics(run, "epoch")]
    assert "decode_min_side: null" in (tmp_path / "cpu" / "config.yaml").read_text()
    assert "decode_min_side: 0" in (tmp_path / "fixed" / "config.yaml").read_text()
    assert losses["device"] == pytest.approx(losses["cpu"], abs=1e-6)
    assert losses["cpu"] != losses["fixed"]  # 32-px crops of 90-200 px images: most decoded at 1/2 or 1/4
