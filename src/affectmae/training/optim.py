"""The optimizer of every training stage: the AdamW factory, its parameter groups and the per-iteration
warm-up + cosine learning-rate schedule.

The parameter groups come from timm's helpers (``timm.optim.param_groups_weight_decay`` and
``param_groups_layer_decay``); the functions here only name what is excluded from weight decay, say which
parameters form a layer, and put the groups in a fixed order (no-decay before decay; layer by layer), the
order optimizer states saved for ``--resume`` were written in.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import torch
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay as timm_layer_decay
from timm.optim import param_groups_weight_decay as timm_weight_decay


def make_adamw(param_groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999),
               fused: bool = True) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (each group carries its ``weight_decay`` and ``lr_scale``).

    ``fused=True`` runs the update as one kernel where this torch supports it (pretrain, finetune; faster,
    docs/benchmarks.md). ``fused=False`` is torch's default implementation, which the temporal model has
    always trained with: its numbers stay those of earlier runs (fused and unfused AdamW round differently).
    """
    if fused:
        try:
            return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas))


def _patterns(no_decay_names: tuple[str, ...]) -> list[str]:
    """Substrings of parameter names -> timm's wildcard patterns."""
    return [f"*{name}*" for name in no_decay_names]


def param_groups_weight_decay(
    model: torch.nn.Module, weight_decay: float, no_decay_names: tuple[str, ...] = ()
) -> list[dict]:
    """Two groups, always in this order: biases, norms (1-D params) and parameters whose name contains one
    of ``no_decay_names`` without decay; all other trainable weights with ``weight_decay``.

    timm's helper makes the split (asked with a non-zero decay, so that ``weight_decay=0`` still gives the
    same two groups); an empty side stays as an empty group.
    """
    split = timm_weight_decay(model, 1.0, no_weight_decay_list=_patterns(no_decay_names))
    by_decay = {group["weight_decay"]: group["params"] for group in split}
    return [
        {"params": by_decay.get(0.0, []), "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": by_decay.get(1.0, []), "weight_decay": weight_decay, "lr_scale": 1.0},
    ]


def vit_layer_matcher(prefix: str = "") -> dict[str, Any]:
    """timm group matcher for a ViT under ``prefix`` (e.g. ``"encoder."``): layer 0 the embeddings (class
    token, position embedding, patch embedding), layer i+1 block i, the last layer everything else (final
    norm, fc_norm, heads)."""
    p = prefix.replace(".", r"\.")
    return {"stem": rf"^{p}(?:cls_token|reg_token|pos_embed|patch_embed)",
            "blocks": rf"^{p}blocks\.(\d+)", "rest": r".*"}


class _Matched:
    """``model`` seen by timm's helpers with ``matcher`` as its ``group_matcher``."""

    def __init__(self, model: torch.nn.Module, matcher: dict[str, Any]):
        self.model, self.matcher = model, matcher

    def named_parameters(self, *args, **kwargs):
        return self.model.named_parameters(*args, **kwargs)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return self.matcher


def param_groups_layer_decay(model: torch.nn.Module, weight_decay: float, layer_decay: float,
                             matcher: dict[str, Any], no_decay_names: tuple[str, ...] = ()) -> list[dict]:
    """Layer-wise lr decay (timm's ``param_groups_layer_decay``): a parameter of layer ``i`` of ``n`` gets
    ``lr_scale = layer_decay ** (n - 1 - i)``; 1-D parameters and names containing ``no_decay_names`` no
    weight decay. Groups are ordered by (layer, no-decay after decay)."""
    patterns = _patterns(no_decay_names)
    proxy = _Matched(model, matcher)
    groups = timm_layer_decay(proxy, weight_decay, no_weight_decay_list=patterns, layer_decay=layer_decay)
    layer_of = group_parameters(proxy, matcher, reverse=True)
    name_of = {id(param): name for name, param in model.named_parameters()}

    def order(group: dict) -> tuple[int, bool]:
        name = name_of[id(group["params"][0])]
        no_decay = group["params"][0].ndim <= 1 or any(fnmatch.fnmatch(name, p) for p in patterns)
        return layer_of[name], no_decay

    return sorted(groups, key=order)


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then half-cosine down to ``min_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr`` times the group's ``lr_scale`` (layer-wise decay uses it)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
