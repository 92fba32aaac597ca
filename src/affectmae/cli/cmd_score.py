"""``affectmae score``: official ABAW score of a submission CSV against Aff-Wild2 annotation files."""

from __future__ import annotations

import argparse
import json

from affectmae.cli import add_config_arguments, split_settings
from affectmae.tasks import TASKS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score a submission CSV against a folder of annotation .txt files",
        description="Print the official score (CCC / macro F1 / mean AU F1) of PRED_CSV as JSON on stdout. "
        "Settings: defaults < --config FILE < key=value < arguments (ScoreConfig: task, pred_csv, annotation_dir).",
    )
    parser.add_argument("--task", default=None, choices=sorted(TASKS), help="which challenge the CSV is for")
    parser.add_argument("pred_csv", nargs="?", help="ABAW submission CSV (image_location,...)")
    parser.add_argument("annotation_dir", nargs="?",
                        help="folder of <video>.txt annotations, e.g. .../VA_Estimation_Challenge/Validation_Set")
    add_config_arguments(parser, "ScoreConfig")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from affectmae.errors import AffectMAEError
    from affectmae.evaluation.scoring import run_score

    tokens = [t for t in (args.pred_csv, args.annotation_dir) if t is not None] + list(args.overrides)
    paths, settings = split_settings(tokens)
    if len(paths) > 2:
        raise AffectMAEError(f"expected PRED_CSV and ANNOTATION_DIR, got {len(paths)} arguments: {' '.join(paths)}")
    paths += [None] * (2 - len(paths))
    result = run_score(args.config, settings, task=args.task, pred_csv=paths[0], annotation_dir=paths[1])
    print(json.dumps(result, indent=2))
    return 0
