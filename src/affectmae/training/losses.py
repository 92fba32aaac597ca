"""Per-frame losses for the temporal model, with invalid labels and segment padding masked out.

Every function takes outputs and labels shaped per frame, ``(B, T, ...)``, and a boolean ``mask``
``(B, T)`` that is True only for frames that are unpadded (part of the video, not segment padding) *and*
carry a valid label. Masked frames contribute nothing to the loss or its gradient. The task table (:data:`affectmae.tasks.TASKS`)
picks the loss by ``TaskSpec.kind``; nothing here is copied per task.

CCC uses population statistics (divide by N), the same definition as :func:`affectmae.evaluation.metrics.ccc` and
the official ABAW metric, so the loss ``1 - CCC`` is exactly one minus the score being optimised.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from affectmae.tasks import TASKS, TaskSpec, get_task


def masked_ccc(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Concordance correlation per channel over the masked frames.

    pred, target: (B, T, C) ; mask: (B, T) bool -> (C,) CCC with population (biased) statistics.
    """
    m = mask.reshape(-1)
    x = pred.reshape(-1, pred.shape[-1])[m]
    y = target.reshape(-1, target.shape[-1])[m].to(x.dtype)
    mx, my = x.mean(0), y.mean(0)
    vx = ((x - mx) ** 2).mean(0)
    vy = ((y - my) ** 2).mean(0)
    cov = ((x - mx) * (y - my)).mean(0)
    return 2 * cov / (vx + vy + (mx - my) ** 2 + eps)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - mean_c CCC_c`` (valence and arousal averaged). pred, target: (B, T, 2); mask: (B, T).

    Fewer than two valid frames give a zero loss that still belongs to the graph.
    """
    if int(mask.sum()) < 2:
        return pred.sum() * 0.0
    return 1.0 - masked_ccc(pred, target, mask).mean()


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over valid frames. logits: (B, T, K); target: (B, T) or (B, T, 1) class indices;
    weight: (K,) per-class weights (:func:`class_weights`) or None."""
    if target.dim() == logits.dim():
        target = target[..., 0]
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask], target[mask].long(), weight=weight)


def masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCEWithLogits over valid frames and valid units. logits, target: (B, T, K); mask: (B, T);
    weight: (K,) positive weights per unit (:func:`class_weights`) or None.

    Individual unit labels outside {0, 1} (e.g. -1) are excluded as well.
    """
    elem = mask[..., None] & (target >= 0) & (target <= 1)
    if not bool(elem.any()):
        return logits.sum() * 0.0
    pos_weight = None if weight is None else weight.to(logits.dtype).expand_as(logits)[elem]
    return F.binary_cross_entropy_with_logits(logits[elem], target[elem].to(logits.dtype), pos_weight=pos_weight)


def class_weights(spec: TaskSpec, labels: np.ndarray) -> torch.Tensor | None:
    """Loss weights from the training labels, for metrics that average over classes (macro F1, mean AU F1).

    EXPR: n / (K * count_k) per class (absent classes 0); AU: negatives / positives per unit, clamped to
    [0.1, 10] (BCE ``pos_weight``); VA: None. labels: (N,) or (N, 1) class ids, or (N, 12) 0/1 (only valid
    labels)."""
    labels = np.asarray(labels)
    if spec.kind == "multiclass":
        counts = np.bincount(labels.reshape(-1).astype(int), minlength=spec.num_outputs).astype(np.float64)
        w = np.where(counts > 0, counts.sum() / (spec.num_outputs * np.maximum(counts, 1)), 0.0)
        return torch.tensor(w, dtype=torch.float32)
    if spec.kind == "multilabel":
        pos = (labels == 1).sum(0).astype(np.float64)
        neg = (labels == 0).sum(0).astype(np.float64)
        return torch.tensor(np.clip(neg / np.maximum(pos, 1), 0.1, 10.0), dtype=torch.float32)
    return None


_LOSS_BY_KIND = {"regression": ccc_loss, "multiclass": masked_cross_entropy, "multilabel": masked_bce}


def task_loss(task: str | TaskSpec, outputs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """The task's loss (picked from the task table). outputs: (B, T, num_outputs); target: (B, T, label_width);
    weight: the task's :func:`class_weights` (EXPR, AU) or None."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if weight is None:
        return _LOSS_BY_KIND[spec.kind](outputs, target, mask)
    return _LOSS_BY_KIND[spec.kind](outputs, target, mask, weight)


def multitask_loss(
    outputs: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    weights: dict[str, float] | None = None,
    label_weights: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the per-task losses of the tasks present in ``targets``; returns (total, parts).
    ``label_weights``: per-task :func:`class_weights` inside each loss.

    A task with no valid frame in the batch adds zero (its labels are masked), so batches that carry
    labels for only some tasks train only those heads.
    """
    total = None
    parts: dict[str, float] = {}
    for name in TASKS:
        if name not in targets or name not in outputs:
            continue
        loss = task_loss(name, outputs[name], targets[name], masks[name], (label_weights or {}).get(name))
        parts[name] = float(loss.detach())
        loss = loss * (weights or {}).get(name, 1.0)
        total = loss if total is None else total + loss
    if total is None:
        raise ValueError("multitask_loss: no task in common between outputs and targets")
    return total, parts
