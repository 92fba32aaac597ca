"""`affectmae train`: the TCN + Transformer temporal model on stored features (one task, or all at once)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the temporal model on extracted features",
        description="Defaults follow the paper (w=300, s=200, AdamW lr 3e-5, wd 1e-5, dropout 0.3, batch 32, "
        "cosine with 1 warm-up epoch). Trailing key=value pairs override the config, e.g. epochs=5 model.use_tcn=false.",
    )
    p.add_argument("--features", required=True, help="features folder from `affectmae extract`")
    p.add_argument("--annotations", "--data", required=True, help="Aff-Wild2 annotation root")
    p.add_argument("--task", required=True, choices=("va", "expr", "au", "multi"))
    p.add_argument("-o", "--out", required=True, help="run folder")
    p.add_argument("--config", default=None, help="YAML config (e.g. temporal_paper.yaml, temporal_tiny.yaml)")
    p.add_argument("--fold", type=int, default=None, help="0 = official split (default), 1-4 = split by video")
    p.add_argument("--baseline", choices=("linear",), default=None,
                   help="train the per-frame linear baseline on the same features instead")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last_state.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.training.temporal import run_train

    result = run_train(args.config, args.overrides, features=args.features, annotations=args.annotations,
                       task=args.task, out=args.out, fold=args.fold, baseline=args.baseline, resume=args.resume or None,
                       overwrite=args.overwrite or None)
    print(json.dumps({"run_dir": result["run_dir"], "best_epoch": result["best_epoch"], "best": result["best"]}))
    return 0
