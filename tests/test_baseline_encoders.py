"""Baseline encoders of the feature tables: grey pixels and a randomly initialised ViT, through `extract`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from affectmae.cli import main
from affectmae.errors import AffectMAEError
from affectmae.features.store import FeatureStore
from affectmae.models.baseline_encoders import PixelEncoder, build_extract_encoder, random_encoder
from affectmae.models.preprocess import preprocess_frames, resize_frame
from affectmae.models.vit import build_encoder, save_encoder
from test_features import _write_dataset


def test_pixel_encoder_values_on_a_known_image():
    frame = np.zeros((1, 4, 4, 3), np.uint8)
    frame[0, 0, 0] = (255, 255, 255)  # white: grey 1
    frame[0, 1, 2] = (255, 0, 0)  # pure red: grey 0.299
    frame[0, 3, 3] = (0, 0, 255)  # pure blue: grey 0.114
    frame[0, 2, :, :] = 51  # a grey row of 0.2
    grey = np.zeros((4, 4))
    grey[0, 0], grey[1, 2], grey[3, 3], grey[2, :] = 1.0, 0.299, 0.114, 0.2
    expected = (grey.ravel() - grey.mean()) / grey.std()  # population std
    out = PixelEncoder(4).forward_features(preprocess_frames(frame, 4))
    assert out["pooled"].shape == (1, 16) and out["grey"].shape == (1, 4, 4)
    np.testing.assert_allclose(out["grey"][0].numpy(), grey, atol=2e-6)
    np.testing.assert_allclose(out["pooled"][0].numpy(), expected, atol=2e-5)
    constant = np.full((1, 4, 4, 3), 128, np.uint8)
    assert torch.equal(PixelEncoder(4)(preprocess_frames(constant, 4)), torch.zeros(1, 16))


def test_pixel_encoder_downscales_to_576_standardised_values():
    frames = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    enc, ident, meta = build_extract_encoder("pixels")
    assert ident == "pixels:24" and enc.embed_dim == 576 and enc.arch["img_size"] == 24 and meta["size"] == 24
    pooled = enc.forward_features(preprocess_frames(frames, 112))["pooled"]
    assert pooled.shape == (2, 576)
    np.testing.assert_allclose(pooled.mean(1).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(pooled.pow(2).mean(1).numpy(), 1.0, atol=1e-4)
    with pytest.raises(AffectMAEError, match="expected pixels:<size>, e.g. pixels:24"):
        build_extract_encoder("pixels:big")


def test_extract_pixels_goes_through_the_same_path(tmp_path):
    _write_dataset(tmp_path, {"a": 5, "b": 3}, missing={("a", 2)})
    out = tmp_path / "px"
    assert main(["extract", "--encoder", "pixels:4", "--frames", str(tmp_path / "cropped_aligned"),
                 "--data", str(tmp_path), "-o", str(out)]) == 0
    meta = json.loads((out / "features.json").read_text())
    assert meta["encoder"] == "pixels:4" and meta["dim"] == 16 and meta["encoder_meta"]["kind"] == "pixels"
    feats, present = FeatureStore(out).load("a", mmap=False)
    assert feats.shape == (5, 16) and present.tolist() == [True, True, False, True, True]
    # frames are resized to the encoder's size by the one input definition (models/preprocess.py)
    img = resize_frame(np.asarray(Image.open(tmp_path / "cropped_aligned" / "a" / "00001.jpg").convert("RGB")), 4)
    grey = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    expected = (grey.ravel() - grey.mean()) / grey.std()
    np.testing.assert_allclose(feats[0].astype(np.float64), expected, atol=5e-3)  # float16 storage
    np.testing.assert_allclose(feats[2], (feats[1].astype(np.float32) + feats[3]) / 2, atol=2e-3)  # filled


@pytest.fixture()
def source_encoder(tmp_path):
    torch.manual_seed(0)
    enc = build_encoder("tiny", img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2)
    path = tmp_path / "encoder.safetensors"
    save_encoder(enc, path)
    return path, enc


def test_random_encoder_is_seeded_and_differs_from_the_source(source_encoder):
    path, source = source_encoder
    state_before = torch.random.get_rng_state()
    a, b, c = random_encoder(path, 1), random_encoder(path, 1), random_encoder(path, 2)
    assert torch.equal(torch.random.get_rng_state(), state_before)  # the global RNG is untouched
    assert a.arch == source.arch and a.embed_dim == 24
    src, sa, sb, sc = (m.state_dict() for m in (source, a, b, c))
    assert list(sa) == list(src)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    w = "blocks.0.attn.qkv.weight"
    assert not torch.allclose(sa[w], sc[w]) and not torch.allclose(sa[w], src[w])
    assert (sa[w] - src[w]).abs().max() > 0.01
    with pytest.raises(AffectMAEError, match="'random:' needs the path of an encoder"):
        build_extract_encoder("random:")


def test_extract_random_encoder_records_seed_and_matches_it(tmp_path, source_encoder, capsys):
    path, _ = source_encoder
    _write_dataset(tmp_path, {"a": 4})
    out = tmp_path / "rnd"
    assert main(["extract", "--encoder", f"random:{path}", "--seed", "3", "--frames",
                 str(tmp_path / "cropped_aligned"), "--data", str(tmp_path), "-o", str(out)]) == 0
    meta = json.loads((out / "features.json").read_text())
    assert meta["encoder"] == f"random:{path.resolve()}@seed3"
    assert meta["encoder_meta"]["seed"] == 3 and meta["encoder_meta"]["arch_from"] == str(path.resolve())
    feats, _ = FeatureStore(out).load("a", mmap=False)
    frames = np.stack([np.asarray(Image.open(tmp_path / "cropped_aligned" / "a" / f"{k:05d}.jpg").convert("RGB"))
                       for k in range(1, 5)])
    with torch.no_grad():
        expected = random_encoder(path, 3).eval()(preprocess_frames(frames, 16)).numpy()
    np.testing.assert_allclose(feats.astype(np.float32), expected, atol=1e-2, rtol=1e-2)
    # another seed into the same folder is refused: it is another encoder
    capsys.readouterr()
    assert main(["extract", "--encoder", f"random:{path}", "--seed", "4", "--frames",
                 str(tmp_path / "cropped_aligned"), "--data", str(tmp_path), "-o", str(out)]) != 0
    assert f"already holds features of another encoder (random:{path.resolve()}@seed3" in capsys.readouterr().err
