"""`affectmae export`: assemble a MODEL_DIR (encoder + temporal heads) for `analyze` and `predict`."""

from __future__ import annotations

import json

from affectmae.cli import add_config_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="bundle an encoder checkpoint and trained temporal runs into a MODEL_DIR",
        description="Several runs for the same task become an ensemble (averaged predictions). Settings: "
        "defaults < --config FILE < key=value < flags (ExportConfig); they are saved as MODEL_DIR/config.yaml.",
    )
    p.add_argument("--encoder", default=None, help="encoder checkpoint the features were extracted with")
    p.add_argument("--run", dest="runs", action="append", default=None,
                   help="`affectmae train` run folder (repeatable)")
    p.add_argument("-o", "--out", default=None, help="MODEL_DIR to write")
    p.add_argument("--align-margin", type=float, default=None,
                   help="face-crop margin of the encoder's training frames, for analyze (default: 1.0, Aff-Wild2 crops)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing MODEL_DIR")
    add_config_arguments(p, "ExportConfig")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.inference.model import run_export

    print(json.dumps(run_export(args.config, args.overrides, encoder=args.encoder, runs=args.runs, out=args.out,
                                align_margin=args.align_margin, overwrite=args.overwrite)))
    return 0
