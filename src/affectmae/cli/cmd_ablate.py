"""`affectmae ablate`: Table 5 (full model, w/o fine-tuning, w/o TCN, w/o Transformer, per-frame linear) with
baselines (raw pixels, random-init encoder, chance) and a reference (FER2013 CNN features), mean ± std over
seeds."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ablate",
        help="ablation table on the official split; writes ablation_results.json/.csv and ablation_table.md",
        description="Trains each variant for each task into OUT/<variant>/<task>/ and prints the table.",
    )
    p.add_argument("--features", required=True, help="features of the fine-tuned encoder")
    p.add_argument("--mae-features", default=None, help="features of the MAE-pretrained encoder (row 'w/o fine-tuning')")
    p.add_argument("--pixel-features", default=None,
                   help="features from `extract --encoder pixels:24` (row 'raw pixels (per-frame linear)')")
    p.add_argument("--random-features", default=None,
                   help="features from `extract --encoder random:ENCODER --seed K` (row 'random-init encoder')")
    p.add_argument("--teacher-features", default=None,
                   help="features from `extract --encoder fer` (rows 'FER2013 CNN features', temporal and linear)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="train every row once per seed; the table shows mean ± sample std (default: config seeds / seed)")
    p.add_argument("--annotations", "--data", required=True, help="Aff-Wild2 annotation root")
    p.add_argument("--task", action="append", choices=("va", "expr", "au", "multi"), default=None,
                   help="repeatable; default: va, expr and au")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace the finished runs in --out")
    p.add_argument("--config", default=None, help="YAML config (temporal_paper / temporal_tiny or a file)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.training.ablate import run_ablate

    result = run_ablate(args.config, args.overrides, tasks=args.task or ["va", "expr", "au"], out=args.out,
                        mae_features=args.mae_features, pixel_features=args.pixel_features,
                        random_features=args.random_features, teacher_features=args.teacher_features,
                        seeds=args.seeds,
                        features=args.features, annotations=args.annotations, overwrite=args.overwrite)
    print(result["table"], end="")
    return 0
