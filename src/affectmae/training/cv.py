"""`affectmae cv`: five-fold cross-validation of the temporal model, reported like the paper's Table 1.

Fold 0 is the official train/validation split; folds 1-4 split the merged train+validation videos by
video (seeded; see :func:`affectmae.training.temporal_data.make_folds`). Each task (or the multi-task
model) is trained once per fold and seed into ``OUT/<task>/fold<k>/`` (one seed) or
``OUT/<task>/seed<s>/fold<k>/`` (several): ordinary ``affectmae train`` run folders, so ``predict --run``
can ensemble them. Each run tunes its AU thresholds on its own fold's training videos
(``au_threshold_source``, default ``train``), never on the fold it is scored on.

Rows of the table: every fold, the mean over folds, then the baselines: the per-frame linear model on
the same features (``linear_baseline``, trained per fold and seed into ``OUT/baselines/linear/...``) and
the two chance rows of :mod:`affectmae.training.baselines` (computed from each fold's validation labels,
averaged over folds). With several seeds a cell is ``mean ± sample std (ddof=1)`` over the seeds; the
"Mean" row takes, per seed, the mean over folds, then mean ± std of those over seeds.

Outputs::

    OUT/cv_results.json   per-seed, per-fold scores, the aggregates, the baselines and the table
    OUT/cv_results.csv    row,seed,valence,arousal,expr_f1,au_f1,au_f1_tuned (seed: a seed, mean, std or -)
    OUT/cv_table.md       the table and a note on seeds and thresholds
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from affectmae.config import build_config
from affectmae.errors import AffectMAEError
from affectmae.io import atomic_write_text
from affectmae.training.baselines import CHANCE_ROWS, chance_scores
from affectmae.training.report import (
    aggregate,
    cell,
    csv_value,
    markdown_table,
    mean_std,
    scores_from_metrics,
    seeds_note,
)
from affectmae.training.temporal import TrainConfig, train_temporal

__all__ = ["COLUMNS", "cross_validate", "run_cv", "markdown_table", "scores_from_metrics", "au_tuned_header"]

log = logging.getLogger(__name__)

COLUMNS = (("valence", "Valence CCC"), ("arousal", "Arousal CCC"), ("expr_f1", "EXPR F1"), ("au_f1", "AU F1 (0.5)"),
           ("au_f1_tuned", "AU F1 (tuned)"))
KEYS = [c for c, _ in COLUMNS]


def au_tuned_header(source: str) -> str:
    return {"train": "AU F1 (thresholds from train)", "val": "AU F1 (thresholds from val, optimistic)",
            "none": "AU F1 (no tuning)"}.get(source, "AU F1 (tuned)")


def thresholds_note(source: str) -> str:
    return {"train": "AU thresholds are tuned on each run's training videos, never on the frames scored.",
            "val": "AU thresholds are tuned on the scored validation frames themselves: that column is optimistic.",
            "none": "AU thresholds are not tuned."}[source]


def _train_grid(cfg: TrainConfig, tasks: list[str], folds: list[int], seeds: list[int], root: Path,
                runs: dict) -> dict[int, dict[int, dict]]:
    """Train every task x seed x fold; returns ``{seed: {fold: scores}}``."""
    per_seed: dict[int, dict[int, dict]] = {s: {k: {} for k in folds} for s in seeds}
    for task in tasks:
        for s in seeds:
            for k in folds:
                run_dir = root / task / (f"fold{k}" if len(seeds) == 1 else f"seed{s}/fold{k}")
                log.info("cv: task %s, seed %d, fold %d -> %s", task, s, k, run_dir)
                result = train_temporal(dataclasses.replace(cfg, task=task, fold=k, seed=s, seeds=[], out=str(run_dir)))
                runs.setdefault(task, {}).setdefault(str(s), {})[str(k)] = str(run_dir)
                per_seed[s][k].update({c: v for c, v in scores_from_metrics(result["best"]).items() if v is not None})
    return per_seed


def _fold_means(per_seed: dict[int, dict[int, dict]], folds: list[int]) -> dict[int, dict]:
    """Per seed, the mean over folds of each column."""
    return {s: {c: mean_std(per_seed[s][k].get(c) for k in folds)[0] for c in KEYS} for s in per_seed}


def _csv_lines(row: str, per_seed: dict[int, dict], seeds: list[int]) -> list[str]:
    lines = [",".join([row, str(s), *(csv_value(per_seed[s].get(c)) for c in KEYS)]) for s in seeds]
    if len(seeds) > 1:
        mean, std = aggregate(per_seed, KEYS)
        lines.append(",".join([row, "mean", *(csv_value(mean[c]) for c in KEYS)]))
        lines.append(",".join([row, "std", *(csv_value(std[c]) for c in KEYS)]))
    return lines


def cross_validate(cfg: TrainConfig, tasks: list[str], out: str | Path, folds: list[int] | None = None,
           seeds: list[int] | None = None, linear_baseline: bool = True, chance: bool = True) -> dict:
    """Train every task in ``tasks`` ("va", "expr", "au" or "multi") on every fold for every seed (default:
    ``cfg.seeds``, else ``[cfg.seed]``), plus the per-frame linear baseline (``linear_baseline``) and the
    chance rows (``chance``); write and return the table (``result["table"]``) and every figure behind it."""
    if not tasks:
        raise AffectMAEError("cv needs at least one task")
    folds = list(range(cfg.n_folds)) if not folds else list(folds)
    seeds = [int(s) for s in (seeds or cfg.seeds or [cfg.seed])]
    if len(set(seeds)) != len(seeds):
        raise AffectMAEError(f"cv: seeds repeat: {seeds}")
    out = Path(out)
    runs: dict[str, dict] = {}
    per_seed = _train_grid(cfg, tasks, folds, seeds, out, runs)
    rows = []
    per_fold, per_fold_std = {}, {}
    for k in folds:
        per_fold[k], per_fold_std[k] = aggregate({s: per_seed[s][k] for s in seeds}, KEYS)
        rows.append([f"Fold {k}", *[cell(per_fold[k][c], per_fold_std[k][c]) for c in KEYS]])
    fold_means = _fold_means(per_seed, folds)
    mean, mean_sd = aggregate(fold_means, KEYS)
    rows.append(["Mean", *[cell(mean[c], mean_sd[c]) for c in KEYS]])
    baselines: dict[str, dict] = {}
    if linear_baseline:
        linear_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch="linear"))
        lin_runs: dict[str, dict] = {}
        lin_seed = _train_grid(linear_cfg, tasks, folds, seeds, out / "baselines" / "linear", lin_runs)
        lin_means = _fold_means(lin_seed, folds)
        lmean, lstd = aggregate(lin_means, KEYS)
        baselines["linear"] = {"per_seed": {str(s): {str(k): v for k, v in f.items()} for s, f in lin_seed.items()},
                               "per_seed_mean": {str(s): v for s, v in lin_means.items()},
                               "mean": lmean, "std": lstd, "runs": lin_runs}
        rows.append(["per-frame linear, same features (mean over folds)", *[cell(lmean[c], lstd[c]) for c in KEYS]])
    if chance:
        by_fold = {k: chance_scores(dataclasses.replace(cfg, fold=k), tasks) for k in folds}
        for name, title in CHANCE_ROWS:
            fold_scores = {k: by_fold[k][name] for k in folds}
            cmean = {c: mean_std(fold_scores[k].get(c) for k in folds)[0] for c in KEYS}
            baselines[name] = {"per_fold": {str(k): v for k, v in fold_scores.items()}, "mean": cmean}
            rows.append([f"{title} (mean over folds)", *[cell(cmean[c]) for c in KEYS]])
    headers = ["Fold", *[h for _, h in COLUMNS[:-1]], au_tuned_header(cfg.au_threshold_source)]
    table = (markdown_table(headers, rows) + "\n" + seeds_note(seeds) + " " + thresholds_note(cfg.au_threshold_source)
             + (" Chance rows are computed from each fold's validation labels (training/baselines.py)." if chance else "")
             + "\n")
    result = {"tasks": tasks, "folds": folds, "seeds": seeds, "std": "sample (ddof=1) over seeds",
              "au_threshold_source": cfg.au_threshold_source,
              "per_fold": {str(k): {c: v for c, v in per_fold[k].items() if v is not None} for k in folds},
              "per_fold_std": {str(k): per_fold_std[k] for k in folds},
              "per_seed": {str(s): {str(k): v for k, v in f.items()} for s, f in per_seed.items()},
              "per_seed_mean": {str(s): v for s, v in fold_means.items()},
              "mean": mean, "mean_std": mean_sd, "baselines": baselines, "runs": runs, "table": table}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "cv_results.json", json.dumps(result, indent=2))
    csv = ["row,seed," + ",".join(KEYS)]
    for k in folds:
        csv += _csv_lines(str(k), {s: per_seed[s][k] for s in seeds}, seeds)
    csv += _csv_lines("mean", fold_means, seeds)
    if "linear" in baselines:
        csv += _csv_lines("linear", _fold_means(lin_seed, folds), seeds)
    for name, _ in CHANCE_ROWS if chance else ():
        csv.append(",".join([name, "-", *(csv_value(baselines[name]["mean"][c]) for c in KEYS)]))
    atomic_write_text(out / "cv_results.csv", "\n".join(csv) + "\n")
    atomic_write_text(out / "cv_table.md", table)
    return result


def run_cv(config: str | Path | None = None, overrides: list[str] | dict | None = None, *, tasks: list[str],
           out: str | Path, folds: list[int] | None = None, seeds: list[int] | None = None,
           linear_baseline: bool = True, **explicit: Any) -> dict:
    """Entry point: the temporal :class:`TrainConfig` (defaults < config file or packaged name < ``key=value``
    overrides < named settings that are not None, e.g. ``features``, ``annotations``), then
    :func:`cross_validate` into ``out``."""
    cfg = build_config(TrainConfig, config, overrides, **explicit)
    return cross_validate(cfg, tasks, out, folds, seeds=seeds, linear_baseline=linear_baseline)
