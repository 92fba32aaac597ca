"""`affectmae export`: assemble a MODEL_DIR (encoder + temporal heads) for `analyze` and `predict`."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="bundle an encoder checkpoint and trained temporal runs into a MODEL_DIR",
        description="Several runs for the same task become an ensemble (averaged predictions).",
    )
    p.add_argument("--encoder", required=True, help="encoder checkpoint the features were extracted with")
    p.add_argument("--run", action="append", required=True, help="`affectmae train` run folder (repeatable)")
    p.add_argument("-o", "--out", required=True, help="MODEL_DIR to write")
    p.add_argument("--align-margin", type=float, default=None,
                   help="face-crop margin of the encoder's training frames, for analyze (default: 1.0, Aff-Wild2 crops)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.inference.model import export_model_dir

    print(json.dumps(export_model_dir(args.encoder, args.run, args.out, align_margin=args.align_margin)))
    return 0
