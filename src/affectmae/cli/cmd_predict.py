"""`affectmae predict`: ABAW submission CSVs (one row per listed frame) from stored features."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="write ABAW submission CSVs from features with a MODEL_DIR or trained runs",
        description="Writes OUT/<task>_predictions.csv. Frames without a face get rows too (their features were "
        "interpolated at extraction). Several --run folders (e.g. CV folds) are ensembled.",
    )
    p.add_argument("--features", required=True, help="features folder of the test videos")
    p.add_argument("--model", default="", help="MODEL_DIR from `affectmae export`")
    p.add_argument("--run", action="append", default=[], help="training run folder (repeat to ensemble)")
    p.add_argument("--task", action="append", default=[], choices=("va", "expr", "au"),
                   help="only these tasks (repeatable; default: every task the model has)")
    p.add_argument("--test-list", default="", help="organisers' example CSV (image_location,...) or a list of videos "
                   "(one per line, optionally ',n_frames'); default: every video of --features")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.inference.predict import PredictConfig, predict_submissions

    summary = predict_submissions(PredictConfig(features=args.features, out=args.out, model=args.model, runs=args.run,
                                                tasks=args.task, test_list=args.test_list))
    print(json.dumps(summary))
    return 0
