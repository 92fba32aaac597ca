"""``affectmae score``: official ABAW score of a submission CSV against Aff-Wild2 annotation files."""

from __future__ import annotations

import argparse
import json

from affectmae.tasks import TASKS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score a submission CSV against a folder of annotation .txt files",
        description="Print the official score (CCC / macro F1 / mean AU F1) of PRED_CSV as JSON on stdout.",
    )
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="which challenge the CSV is for")
    parser.add_argument("pred_csv", help="ABAW submission CSV (image_location,...)")
    parser.add_argument("annotation_dir", help="folder of <video>.txt annotations, e.g. .../VA_Estimation_Challenge/Validation_Set")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from affectmae.evaluation.scoring import score_submission

    result = score_submission(args.task, args.pred_csv, args.annotation_dir)
    print(json.dumps(result, indent=2))
    return 0
