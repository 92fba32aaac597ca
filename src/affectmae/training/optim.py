"""The optimizer of every training stage: the AdamW factory, its parameter groups and the per-iteration
warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch


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


def param_groups_weight_decay(
    model: torch.nn.Module, weight_decay: float, no_decay_names: tuple[str, ...] = ()
) -> list[dict]:
    """Two groups: weights with decay; biases, norms (1-D params) and named tokens without."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or any(n in name for n in no_decay_names):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
    ]


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
