"""The frame encoder: a ViT (timm's VisionTransformer) in the reference-MAE layout, and its checkpoints.

Layout: 16x16 patches, a class token, absolute position embeddings (fixed 2-D sin-cos at
initialisation, as in MAE), pre-norm blocks and a final LayerNorm. ``forward_features`` returns the
class token, the patch tokens and the pooled frame feature by name, so MAE, fine-tuning and feature
extraction never index into submodules.

Checkpoints accepted by :func:`load_encoder` (format detected from the content):

- ours: ``encoder.safetensors`` written by :func:`save_encoder` (architecture in the metadata), or a
  run directory / MODEL_DIR that contains one;
- reference MAE (facebookresearch/mae): ``{'model': state_dict}`` in a ``.pth``, encoder-only or with
  the decoder (``decoder_*``, ``mask_token`` are dropped);
- a plain timm ViT state dict (``.pth``/``.bin``/``.safetensors``; ``head.*`` is dropped).

Foreign files are read with ``torch.load(weights_only=True)``; nothing is unpickled.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from affectmae.checkpoint import load_state_strict, load_weights, read_metadata, save_weights
from affectmae.errors import CheckpointError
from affectmae.models.fast_linear import use_fast_linear

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.safetensors"

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}
ARCH_KEYS = ("size", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "global_pool", "fc_norm")


def sincos_pos_embed_2d(embed_dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding: (1, grid*grid [+1], embed_dim), zeros for the cls slot.

    Half of the channels encode the row, half the column; each half is [sin(pos*w), cos(pos*w)] with
    frequencies w = 1 / 10000^(k / (D/4)).
    """
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:  # (L,) -> (L, D/2)
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    emb = np.concatenate([encode(cols), encode(rows)], axis=1)  # (L, D)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


class ViTEncoder(VisionTransformer):
    """timm ViT with named outputs. State-dict keys are timm's (and reference MAE's) key names.

    ``arch`` holds everything needed to rebuild the module (stored in our checkpoint metadata).
    """

    def __init__(self, arch: dict[str, Any]):
        self.arch = dict(arch)
        super().__init__(
            img_size=arch["img_size"],
            patch_size=arch["patch_size"],
            num_classes=0,
            global_pool=arch["global_pool"],
            embed_dim=arch["embed_dim"],
            depth=arch["depth"],
            num_heads=arch["num_heads"],
            mlp_ratio=arch["mlp_ratio"],
            qkv_bias=True,
            fc_norm=arch["fc_norm"],
            drop_path_rate=arch.get("drop_path_rate", 0.0),
        )
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(arch["embed_dim"], self.grid_size))
        use_fast_linear(self)  # oneDNN fp32 products on CPUs where they beat MKL (models/fast_linear.py)

    @property
    def grid_size(self) -> int:
        return self.patch_embed.grid_size[0]

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """x: (B, 3, H, W) normalised images -> {"cls": (B, D), "patch": (B, L, D), "pooled": (B, D)}.

        ``pooled`` (mean of the patch tokens, or the class token with ``global_pool="token"``) is the
        frame feature used downstream.
        """
        tokens = super().forward_features(x)  # (B, 1+L, D)
        pooled = self.forward_head(tokens, pre_logits=True)  # (B, D)
        return {"cls": tokens[:, 0], "patch": tokens[:, self.num_prefix_tokens:], "pooled": pooled}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x: (B, 3, H, W) -> pooled feature (B, D)."""
        return self.forward_features(x)["pooled"]

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> patch tokens with position embedding added, (B, L, D) (no class token)."""
        return self.patch_embed(x) + self.pos_embed[:, self.num_prefix_tokens:]

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, N, D) patch tokens (any subset, position embedding added) -> (B, 1+N, D).

        Prepends the class token (plus its position embedding), runs the blocks and the final norm.
        MAE runs the visible 25 % of the patches through this.
        """
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        x = self.norm_pre(x)
        x = self.blocks(x)
        return self.norm(x)

    def layer_id(self, name: str) -> int:
        """Depth index of a parameter for layer-wise lr decay: 0 embeddings, i+1 block i, depth+1 head/norm."""
        if name.startswith(("cls_token", "pos_embed", "patch_embed", "reg_token")):
            return 0
        match = re.match(r"blocks\.(\d+)\.", name)
        if match:
            return int(match.group(1)) + 1
        return len(self.blocks) + 1


def make_arch(size: str = "base", img_size: int = 112, **overrides: Any) -> dict[str, Any]:
    """Full architecture dict for a named size; ``overrides`` (e.g. ``depth=2``) replace entries."""
    if size not in SIZES:
        raise CheckpointError(f"unknown encoder size {size!r}; choose one of {', '.join(SIZES)}")
    arch: dict[str, Any] = {"size": size, "img_size": int(img_size), "patch_size": 16, **SIZES[size],
                            "mlp_ratio": 4.0, "global_pool": "avg", "fc_norm": False}
    unknown = set(overrides) - set(ARCH_KEYS) - {"drop_path_rate"}
    if unknown:
        raise CheckpointError(f"unknown encoder settings: {', '.join(sorted(unknown))}; known: {', '.join(ARCH_KEYS)}")
    arch.update(overrides)
    if arch["img_size"] % arch["patch_size"]:
        raise CheckpointError(f"img_size {arch['img_size']} is not a multiple of patch_size {arch['patch_size']}")
    return arch


def build_encoder(size: str = "base", img_size: int = 112, **overrides: Any) -> ViTEncoder:
    """A freshly initialised encoder: ``size`` in tiny/small/base/large, overrides such as ``depth=2``."""
    return ViTEncoder(make_arch(size, img_size, **overrides))


def save_encoder(encoder: ViTEncoder, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write the encoder weights + architecture to ``path`` (safetensors, atomic)."""
    meta = {**(metadata or {}), "kind": "encoder", "arch": encoder.arch}
    save_weights(path, encoder.state_dict(), meta)


# ---------------------------------------------------------------------------------------------- loading


def _read_foreign(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pth``/``.pt``/``.bin`` file -> flat state dict, never unpickling arbitrary objects."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CheckpointError(f"{path}: cannot read as a PyTorch weights file ({type(err).__name__}: {err})") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (or {{'model': state_dict}})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def filter_foreign_state(state: dict[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """Map a reference-MAE / timm state dict onto our key names (they already agree) and drop the parts
    the encoder does not have: the MAE decoder (``decoder_*``), ``mask_token`` and classifier heads."""
    dropped = [k for k in state if k.startswith(("decoder_", "mask_token", "head.", "head_dist."))]
    if dropped:
        log.info("%s: ignoring %d keys the encoder does not use (e.g. %s)", source, len(dropped), dropped[0])
    return {k: v for k, v in state.items() if k not in dropped}


def infer_arch(state: dict[str, torch.Tensor], source: str | Path) -> dict[str, Any]:
    """Architecture of a ViT state dict from its tensor shapes (heads: 64 channels each, timm's convention)."""
    try:
        proj = state["patch_embed.proj.weight"]  # (D, 3, p, p)
        pos = state["pos_embed"]  # (1, 1+L, D)
    except KeyError as err:
        raise CheckpointError(f"{source}: not a ViT checkpoint (no {err.args[0]!r}; keys: {', '.join(list(state)[:8])}...)") from None
    embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    if grid * grid != pos.shape[1] - 1:
        raise CheckpointError(f"{source}: pos_embed of {pos.shape[1]} tokens is not 1 class token + a square grid")
    size = next((n for n, s in SIZES.items() if s["embed_dim"] == embed_dim and s["depth"] == depth), "custom")
    heads = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}.get(embed_dim, max(1, embed_dim // 64))
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = float(fc1.shape[0]) / embed_dim if fc1 is not None else 4.0
    fc_norm = "fc_norm.weight" in state and "norm.weight" not in state
    return {"size": size, "img_size": grid * patch, "patch_size": patch, "embed_dim": embed_dim, "depth": depth,
            "num_heads": heads, "mlp_ratio": mlp_ratio, "global_pool": "avg", "fc_norm": fc_norm}


def _resolve_path(path: Path) -> Path:
    if path.is_dir():
        for candidate in (path / ENCODER_FILE, path / "model" / ENCODER_FILE):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: directory has no {ENCODER_FILE} (expected a pretrain/finetune run or MODEL_DIR)")
    if not path.is_file():
        raise CheckpointError(f"encoder checkpoint not found: {path}")
    return path


def load_encoder(path: str | Path, img_size: int | None = None, drop_path_rate: float = 0.0) -> ViTEncoder:
    """Build an encoder from any supported checkpoint (format auto-detected, see the module docstring).

    ``img_size`` (optional) resizes the position embedding when it differs from the checkpoint's
    (bicubic, as timm does), e.g. a 224 px MAE checkpoint used on 112 px Aff-Wild2 crops.
    ``drop_path_rate`` (stochastic depth, for fine-tuning) has no effect in eval mode.
    """
    path = _resolve_path(Path(path))
    if path.suffix == ".safetensors":
        state, meta = load_weights(path)
        arch = meta.get("arch")
        if meta.get("kind") == "training_state":
            raise CheckpointError(f"{path}: a training state (for --resume), not an encoder; use encoder.safetensors")
        if arch is None:  # a foreign safetensors file (e.g. timm's)
            state = filter_foreign_state(state, path)
            arch = infer_arch(state, path)
    else:
        state = filter_foreign_state(_read_foreign(path), path)
        arch = infer_arch(state, path)
    arch = dict(arch)
    if img_size is not None and int(img_size) != arch["img_size"]:
        if int(img_size) % arch["patch_size"]:
            raise CheckpointError(f"img_size {img_size} is not a multiple of patch size {arch['patch_size']}")
        old = arch["img_size"] // arch["patch_size"]
        new = int(img_size) // arch["patch_size"]
        state = dict(state)
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=[new, new], old_size=[old, old],
                                                    num_prefix_tokens=1)
        log.info("%s: position embedding resized from %dx%d to %dx%d patches", path, old, old, new, new)
        arch["img_size"] = int(img_size)
    if drop_path_rate:
        arch["drop_path_rate"] = float(drop_path_rate)
    encoder = ViTEncoder(arch)
    load_state_strict(encoder, state, path)
    return encoder


def encoder_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata of one of our encoder files (empty for foreign files)."""
    path = _resolve_path(Path(path))
    return read_metadata(path) if path.suffix == ".safetensors" else {}
