"""`affectmae cv`: train every fold (fold 0 = official split, 1-4 = split by video) and print Table 1 with its
baselines (per-frame linear, chance)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cv",
        help="five-fold cross-validation; writes cv_results.json/.csv and cv_table.md",
        description="Trains OUT/<task>/fold<k>/ for every task and fold and prints V, A, EXPR F1 and AU F1 per fold "
        "and their mean as a markdown table.",
    )
    p.add_argument("--features", required=True, help="features folder from `affectmae extract`")
    p.add_argument("--annotations", "--data", required=True, help="Aff-Wild2 annotation root")
    p.add_argument("--task", action="append", choices=("va", "expr", "au", "multi"), default=None,
                   help="repeatable; default: va, expr and au (one model each)")
    p.add_argument("--folds", type=int, nargs="+", default=None, help="only these folds (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="train every fold once per seed; cells show mean ± sample std (default: config seeds / seed)")
    p.add_argument("--no-linear-baseline", action="store_true",
                   help="skip the per-frame linear baseline row (it trains one more model per fold and seed)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace the finished runs in --out")
    p.add_argument("--config", default=None, help="YAML config (temporal_paper / temporal_tiny or a file)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.training.cv import run_cv

    result = run_cv(args.config, args.overrides, tasks=args.task or ["va", "expr", "au"], out=args.out,
                    folds=args.folds, seeds=args.seeds, linear_baseline=not args.no_linear_baseline,
                    features=args.features, annotations=args.annotations, overwrite=args.overwrite)
    print(result["table"], end="")
    return 0
