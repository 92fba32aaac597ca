"""`affectmae predict`: ABAW submission CSVs (one row per listed frame) from stored features."""

from __future__ import annotations

import json

from affectmae.cli import add_config_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="write ABAW submission CSVs from features with a MODEL_DIR or trained runs",
        description="Writes OUT/<task>_predictions.csv and OUT/config.yaml. Frames without a face get rows too "
        "(their features were interpolated at extraction). Several --run folders (e.g. CV folds) are ensembled. "
        "Settings: defaults < --config FILE < key=value < flags (PredictConfig).",
    )
    p.add_argument("--features", default=None, help="features folder of the test videos")
    p.add_argument("--model", dest="model_dir", default=None, metavar="MODEL_DIR",
                   help="MODEL_DIR from `affectmae export`")
    p.add_argument("--run", dest="runs", action="append", default=None,
                   help="training run folder (repeat to ensemble)")
    p.add_argument("--task", dest="tasks", action="append", default=None, choices=("va", "expr", "au"),
                   help="only these tasks (repeatable; default: every task the model has)")
    p.add_argument("--test-list", default=None, help="organisers' example CSV (image_location,...) or a list of "
                   "videos (one per line, optionally ',n_frames'); default: every video of --features")
    p.add_argument("-o", "--out", default=None, help="output folder")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace submission files already in it")
    add_config_arguments(p, "PredictConfig")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.inference.predict import run_predict

    summary = run_predict(args.config, args.overrides, features=args.features, out=args.out,
                          model_dir=args.model_dir, runs=args.runs, tasks=args.tasks, test_list=args.test_list,
                          overwrite=args.overwrite)
    print(json.dumps(summary))
    return 0
