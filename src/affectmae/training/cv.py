"""`affectmae cv`: five-fold cross-validation of the temporal model, reported like the paper's Table 1.

Fold 0 is the official train/validation split; folds 1-4 split the merged train+validation videos by
video (seeded; see :func:`affectmae.training.temporal_data.make_folds`). Each task (or the multi-task
model) is trained once per fold into ``OUT/<task>/fold<k>/`` (an ordinary ``affectmae train`` run
folder, so ``predict --run`` can ensemble them). Outputs::

    OUT/cv_results.json   every fold's best validation metrics + the table rows
    OUT/cv_results.csv    fold,valence,arousal,expr_f1,au_f1
    OUT/cv_table.md       the table: Valence CCC, Arousal CCC, EXPR F1, AU F1 per fold, plus the mean
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from ..errors import AffectMAEError
from ..io import atomic_write_text
from .temporal import TrainConfig, train_temporal

log = logging.getLogger(__name__)

COLUMNS = (("valence", "Valence CCC"), ("arousal", "Arousal CCC"), ("expr_f1", "EXPR F1"), ("au_f1", "AU F1"))


def scores_from_metrics(best: dict) -> dict[str, float | None]:
    """The table's figures from a run's best validation metrics (None for a task it did not train)."""
    va, expr, au = best.get("va"), best.get("expr"), best.get("au")
    return {
        "valence": va["ccc_valence"] if va else None,
        "arousal": va["ccc_arousal"] if va else None,
        "va": va["score"] if va else None,
        "expr_f1": expr["score"] if expr else None,
        "au_f1": au["score"] if au else None,
    }


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(c if isinstance(c, str) else _fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_cv(cfg: TrainConfig, tasks: list[str], out: str | Path, folds: list[int] | None = None) -> dict:
    """Train every task in ``tasks`` ("va", "expr", "au" or "multi") on every fold; write and return the table."""
    if not tasks:
        raise AffectMAEError("cv needs at least one task")
    folds = list(range(cfg.n_folds)) if not folds else folds
    out = Path(out)
    per_fold: dict[int, dict] = {k: {} for k in folds}
    runs: dict[str, dict[int, str]] = {}
    for task in tasks:
        for k in folds:
            run_dir = out / task / f"fold{k}"
            log.info("cv: task %s, fold %d -> %s", task, k, run_dir)
            result = train_temporal(dataclasses.replace(cfg, task=task, fold=k, out=str(run_dir)))
            runs.setdefault(task, {})[k] = str(run_dir)
            for key, value in scores_from_metrics(result["best"]).items():
                if value is not None:
                    per_fold[k][key] = value
    rows = []
    for k in folds:
        rows.append([f"Fold {k}", *[per_fold[k].get(c) for c, _ in COLUMNS]])
    means = []
    for c, _ in COLUMNS:
        vals = [per_fold[k][c] for k in folds if c in per_fold[k]]
        means.append(float(np.mean(vals)) if vals else None)
    rows.append(["Mean", *means])
    table = markdown_table(["Fold", *[h for _, h in COLUMNS]], rows)
    result = {"tasks": tasks, "folds": folds, "per_fold": {str(k): v for k, v in per_fold.items()},
              "mean": dict(zip([c for c, _ in COLUMNS], means)), "runs": runs, "table": table}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "cv_results.json", json.dumps(result, indent=2))
    csv = ["fold," + ",".join(c for c, _ in COLUMNS)]
    csv += [",".join([str(r[0]).replace("Fold ", "").lower(), *("" if v is None else f"{v:.6f}" for v in r[1:])]) for r in rows]
    atomic_write_text(out / "cv_results.csv", "\n".join(csv) + "\n")
    atomic_write_text(out / "cv_table.md", table)
    return result


def cv_from_args(config: str | None, overrides: list[str], tasks: list[str], out: str, folds: list[int] | None,
                 **settings) -> dict:
    """CLI entry: config + overrides -> :func:`run_cv`."""
    from ..config import load_config, parse_overrides
    from .temporal import resolve_config

    cfg = load_config(TrainConfig, resolve_config(config), {**parse_overrides(overrides), **settings})
    return run_cv(cfg, tasks, out, folds)
