"""Figures and markdown for the `cv` and `ablate` tables: scores per run, mean ± std over seeds.

Standard deviations are **sample** standard deviations (``ddof=1``) over the seeds; with one seed there
is none and a cell shows the mean alone.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

STD_NOTE = "sample standard deviation (ddof=1)"


def scores_from_metrics(best: dict) -> dict[str, float | None]:
    """The table's figures from a run's best validation metrics (None for a task it did not train).

    ``au_f1`` is at threshold 0.5; ``au_f1_tuned`` at the thresholds stored with the run (tuned on its
    training videos unless ``au_threshold_source`` says otherwise; None when none were tuned).
    """
    va, expr, au = best.get("va"), best.get("expr"), best.get("au")
    return {
        "valence": va["ccc_valence"] if va else None,
        "arousal": va["ccc_arousal"] if va else None,
        "va": va["score"] if va else None,
        "expr_f1": expr["score"] if expr else None,
        "au_f1": au["score"] if au else None,
        "au_f1_tuned": au.get("score_tuned_thresholds") if au else None,
    }


def mean_std(values: Iterable[float]) -> tuple[float | None, float | None]:
    """(mean, sample std with ddof=1) of ``values``; std is None for fewer than two values, both None for none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def aggregate(per_seed: dict[int, dict[str, float | None]], keys: Iterable[str]) -> tuple[dict, dict]:
    """``{seed: {key: value}}`` -> ({key: mean over seeds}, {key: sample std over seeds}); None where absent."""
    means, stds = {}, {}
    for key in keys:
        means[key], stds[key] = mean_std(scores.get(key) for scores in per_seed.values())
    return means, stds


def cell(mean: float | None, std: float | None = None) -> str:
    """``0.1234``, ``0.1234 ± 0.0056`` or ``-`` (no value)."""
    if mean is None:
        return "-"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """Rows of strings or numbers (numbers as ``0.1234``, None as ``-``) -> a markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(c if isinstance(c, str) else cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_value(value) -> str:
    return "" if value is None else f"{value:.6f}"


def seeds_note(seeds: list[int]) -> str:
    """The line under a table saying what the ± means."""
    if len(seeds) == 1:
        return f"Seed {seeds[0]} (one run per row, no standard deviation)."
    return f"Mean ± {STD_NOTE} over seeds {', '.join(str(s) for s in seeds)}."
