"""The official ABAW per-frame metrics: CCC for valence/arousal, macro F1 for expressions, mean F1 for
action units. numpy in, python floats out; usable from torch code after ``.cpu().numpy()``.

Definitions (see docs/metrics.md):

- ``CCC(x, y) = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))**2)`` with population statistics
  (divide by N, not N - 1), computed in float64. When the denominator is 0 (both inputs constant and
  equal) the CCC is undefined and we return 0.0.
- EXPR: macro F1 over all 8 classes; a class with no true and no predicted frame has F1 0 (as
  ``sklearn.metrics.f1_score(average="macro", labels=range(8), zero_division=0)``).
- AU: mean over the 12 AUs of the binary F1 of the positive class; predictions are positive when
  ``value >= threshold`` (0.5 unless per-AU thresholds are given).

Frames with invalid labels are excluded: those where ``valid`` is False and those whose label carries
the task's invalid marker (-5 for VA, -1 for EXPR and AU; for AU each unit is checked on its own).
The task-specific parts (column names, marker, kind) come from :mod:`affectmae.tasks`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from affectmae.errors import AffectMAEError
from affectmae.tasks import TASKS, TaskSpec, get_task


def _array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise AffectMAEError(f"{name} must be numeric, got dtype {x.dtype}")
    return x


def ccc(x: Any, y: Any) -> float:
    """Concordance correlation coefficient of two 1-D sequences ``x, y: (N,)`` (population statistics).

    Worked example: x = [1, 2, 3], y = [2, 4, 6]: means 2 and 4, var_x = 2/3, var_y = 8/3, cov = 4/3,
    so CCC = (8/3) / (2/3 + 8/3 + 4) = (8/3) / (22/3) = 4/11 = 0.3636...
    Returns 0.0 when the denominator is 0 (both inputs constant and equal).
    """
    x = _array(x, "x").astype(np.float64).ravel()
    y = _array(y, "y").astype(np.float64).ravel()
    if x.shape != y.shape:
        raise AffectMAEError(f"ccc: inputs differ in length ({x.size} vs {y.size})")
    if x.size == 0:
        raise AffectMAEError("ccc: no values")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise AffectMAEError("ccc: inputs contain NaN or infinite values")
    mx, my = x.mean(), y.mean()
    vx, vy = np.mean((x - mx) ** 2), np.mean((y - my) ** 2)
    cov = np.mean((x - mx) * (y - my))
    denom = vx + vy + (mx - my) ** 2
    return 0.0 if denom == 0 else float(2.0 * cov / denom)


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN) per entry; 0 where the denominator is 0 (sklearn ``zero_division=0``)."""
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0).astype(np.float64)


def _frame_mask(valid: Any, n: int) -> np.ndarray:
    if valid is None:
        return np.ones(n, dtype=bool)
    valid = _array(valid, "valid").astype(bool).ravel()
    if valid.shape[0] != n:
        raise AffectMAEError(f"valid mask has {valid.shape[0]} entries for {n} frames")
    return valid


def _check_rows(pred: np.ndarray, true: np.ndarray, width: int, spec: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
    if width == 1:
        pred, true = (a.reshape(-1) if a.ndim == 2 and a.shape[1] == 1 else a for a in (pred, true))
        ok = pred.ndim == 1 and true.ndim == 1
    else:
        ok = pred.ndim == 2 and true.ndim == 2 and pred.shape[1] == width and true.shape[1] == width
    if not ok or pred.shape[0] != true.shape[0]:
        want = "(N,)" if width == 1 else f"(N, {width})"
        raise AffectMAEError(f"{spec.name} metrics expect pred and true of shape {want}, got {pred.shape} and {true.shape}")
    return pred, true


def _empty_error(spec: TaskSpec, n: int) -> AffectMAEError:
    return AffectMAEError(f"{spec.name}: no frame with a valid label left to score (out of {n} frames)")


def _regression_metrics(spec: TaskSpec, pred: Any, true: Any, valid: Any = None) -> dict:
    pred, true = _check_rows(_array(pred, "pred"), _array(true, "true"), spec.num_outputs, spec)
    keep = _frame_mask(valid, true.shape[0]) & np.all(true != spec.invalid, axis=1)
    if not keep.any():
        raise _empty_error(spec, true.shape[0])
    per_column = {f"ccc_{col}": ccc(pred[keep, i], true[keep, i]) for i, col in enumerate(spec.columns)}
    return {"score": float(np.mean(list(per_column.values()))), **per_column, "frames_scored": int(keep.sum())}


def _multiclass_metrics(spec: TaskSpec, pred: Any, true: Any, valid: Any = None) -> dict:
    pred, true = _array(pred, "pred"), _array(true, "true")
    if pred.ndim == 2 and pred.shape[1] == spec.num_outputs:  # logits or probabilities -> class index
        pred = pred.argmax(axis=1)
    pred, true = _check_rows(pred, true, 1, spec)
    keep = _frame_mask(valid, true.shape[0]) & (true != spec.invalid)
    if not keep.any():
        raise _empty_error(spec, true.shape[0])
    pred, true = pred[keep], true[keep]
    n_cls = spec.num_outputs
    for name, arr in (("true", true), ("pred", pred)):
        bad = (arr != np.round(arr)) | (arr < 0) | (arr >= n_cls)
        if bad.any():
            raise AffectMAEError(f"{spec.name}: {name} class indices must be integers 0..{n_cls - 1}, found {arr[bad][0].item():g}")
    pred, true = pred.astype(np.int64), true.astype(np.int64)
    confusion = np.bincount(true * n_cls + pred, minlength=n_cls * n_cls).reshape(n_cls, n_cls)
    tp = np.diag(confusion).astype(np.float64)
    f1 = _f1_from_counts(tp, confusion.sum(axis=0) - tp, confusion.sum(axis=1) - tp)
    return {
        "score": float(f1.mean()),
        "f1_per_class": {name: float(v) for name, v in zip(spec.columns, f1, strict=True)},
        "frames_scored": int(keep.sum()),
    }


def _multilabel_metrics(
    spec: TaskSpec, pred: Any, true: Any, valid: Any = None, thresholds: float | Sequence[float] = 0.5
) -> dict:
    pred, true = _check_rows(_array(pred, "pred"), _array(true, "true"), spec.num_outputs, spec)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (spec.num_outputs,)) if np.ndim(thresholds) == 0 \
        else np.asarray(thresholds, dtype=np.float64)
    if thr.shape != (spec.num_outputs,):
        raise AffectMAEError(f"{spec.name}: expected one threshold or {spec.num_outputs}, got {thr.shape[0]}")
    keep = _frame_mask(valid, true.shape[0])[:, None] & (true != spec.invalid)  # (N, K), per unit
    if not keep.any():
        raise _empty_error(spec, true.shape[0])
    if np.any((true != 0) & (true != 1) & keep):
        bad = true[(true != 0) & (true != 1) & keep][0].item()
        raise AffectMAEError(f"{spec.name}: true labels must be 0/1 (or {spec.invalid:g} for invalid), found {bad:g}")
    if np.any(np.isnan(pred) & keep):
        raise AffectMAEError(f"{spec.name}: predictions contain NaN")
    positive = pred >= thr[None, :]
    is_true = true == 1
    tp = np.sum(positive & is_true & keep, axis=0).astype(np.float64)
    fp = np.sum(positive & ~is_true & keep, axis=0).astype(np.float64)
    fn = np.sum(~positive & is_true & keep, axis=0).astype(np.float64)
    f1 = _f1_from_counts(tp, fp, fn)
    return {
        "score": float(f1.mean()),
        "f1_per_au": {name: float(v) for name, v in zip(spec.columns, f1, strict=True)},
        "frames_scored": int(keep.any(axis=1).sum()),
    }


_BY_KIND = {"regression": _regression_metrics, "multiclass": _multiclass_metrics, "multilabel": _multilabel_metrics}


def va_metrics(pred: Any, true: Any, valid: Any = None) -> dict:
    """``pred, true: (N, 2)`` -> ``{"score": mean CCC, "ccc_valence", "ccc_arousal", "frames_scored"}``."""
    return _regression_metrics(TASKS["va"], pred, true, valid)


def expr_metrics(pred_labels: Any, true: Any, valid: Any = None) -> dict:
    """``pred_labels: (N,)`` class indices (or ``(N, 8)`` scores, arg-maxed), ``true: (N,)`` or ``(N, 1)``
    -> ``{"score": macro F1 over 8 classes, "f1_per_class": {name: f1}, "frames_scored"}``."""
    return _multiclass_metrics(TASKS["expr"], pred_labels, true, valid)


def au_metrics(pred: Any, true: Any, valid: Any = None, thresholds: float | Sequence[float] = 0.5) -> dict:
    """``pred: (N, 12)`` 0/1 or probabilities, ``true: (N, 12)`` 0/1/-1; ``thresholds``: one value or (12,)
    -> ``{"score": mean F1 over 12 AUs, "f1_per_au": {name: f1}, "frames_scored"}``."""
    return _multilabel_metrics(TASKS["au"], pred, true, valid, thresholds)


def evaluate(task: str, pred: Any, true: Any, valid: Any = None, **options: Any) -> dict:
    """Official metric of ``task`` ("va" | "expr" | "au"); ``options`` go to the metric (AU ``thresholds``)."""
    spec = get_task(task)
    return _BY_KIND[spec.kind](spec, pred, true, valid, **options)


def tune_au_thresholds(
    probs: Any, true: Any, valid: Any = None, grid: Sequence[float] = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))
) -> np.ndarray:
    """Per-AU threshold from ``grid`` that maximises that AU's F1 on the given data.

    ``probs, true: (N, 12)``; returns float64 ``(12,)``. Ties go to the threshold closest to 0.5.
    Tune on data that is not scored afterwards (``train`` tunes on the training videos' predictions);
    F1 at thresholds tuned on the scored frames themselves is optimistic.
    """
    spec = TASKS["au"]
    probs, true = _check_rows(_array(probs, "probs"), _array(true, "true"), spec.num_outputs, spec)
    grid = sorted(float(g) for g in grid)
    if not grid:
        raise AffectMAEError("tune_au_thresholds: empty grid")
    scores = np.stack(
        [np.array(list(_multilabel_metrics(spec, probs, true, valid, g)["f1_per_au"].values())) for g in grid]
    )  # (G, 12)
    closeness = -np.abs(np.asarray(grid) - 0.5)[:, None]  # tie-break toward 0.5
    best = np.lexsort((np.broadcast_to(closeness, scores.shape), scores), axis=0)[-1]
    return np.asarray(grid, dtype=np.float64)[best]
