"""The price of looking only back: the two-way and the causal temporal model on the same features.

    python benchmarks/causal_price.py RUNS [--level n0] [--config temporal_tiny] [--task multi]

RUNS is a ``realistic_claims.py`` output folder: for every split folder ``RUNS/<level>/s<k>`` (with the
fine-tuned encoder's ``features`` and the synthetic set's ``data/annotations``), this trains::

    affectmae train --config temporal_tiny --features RUN/features --annotations RUN/data/annotations \
        --task multi -o RUN/causal_price/two_way seed=k model.causal=false
    ... -o RUN/causal_price/causal seed=k model.causal=true

The causal model (``causal=true``: causal TCN, attention over the frames before, running-mean person
reference) is validated causally, as ``live`` and ``analyze --causal`` run it, so the difference of the
validation scores (unseen people) is what looking only back costs. Prints mean ± sample std over the splits
per task, the per-split scores and the machine; writes ``RUNS/causal_price.json``. Finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from realistic_claims import _machine, _run

TASKS = (("va", "VA CCC"), ("expr", "EXPR F1"), ("au", "AU F1 (0.5)"))


def train_pair(run: Path, seed: int, config: str, task: str, timings: dict) -> dict[str, dict[str, float]]:
    """Both models of one split; returns {"two_way"|"causal": {task: validation score}}."""
    scores = {}
    for name, causal in (("two_way", "false"), ("causal", "true")):
        out = run / "causal_price" / name
        if not (out / "best.json").is_file():
            _run(["train", "--config", config, "--features", str(run / "features"), "--annotations",
                  str(run / "data" / "annotations"), "--task", task, "-o", str(out), f"seed={seed}",
                  f"model.causal={causal}", "--overwrite"], timings, name)
        best = json.loads((out / "best.json").read_text())["metrics"]
        scores[name] = {t: float(best[t]["score"]) for t, _ in TASKS if t in best}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="realistic_claims.py output folder")
    parser.add_argument("--level", default="n0", help="the level folder inside RUNS (n0 = all training people)")
    parser.add_argument("--config", default="temporal_tiny")
    parser.add_argument("--task", default="multi")
    args = parser.parse_args()
    splits = sorted((p for p in (args.runs / args.level).glob("s*") if (p / "features" / "features.json").is_file()),
                    key=lambda p: int(p.name[1:]))
    if not splits:
        raise SystemExit(f"no split folders with features under {args.runs / args.level}")
    timings: dict[str, float] = {}
    per_split = {p.name: train_pair(p, int(p.name[1:]), args.config, args.task, timings) for p in splits}
    tasks = [(t, h) for t, h in TASKS if all(t in s["two_way"] for s in per_split.values())]
    print(f"\n## Two-way vs causal temporal model, {len(splits)} splits ({args.runs / args.level})\n")
    print("| model | " + " | ".join(h for _, h in tasks) + " |")
    print("| --- |" + " --- |" * len(tasks))
    summary = {}
    for name, label in (("two_way", "two-way (looks both ways)"), ("causal", "causal (looks only back)")):
        cells = []
        for t, _ in tasks:
            vals = np.array([s[name][t] for s in per_split.values()])
            summary.setdefault(name, {})[t] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
            cells.append(f"{vals.mean():.3f} ± {summary[name][t]['std']:.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    diffs = {t: [s["causal"][t] - s["two_way"][t] for s in per_split.values()] for t, _ in tasks}
    print("| causal - two-way | " + " | ".join(f"{np.mean(diffs[t]):+.3f}" for t, _ in tasks) + " |")
    print("\nper split (two-way / causal): " + "; ".join(
        f"{k}: " + ", ".join(f"{t} {v['two_way'][t]:.3f}/{v['causal'][t]:.3f}" for t, _ in tasks) for k, v in per_split.items()))
    print(f"machine: {_machine()}; seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    (args.runs / "causal_price.json").write_text(json.dumps(
        {"splits": per_split, "summary": summary, "machine": _machine(), "config": args.config, "task": args.task}, indent=2))


if __name__ == "__main__":
    main()
