"""MAE pieces: patchify, masking, loss on masked patches only, reference-format checkpoints."""

from __future__ import annotations

import torch

from affectmae.models.mae import MaskedAutoencoder
from affectmae.models.vit import build_encoder, load_encoder


def _mae(norm_pix: bool = False) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(build_encoder("tiny", 32, depth=1), decoder_dim=32, decoder_depth=1, decoder_heads=2,
                             norm_pix_loss=norm_pix).eval()


def test_patchify_layout_and_roundtrip():
    mae = _mae()
    imgs = torch.randn(2, 3, 32, 32)
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 4, 16 * 16 * 3)
    # patch 1 is the top-right 16x16 block; its first entries are pixel (0, 0) channels r, g, b
    torch.testing.assert_close(patches[0, 1, :3], imgs[0, :, 0, 16])
    torch.testing.assert_close(patches[1, 2, 3:6], imgs[1, :, 16, 1])
    assert torch.equal(mae.unpatchify(patches), imgs)


def test_random_masking_keeps_lowest_noise_tokens():
    x = torch.arange(2 * 8 * 3, dtype=torch.float32).view(2, 8, 3)
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    visible, mask, ids_restore = MaskedAutoencoder.random_masking(x, 0.75, noise)
    assert visible.shape == (2, 2, 3)
    assert torch.equal(visible[0], x[0, [1, 5]]) and torch.equal(visible[1], x[1, [0, 1]])
    assert mask[0].tolist() == [1, 0, 1, 1, 1, 0, 1, 1]
    assert mask.sum().item() == 12
    assert torch.equal(torch.argsort(noise, dim=1).gather(1, ids_restore), torch.arange(8).expand(2, 8))


def test_encoder_path_without_masking_equals_plain_forward():
    mae = _mae()
    imgs = torch.randn(2, 3, 32, 32)
    latent, mask, _ = mae.forward_encoder(imgs, 0.0, noise=torch.arange(4.0).expand(2, 4))
    out = mae.encoder.forward_features(imgs)
    torch.testing.assert_close(latent[:, 1:], out["patch"], atol=1e-6, rtol=0)
    torch.testing.assert_close(latent[:, 0], out["cls"], atol=1e-6, rtol=0)
    assert mask.sum() == 0


def test_loss_is_mse_on_masked_patches_only():
    for norm_pix in (False, True):
        mae = _mae(norm_pix)
        imgs = torch.randn(3, 3, 32, 32)
        noise = torch.rand(3, 4)
        loss, pred, mask = mae(imgs, 0.5, noise)
        target = mae.patchify(imgs)
        if norm_pix:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        expected = ((pred - target) ** 2).mean(-1)[mask.bool()].mean()
        torch.testing.assert_close(loss, expected)
        assert mask.sum().item() == 6
        # changing the prediction on a visible patch does not change the loss
        visible = (~mask.bool()).nonzero()[0]
        pred2 = pred.clone()
        pred2[visible[0], visible[1]] += 10
        torch.testing.assert_close(mae.forward_loss(imgs, pred2, mask), loss)


def test_reconstruct_pastes_visible_patches(tmp_path):
    mae = _mae(norm_pix=True)
    imgs = torch.randn(1, 3, 32, 32)
    masked, recon = mae.reconstruct(imgs, 0.75, noise=torch.tensor([[0.0, 0.5, 0.6, 0.7]]))
    assert torch.equal(recon[0, :, :16, :16], imgs[0, :, :16, :16])  # patch 0 visible
    assert torch.all(masked[0, :, 16:, :] == 0)


def test_reference_checkpoint_loads_into_encoder(tmp_path):
    mae = _mae()
    sd = mae.state_dict_reference()
    assert "decoder_blocks.0.attn.qkv.weight" in sd and "mask_token" in sd and "blocks.0.norm1.weight" in sd
    torch.save({"model": sd}, tmp_path / "checkpoint-0.pth")
    enc = load_encoder(tmp_path / "checkpoint-0.pth", pooling="mean").eval()  # ours pools the mean
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(enc(x), mae.encoder(x))
