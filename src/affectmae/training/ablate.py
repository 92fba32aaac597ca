"""`affectmae ablate`: the paper's Table 5 on the official split (fold 0).

Rows (each trained for every task in ``tasks``, with the same config apart from the change named):

- ``full``: TCN + Transformer on the fine-tuned encoder's features;
- ``w/o fine-tuning``: the same model on features of the MAE-pretrained (not fine-tuned) encoder, i.e.
  another features folder (``--mae-features``; without it the row is reported as not run);
- ``w/o TCN``: ``model.use_tcn=false`` (a linear projection to the same width instead);
- ``w/o Transformer``: ``model.use_transformer=false``;
- ``per-frame linear``: a linear layer per frame on the same features (our baseline, no temporal context).

Outputs ``OUT/ablation_results.json``, ``OUT/ablation_results.csv`` and ``OUT/ablation_table.md``
(columns VA mean CCC, EXPR F1, AU F1); runs go to ``OUT/<variant>/<task>/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from ..errors import AffectMAEError
from ..io import atomic_write_text
from .cv import markdown_table, scores_from_metrics
from .temporal import TrainConfig, train_temporal

log = logging.getLogger(__name__)

VARIANTS = (
    ("full", "ours (TCN + Transformer)"),
    ("no_finetune", "w/o fine-tuning"),
    ("no_tcn", "w/o TCN"),
    ("no_transformer", "w/o Transformer"),
    ("linear", "per-frame linear"),
)
COLUMNS = (("va", "VA"), ("expr_f1", "EXPR"), ("au_f1", "AU"))


def _variant_config(cfg: TrainConfig, variant: str, mae_features: str | None) -> TrainConfig | None:
    model = cfg.model
    if variant == "no_finetune":
        return dataclasses.replace(cfg, features=mae_features) if mae_features else None
    if variant == "no_tcn":
        model = dataclasses.replace(model, use_tcn=False)
    elif variant == "no_transformer":
        model = dataclasses.replace(model, use_transformer=False)
    elif variant == "linear":
        model = dataclasses.replace(model, arch="linear")
    return dataclasses.replace(cfg, model=model)


def run_ablation(cfg: TrainConfig, tasks: list[str], out: str | Path, mae_features: str | None = None) -> dict:
    """Train every variant for every task on fold ``cfg.fold`` (0 by default); write and return the table."""
    if not tasks:
        raise AffectMAEError("ablate needs at least one task")
    if mae_features and not Path(mae_features).is_dir():
        raise AffectMAEError(f"--mae-features folder not found: {mae_features}")
    out = Path(out)
    results: dict[str, dict] = {}
    rows = []
    for variant, title in VARIANTS:
        vcfg = _variant_config(cfg, variant, mae_features)
        if vcfg is None:
            log.warning("ablate: row %r not run (give --mae-features: features of the MAE-pretrained encoder)", title)
            results[variant] = {"skipped": "no --mae-features given"}
            rows.append([title, *["not run" for _ in COLUMNS]])
            continue
        scores: dict = {}
        for task in tasks:
            run_dir = out / variant / task
            result = train_temporal(dataclasses.replace(vcfg, task=task, out=str(run_dir)))
            scores.update({k: v for k, v in scores_from_metrics(result["best"]).items() if v is not None})
        results[variant] = scores
        rows.append([title, *[scores.get(c) for c, _ in COLUMNS]])
    table = markdown_table(["Method", *[h for _, h in COLUMNS]], rows)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"tasks": tasks, "fold": cfg.fold, "results": results, "table": table}
    atomic_write_text(out / "ablation_results.json", json.dumps(payload, indent=2))
    csv = ["variant," + ",".join(c for c, _ in COLUMNS)]
    for variant, _ in VARIANTS:
        r = results[variant]
        csv.append(",".join([variant, *("" if r.get(c) is None else f"{r[c]:.6f}" for c, _ in COLUMNS)]))
    atomic_write_text(out / "ablation_results.csv", "\n".join(csv) + "\n")
    atomic_write_text(out / "ablation_table.md", table)
    return payload


def ablate_from_args(config: str | None, overrides: list[str], tasks: list[str], out: str,
                     mae_features: str | None, **settings) -> dict:
    """CLI entry: config + overrides -> :func:`run_ablation`."""
    from ..config import load_config, parse_overrides
    from .temporal import resolve_config

    cfg = load_config(TrainConfig, resolve_config(config), {**parse_overrides(overrides), **settings})
    return run_ablation(cfg, tasks, out, mae_features)
