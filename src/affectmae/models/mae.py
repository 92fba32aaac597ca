"""Masked autoencoder (He et al. 2022) around our :class:`ViTEncoder`, in the reference-MAE layout.

The encoder sees only the visible patches (25 % by default); a light ViT decoder (512-d, 8 blocks,
16 heads, fixed 2-D sin-cos positions) reconstructs the pixels of every patch, and the loss is the
mean squared error on the masked patches only (optionally on per-patch normalised pixels).
``patchify``, ``random_masking`` and ``forward_loss`` are separate methods, as in the reference.

State-dict keys follow facebookresearch/mae (``decoder_embed``, ``decoder_blocks``, ``mask_token``...)
with the encoder's keys at the top level, so ``{'model': mae.state_dict()}`` is a reference-format
checkpoint that :func:`affectmae.models.vit.load_encoder` reads back.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange
from timm.models.vision_transformer import Block

from affectmae.models.fast_linear import use_fast_linear
from affectmae.models.vit import ViTEncoder, sincos_pos_embed_2d


class MaskedAutoencoder(nn.Module):
    def __init__(self, encoder: ViTEncoder, decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16,
                 norm_pix_loss: bool = False):
        super().__init__()
        self.encoder = encoder
        self.encoder.pos_embed.requires_grad_(False)  # fixed sin-cos, as in MAE
        self.norm_pix_loss = norm_pix_loss
        dim, p = encoder.embed_dim, encoder.patch_size
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed_2d(decoder_dim, encoder.grid_size), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, p * p * 3)
        self._init_decoder()
        use_fast_linear(self)

    def _init_decoder(self) -> None:
        torch.nn.init.normal_(self.mask_token, std=0.02)
        for name, module in self.named_modules():
            if not name.startswith("decoder"):
                continue
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                torch.nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                torch.nn.init.ones_(module.weight)
                torch.nn.init.zeros_(module.bias)

    def state_dict_reference(self) -> dict[str, torch.Tensor]:
        """Flat reference-MAE key names: encoder keys at the top level next to ``decoder_*``/``mask_token``."""
        out = {k.removeprefix("encoder."): v for k, v in self.state_dict().items()}
        return out

    # ----------------------------------------------------------------------------------- pieces

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (B, 3, H, W) -> patches (B, L, p*p*3), pixel order (p, q, c) as in the reference."""
        p = self.encoder.patch_size
        return rearrange(imgs, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """patches: (B, L, p*p*3) -> imgs (B, 3, H, W)."""
        p, g = self.encoder.patch_size, self.encoder.grid_size
        return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=g, w=g, p=p, q=p, c=3)

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Keep a random ``1 - mask_ratio`` of the tokens of each sample (the ones with the smallest noise).

        x: (B, L, D); noise: (B, L) in [0, 1) or None (drawn from the global RNG).
        Returns ``(x_visible (B, K, D), mask (B, L) with 1 = removed, ids_restore (B, L))``.
        """
        B, L, D = x.shape
        keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(B, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(B, L, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_visible, mask, ids_restore

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """imgs: (B, 3, H, W) -> (latent (B, 1+K, D), mask (B, L), ids_restore (B, L))."""
        tokens = self.encoder.embed_patches(imgs)  # (B, L, D)
        visible, mask, ids_restore = self.random_masking(tokens, mask_ratio, noise)
        return self.encoder.encode_tokens(visible), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent: (B, 1+K, D) -> predicted pixels for every patch (B, L, p*p*3)."""
        x = self.decoder_embed(latent)  # (B, 1+K, Dd)
        B, L = ids_restore.shape
        fill = self.mask_token.expand(B, L + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], fill], dim=1)  # visible first, then mask tokens
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # original order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target_pixels(self, imgs: torch.Tensor) -> torch.Tensor:
        """The regression target (B, L, p*p*3): patch pixels, normalised per patch if ``norm_pix_loss``."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the masked patches only. pred: (B, L, p*p*3), mask: (B, L)."""
        per_patch = ((pred.float() - self.target_pixels(imgs).float()) ** 2).mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        """imgs: (B, 3, H, W) -> (loss, pred (B, L, p*p*3), mask (B, L))."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        """For figures: (masked input (B, 3, H, W), reconstruction (B, 3, H, W)) in the input's pixel space;
        visible patches of the reconstruction are pasted from the input, as in the reference demo."""
        _, pred, mask = self.forward(imgs, mask_ratio, noise)
        if self.norm_pix_loss:  # undo the per-patch normalisation with the true patch statistics
            target = self.patchify(imgs)
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        m = mask.unsqueeze(-1)  # (B, L, 1)
        patches = self.patchify(imgs)
        masked = self.unpatchify(patches * (1 - m))
        recon = self.unpatchify(patches * (1 - m) + pred * m)
        return masked, recon
