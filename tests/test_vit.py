"""The ViT encoder: shapes, our checkpoints, reference-MAE / timm checkpoints, preprocessing."""

from __future__ import annotations

import os

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from affectmae.checkpoint import save_weights
from affectmae.errors import CheckpointError
from affectmae.models.preprocess import preprocess_frames
from affectmae.models.vit import build_encoder, load_encoder, save_encoder, sincos_pos_embed_2d


def _timm_reference(img_size: int, depth: int = 2) -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img_size, depth=depth,
                             num_classes=0, global_pool="avg", fc_norm=False).eval()


def _random_vit_state(depth: int = 2, img_size: int = 112, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = _timm_reference(img_size, depth)
    return {k: torch.randn_like(v) * 0.05 for k, v in model.state_dict().items()}


@pytest.mark.parametrize("size,dim", [("tiny", 192), ("small", 384)])
def test_forward_features_shapes(size, dim):
    enc = build_encoder(size, img_size=112, depth=1).eval()
    out = enc.forward_features(torch.randn(2, 3, 112, 112))
    assert set(out) == {"cls", "patch", "pooled"}
    assert out["cls"].shape == (2, dim)
    assert out["patch"].shape == (2, 49, dim)  # (112 / 16) ** 2 patches
    torch.testing.assert_close(out["pooled"], out["patch"].mean(dim=1))
    assert build_encoder("base", 224, depth=1).num_patches == 196


def test_sincos_position_embedding_values():
    pe = sincos_pos_embed_2d(8, 2)  # D/4 = 2 frequencies: 1 and 1/100
    assert pe.shape == (1, 5, 8)
    assert torch.all(pe[0, 0] == 0)
    # patch (row 1, col 0): column half is [sin 0, sin 0, cos 0, cos 0], row half is sin/cos of (1, 1/100)
    expected = [0, 0, 1, 1, np.sin(1), np.sin(0.01), np.cos(1), np.cos(0.01)]
    torch.testing.assert_close(pe[0, 3], torch.tensor(expected, dtype=torch.float32))
    enc = build_encoder("tiny", 112, depth=1)
    torch.testing.assert_close(enc.pos_embed.data, sincos_pos_embed_2d(192, 7))


def test_our_checkpoint_roundtrip_rebuilds_architecture(tmp_path):
    enc = build_encoder("tiny", 112, depth=2, global_pool="token").eval()
    save_encoder(enc, tmp_path / "encoder.safetensors", {"stage": "test"})
    for where in (tmp_path / "encoder.safetensors", tmp_path):  # file or run directory
        loaded = load_encoder(where).eval()
        assert loaded.arch == enc.arch
        x = torch.randn(2, 3, 112, 112)
        a, b = enc.forward_features(x), loaded.forward_features(x)
        assert torch.equal(a["patch"], b["patch"]) and torch.equal(b["pooled"], b["cls"])


def test_reference_mae_checkpoint_matches_timm(tmp_path):
    """A full MAE checkpoint ({'model': sd} with decoder keys) gives timm's tokens for the same weights."""
    state = _random_vit_state()
    full = dict(state)
    full["mask_token"] = torch.zeros(1, 1, 512)
    full["decoder_embed.weight"] = torch.randn(512, 192)
    full["decoder_pred.weight"] = torch.randn(768, 512)
    torch.save({"model": full, "epoch": 399}, tmp_path / "mae_pretrain.pth")

    enc = load_encoder(tmp_path / "mae_pretrain.pth", pooling="mean").eval()
    assert enc.arch["embed_dim"] == 192 and enc.arch["depth"] == 2 and enc.arch["img_size"] == 112
    reference = _timm_reference(112)
    reference.load_state_dict(state)
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        ours = enc.forward_features(x)
        tokens = reference.forward_features(x)
        pooled = reference.forward_head(tokens, pre_logits=True)
    torch.testing.assert_close(ours["cls"], tokens[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["patch"], tokens[:, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["pooled"], pooled, atol=1e-5, rtol=0)


def test_plain_timm_state_dict_with_position_embedding_resized(tmp_path):
    """A 112 px timm state dict (with a classifier head) used at 224 px matches timm's own filter."""
    state = _random_vit_state()
    state["head.weight"], state["head.bias"] = torch.randn(7, 192), torch.randn(7)
    torch.save(state, tmp_path / "vit.bin")
    enc = load_encoder(tmp_path / "vit.bin", img_size=224).eval()
    assert enc.arch["img_size"] == 224 and enc.pos_embed.shape == (1, 197, 192)

    reference = _timm_reference(224)
    filtered = checkpoint_filter_fn({k: v for k, v in state.items() if not k.startswith("head.")}, reference)
    reference.load_state_dict(filtered)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x)["patch"], reference.forward_features(x)[:, 1:],
                                   atol=1e-5, rtol=0)


def test_wrong_architecture_lists_mismatched_keys(tmp_path):
    enc = build_encoder("tiny", 112, depth=2)
    arch = dict(enc.arch, depth=3)  # metadata says 3 blocks, weights have 2
    save_weights(tmp_path / "bad.safetensors", enc.state_dict(), {"kind": "encoder", "arch": arch})
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.2\.attn\.proj\.bias"):
        load_encoder(tmp_path / "bad.safetensors")

    state = _random_vit_state()
    state["blocks.0.ls1.gamma"] = torch.ones(192)  # layer scale: not in our architecture
    torch.save(state, tmp_path / "layerscale.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.0\.ls1\.gamma"):
        load_encoder(tmp_path / "layerscale.pth")


def test_foreign_files_are_never_unpickled(tmp_path):
    torch.save({"model": {"x": os.getcwd}}, tmp_path / "evil.pth")  # a global: weights_only refuses it
    with pytest.raises(CheckpointError, match=r"evil\.pth: holds pickled Python objects \(posix\.getcwd\)") as err:
        load_encoder(tmp_path / "evil.pth")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="no 'patch_embed.proj.weight'"):
        torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "resnet.pth")
        load_encoder(tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="has no encoder.safetensors"):
        load_encoder(tmp_path)


def test_preprocess_frames_normalises_and_resizes():
    frames = np.zeros((2, 112, 112, 3), np.uint8)
    frames[1] = 255
    x = preprocess_frames(frames, 112)
    assert x.shape == (2, 3, 112, 112) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, :, 5, 5], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]))
    torch.testing.assert_close(x[1, :, 7, 9], torch.tensor([0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225]))
    small = preprocess_frames(torch.full((1, 48, 48, 3), 128, dtype=torch.uint8), 112)
    assert small.shape == (1, 3, 112, 112)
    torch.testing.assert_close(small[0, 0, 50, 50], torch.tensor((128 / 255 - 0.485) / 0.229))
    with pytest.raises(ValueError, match="must be uint8"):
        preprocess_frames(np.zeros((1, 8, 8, 3), np.float32), 112)
