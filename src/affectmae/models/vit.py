"""The frame encoder: a ViT (timm's VisionTransformer) in the reference-MAE layout, and its checkpoints.

Layout: 16x16 patches, a class token, absolute position embeddings (fixed 2-D sin-cos at
initialisation, as in MAE), pre-norm blocks and a final LayerNorm. ``forward_features`` returns the
class token, the patch tokens and the pooled frame feature by name, so MAE, fine-tuning and feature
extraction never index into submodules.

The frame feature (``pooled``) is one of :data:`POOLINGS`, recorded in the architecture:

- ``cls``: the class token after the final norm (the reference MAE's linear probe; timm's ViT default);
- ``mean``: the mean of the patch tokens after the final norm (this project's encoders);
- ``mae_global``: a separate ``fc_norm`` over the mean of the un-normalised patch tokens (the reference
  MAE's fine-tuning recipe, ``global_pool``; timm's ``global_pool='avg'`` with ``fc_norm``).

The architecture also records the input normalisation (``mean``/``std``) the encoder was trained with;
:func:`affectmae.models.preprocess.encoder_normalisation` reads it for every stage that feeds the encoder.

Checkpoints accepted by :func:`load_encoder` (format detected from the content):

- ours: ``encoder.safetensors`` written by :func:`save_encoder` (architecture in the metadata), or a
  run directory / MODEL_DIR that contains one;
- reference MAE (facebookresearch/mae): what its training scripts save (``{'model', 'optimizer',
  'epoch', 'scaler', 'args'}``, ``args`` an ``argparse.Namespace``) or ``{'model': state_dict}``, encoder
  only or with the decoder (``decoder_*`` and ``mask_token`` are dropped), pretrained or fine-tuned;
- a timm ViT state dict (``.pth``/``.bin``/``.safetensors``; ``head.*`` is dropped), with the Hub's
  ``config.json`` beside it when there is one.

Foreign files are read by :mod:`affectmae.models.foreign`: nothing but tensors and the reference
scripts' ``argparse.Namespace`` is unpickled. Heads, pooling and normalisation of a foreign checkpoint
come from its ``args`` or ``config.json`` when they say (see :func:`affectmae.models.foreign.checkpoint_hints`);
the reasons are kept in ``encoder.load_info`` and in the metadata of a saved copy.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from affectmae.checkpoint import ENCODER_FILE, load_state_strict, load_weights, read_metadata, save_weights
from affectmae.errors import CheckpointError
from affectmae.models.fast_linear import use_fast_linear
from affectmae.models.foreign import POOLINGS, WIDTH_HEADS, checkpoint_hints, read_hub_config, read_torch_file
from affectmae.models.preprocess import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}
ARCH_KEYS = ("size", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "global_pool", "fc_norm",
             "pooling", "mean", "std")
# pooling -> timm's (global_pool, fc_norm)
POOL_ARCH = {"cls": ("token", False), "mean": ("avg", False), "mae_global": ("avg", True)}


def complete_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """``arch`` with ``pooling``, ``global_pool``, ``fc_norm``, ``mean`` and ``std`` consistent and present.

    An explicit ``pooling`` decides ``global_pool``/``fc_norm``; an architecture saved before pooling was
    recorded gets the pooling its ``global_pool``/``fc_norm`` compute, and ImageNet normalisation.
    """
    arch = dict(arch)
    pooling = arch.get("pooling")
    if pooling is None:
        pooling = "cls" if arch.get("global_pool") == "token" else ("mae_global" if arch.get("fc_norm") else "mean")
    if pooling not in POOLINGS:
        raise CheckpointError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    arch["pooling"] = pooling
    arch["global_pool"], arch["fc_norm"] = POOL_ARCH[pooling]
    arch["mean"] = [float(v) for v in arch.get("mean") or IMAGENET_MEAN]
    arch["std"] = [float(v) for v in arch.get("std") or IMAGENET_STD]
    return arch


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
        arch = complete_arch(arch)
        self.arch = arch
        self.load_info: dict[str, Any] = {}
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

        ``pooled`` (the architecture's ``pooling``, see the module docstring) is the frame feature used
        downstream.
        """
        tokens = super().forward_features(x)  # (B, 1+L, D)
        pooled = self.forward_head(tokens, pre_logits=True)  # (B, D)
        return {"cls": tokens[:, 0], "patch": tokens[:, self.num_prefix_tokens:], "pooled": pooled}

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, 1+L, D): :meth:`forward_features` up to the blocks (patch embedding, class
        token, position embedding). Then ``blocks[i](tokens)`` for each block and :meth:`pool_tokens` give
        ``pooled`` with the same ops in the same order (live's encoder split between two stages)."""
        return self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block (B, 1+L, D) -> the pooled feature (B, D): the final norm and pooling."""
        return self.forward_head(self.norm(tokens), pre_logits=True)

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
    arch = complete_arch(arch)
    if arch["img_size"] % arch["patch_size"]:
        raise CheckpointError(f"img_size {arch['img_size']} is not a multiple of patch_size {arch['patch_size']}")
    return arch


def build_encoder(size: str = "base", img_size: int = 112, **overrides: Any) -> ViTEncoder:
    """A freshly initialised encoder: ``size`` in tiny/small/base/large, overrides such as ``depth=2``."""
    return ViTEncoder(make_arch(size, img_size, **overrides))


def init_like_reference_mae(encoder: ViTEncoder) -> ViTEncoder:
    """Re-initialise ``encoder`` with the reference MAE's rules (models_mae.initialize_weights), in place.

    Fixed 2-D sin-cos position embedding; the patch embedding initialised as a linear layer (xavier-uniform
    on its (D, 3*p*p) view); class token N(0, 0.02); every linear layer xavier-uniform with zero bias;
    every LayerNorm weight 1, bias 0. The patch embedding's bias keeps PyTorch's default, as there.
    """
    with torch.no_grad():
        encoder.pos_embed.copy_(sincos_pos_embed_2d(encoder.embed_dim, encoder.grid_size))
        weight = encoder.patch_embed.proj.weight
        torch.nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        torch.nn.init.normal_(encoder.cls_token, std=0.02)
        for module in encoder.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif isinstance(module, torch.nn.LayerNorm):
                torch.nn.init.ones_(module.weight)
                torch.nn.init.zeros_(module.bias)
    return encoder


def save_encoder(encoder: ViTEncoder, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write the encoder weights + architecture to ``path`` (safetensors, atomic); how a foreign
    checkpoint's settings were chosen (``encoder.load_info``) is kept as ``loaded_from``."""
    meta = {**(metadata or {}), "kind": "encoder", "arch": encoder.arch}
    if getattr(encoder, "load_info", None):
        meta["loaded_from"] = encoder.load_info
    save_weights(path, encoder.state_dict(), meta)


# ---------------------------------------------------------------------------------------------- loading


def filter_foreign_state(state: dict[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """Drop what the encoder does not have from a reference-MAE / timm state dict: the MAE decoder
    (``decoder_*``), ``mask_token`` and classifier heads. The rest already has our (timm's) key names;
    timm's ``checkpoint_filter_fn`` then adapts it (see :func:`load_encoder`)."""
    dropped = [k for k in state if k.startswith(("decoder_", "mask_token", "head.", "head_dist."))]
    if dropped:
        log.info("%s: ignoring %d keys the encoder does not use (e.g. %s)", source, len(dropped), dropped[0])
    return {k: v for k, v in state.items() if k not in dropped}


def infer_arch(state: dict[str, torch.Tensor], source: str | Path) -> dict[str, Any]:
    """Architecture of a ViT state dict from its tensor shapes; heads are timm's count for the width
    (the weights do not tell: :func:`affectmae.models.foreign.checkpoint_hints` decides)."""
    try:
        proj = state["patch_embed.proj.weight"]  # (D, 3, p, p), or (D, 3*p*p) in old linear-patchify files
        pos = state["pos_embed"]  # (1, 1+L, D)
    except KeyError as err:
        raise CheckpointError(f"{source}: not a ViT checkpoint (no {err.args[0]!r}; keys: {', '.join(list(state)[:8])}...)") from None
    embed_dim = int(proj.shape[0])
    patch = int(proj.shape[-1]) if proj.ndim == 4 else int(round((proj.shape[1] / 3) ** 0.5))
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    if grid * grid != pos.shape[1] - 1:
        raise CheckpointError(f"{source}: pos_embed of {pos.shape[1]} tokens is not 1 class token + a square grid")
    size = next((n for n, s in SIZES.items() if s["embed_dim"] == embed_dim and s["depth"] == depth), "custom")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = float(fc1.shape[0]) / embed_dim if fc1 is not None else 4.0
    fc_norm = "fc_norm.weight" in state and "norm.weight" not in state
    return {"size": size, "img_size": grid * patch, "patch_size": patch, "embed_dim": embed_dim, "depth": depth,
            "num_heads": WIDTH_HEADS.get(embed_dim, max(1, embed_dim // 64)), "mlp_ratio": mlp_ratio,
            "global_pool": "avg", "fc_norm": fc_norm}


def _resolve_path(path: Path) -> Path:
    if path.is_dir():
        for candidate in (path / ENCODER_FILE, path / "model" / ENCODER_FILE):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: directory has no {ENCODER_FILE} (expected a pretrain/finetune run or MODEL_DIR)")
    if not path.is_file():
        raise CheckpointError(f"encoder checkpoint not found: {path}")
    return path


def read_checkpoint(path: Path, num_heads: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict]:
    """Any supported file -> (state dict with our key names, architecture, how its settings were chosen)."""
    args: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        state, meta = load_weights(path)
        if meta.get("kind") == "training_state":
            raise CheckpointError(f"{path}: a training state (for --resume), not an encoder; use encoder.safetensors")
        if meta.get("arch") is not None:  # ours: the architecture is recorded
            arch = complete_arch(meta["arch"])
            if num_heads and int(num_heads) != arch["num_heads"]:
                raise CheckpointError(f"{path}: this encoder was trained with {arch['num_heads']} attention heads, "
                                      f"not num_heads={num_heads}")
            return state, arch, dict(meta.get("loaded_from") or {})
    else:
        state, args = read_torch_file(path)
    state = filter_foreign_state(state, path)
    arch = infer_arch(state, path)
    config = read_hub_config(path)
    hints, why = checkpoint_hints(state, arch["embed_dim"], args, config, num_heads)
    arch.update(hints)
    kind = "facebookresearch/mae training script" if args else ("timm (config.json)" if config else "state dict")
    return state, complete_arch(arch), {"format": kind, **why}


def _set_pooling(state: dict[str, torch.Tensor], arch: dict[str, Any], pooling: str, source: Path):
    """Switch a checkpoint to another pooling: to ``mae_global`` from a final-norm encoder the norm is
    dropped and ``fc_norm`` starts as the identity (weight 1, bias 0), as the reference MAE fine-tuning
    starts from a pretrained encoder; a global-pool encoder has no final norm for ``cls``/``mean``."""
    if pooling not in POOLINGS:
        raise CheckpointError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    has_norm = "norm.weight" in state
    if pooling == "mae_global" and "fc_norm.weight" not in state:
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
        state["fc_norm.weight"] = torch.ones(arch["embed_dim"])
        state["fc_norm.bias"] = torch.zeros(arch["embed_dim"])
        log.info("%s: pooling mae_global: a new fc_norm (identity at start) replaces the final norm", source)
    elif pooling != "mae_global" and not has_norm:
        raise CheckpointError(f"{source}: pooling={pooling} needs the final norm, but this encoder was trained with "
                              f"global pooling (fc_norm, no final norm); use pooling=mae_global")
    return state, complete_arch(dict(arch, pooling=pooling))


def load_encoder(path: str | Path, img_size: int | None = None, drop_path_rate: float = 0.0,
                 pooling: str | None = None, num_heads: int | None = None) -> ViTEncoder:
    """Build an encoder from any supported checkpoint (format auto-detected, see the module docstring).

    ``img_size`` (optional) runs the encoder at another input size: timm's ``checkpoint_filter_fn``
    resamples the position embedding (bicubic), e.g. a 224 px MAE checkpoint on 112 px Aff-Wild2 crops.
    ``pooling`` (optional, one of :data:`POOLINGS`) replaces the checkpoint's own; ``num_heads`` sets the
    attention heads of a foreign checkpoint whose ``args``/``config.json`` do not name them.
    ``drop_path_rate`` (stochastic depth, for fine-tuning) has no effect in eval mode.
    """
    path = _resolve_path(Path(path))
    state, arch, info = read_checkpoint(path, num_heads)
    if pooling is not None and pooling != arch["pooling"]:
        state, arch = _set_pooling(state, arch, pooling, path)
        info["pooling"] = f"set by pooling={pooling}"
    if img_size is not None and int(img_size) != arch["img_size"]:
        if int(img_size) % arch["patch_size"]:
            raise CheckpointError(f"img_size {img_size} is not a multiple of patch size {arch['patch_size']}")
        log.info("%s: position embedding resampled from %d to %d px", path, arch["img_size"], int(img_size))
        info["img_size"] = f"position embedding resampled from {arch['img_size']} px"
        arch["img_size"] = int(img_size)
    if drop_path_rate:
        arch["drop_path_rate"] = float(drop_path_rate)
    encoder = ViTEncoder(arch)
    load_state_strict(encoder, checkpoint_filter_fn(state, encoder), path)
    encoder.load_info = info
    return encoder


def encoder_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata of one of our encoder files (empty for foreign files)."""
    path = _resolve_path(Path(path))
    return read_metadata(path) if path.suffix == ".safetensors" else {}
