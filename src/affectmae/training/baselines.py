"""Chance rows of the result tables, computed exactly from validation labels (nothing is trained).

- ``chance_uniform``: the expected score of predictions drawn uniformly at random, independent of the
  frames, taken on the expected confusion counts (each valid frame counts 1/8 towards every predicted
  class; each AU is predicted positive on half of every frame):

  - EXPR, class c with n_c of N valid frames: TP = n_c/8, FP = (N - n_c)/8, FN = 7 n_c/8, so
    F1_c = 2 n_c / (N + 8 n_c); the score is the mean over the 8 classes;
  - AU k with n1 positives among its N valid frames: TP = n1/2, FP = (N - n1)/2, FN = n1/2, so
    F1_k = 2 n1 / (N + 2 n1);
  - VA: a prediction independent of the labels has covariance 0 in expectation, so CCC = 0.
- ``chance_majority``: the most frequent validation class for every frame (ties: lowest index), the
  validation mean for VA (constant, so CCC = 0 exactly) and all-ones AU at threshold 0.5; these are
  scored with :mod:`affectmae.evaluation.metrics` itself.

Rows carry the table's keys (see :func:`affectmae.training.report.scores_from_metrics`); the AU score
with tuned thresholds does not apply to them and is None.
"""

from __future__ import annotations

import numpy as np

from affectmae.evaluation.metrics import au_metrics, expr_metrics, va_metrics
from affectmae.features.store import FeatureStore
from affectmae.tasks import TASKS
from affectmae.training.temporal import TrainConfig, task_list
from affectmae.training.temporal_data import load_labelled_videos, select_fold

CHANCE_ROWS = (("chance_uniform", "chance: uniform random"),
               ("chance_majority", "chance: majority class, mean VA, all-ones AU"))


def _valid_rows(task: str, true: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Boolean (N,) for VA/EXPR or (N, K) for AU: which labels are scored (as in :mod:`affectmae.evaluation.metrics`)."""
    spec = TASKS[task]
    valid = np.asarray(valid, bool)
    if spec.kind == "multilabel":
        return valid[:, None] & (true != spec.invalid)
    if spec.kind == "regression":
        return valid & np.all(true != spec.invalid, axis=1)
    return valid & (true.reshape(-1) != spec.invalid)


def uniform_chance(task: str, true: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Expected-count score of uniform random predictions (module doc); keys as :func:`majority_chance`."""
    true = np.asarray(true, dtype=np.float64)
    keep = _valid_rows(task, true, valid)
    if task == "va":
        return {"valence": 0.0, "arousal": 0.0, "va": 0.0}
    if task == "expr":
        k = TASKS["expr"].num_outputs
        labels = true.reshape(-1)[keep].astype(np.int64)
        n_c, n = np.bincount(labels, minlength=k).astype(np.float64), float(labels.size)
        return {"expr_f1": float(np.mean(2 * n_c / (n + k * n_c)))}
    n1 = np.sum((true == 1) & keep, axis=0).astype(np.float64)
    n = np.sum(keep, axis=0).astype(np.float64)
    f1 = np.where(n > 0, 2 * n1 / np.maximum(n + 2 * n1, 1), 0.0)
    return {"au_f1": float(f1.mean())}


def majority_chance(task: str, true: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Majority class (EXPR), validation mean (VA) or all ones (AU) for every frame, officially scored."""
    true = np.asarray(true)
    keep = _valid_rows(task, true, valid)
    if task == "va":
        mean = true[keep].astype(np.float64).mean(axis=0)
        m = va_metrics(np.broadcast_to(mean, true.shape), true, valid)
        exact = {k: 0.0 if abs(m[k]) < 1e-12 else m[k] for k in ("ccc_valence", "ccc_arousal", "score")}  # no "-0.0000"
        return {"valence": exact["ccc_valence"], "arousal": exact["ccc_arousal"], "va": exact["score"]}
    if task == "expr":
        labels = true.reshape(-1)[keep].astype(np.int64)
        majority = int(np.argmax(np.bincount(labels, minlength=TASKS["expr"].num_outputs)))
        return {"expr_f1": expr_metrics(np.full(true.shape[0], majority), true, valid)["score"]}
    return {"au_f1": au_metrics(np.ones(true.shape, np.float64), true, valid, 0.5)["score"]}


def validation_labels(cfg: TrainConfig, task: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{t: (true (N, C), valid (N,))}``: the validation labels a run of ``task`` on ``cfg.fold`` scores,
    all validation videos concatenated (the same selection as :func:`train_temporal`)."""
    store = FeatureStore(cfg.features)
    tasks = task_list(task)
    _, val = select_fold(load_labelled_videos(store, cfg.annotations, tasks), cfg.fold, cfg.n_folds, cfg.fold_seed)
    out = {}
    for t in tasks:
        parts = [(lv.labels[t], lv.valid[t]) for lv in val if t in lv.labels]
        if parts:
            out[t] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def chance_scores(cfg: TrainConfig, tasks: list[str]) -> dict[str, dict[str, float | None]]:
    """``{"chance_uniform": scores, "chance_majority": scores}`` on the validation labels of ``cfg.fold``
    for every entry of ``tasks`` ("va", "expr", "au" or "multi")."""
    rows: dict[str, dict[str, float | None]] = {name: {} for name, _ in CHANCE_ROWS}
    for task in tasks:
        for t, (true, valid) in validation_labels(cfg, task).items():
            rows["chance_uniform"].update(uniform_chance(t, true, valid))
            rows["chance_majority"].update(majority_chance(t, true, valid))
    for scores in rows.values():
        if "au_f1" in scores:
            scores["au_f1_tuned"] = None
    return rows
