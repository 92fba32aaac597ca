"""`affectmae extract`: encoder features for every frame of every video (one float16 array per video)."""

from __future__ import annotations

import json

from affectmae.cli import add_config_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract",
        help="run an encoder over every frame and write one (N, D) float16 array + mask per video",
        description="Writes FEATURES/<video>.npy, FEATURES/<video>.mask.npy, FEATURES/features.json and "
        "FEATURES/config.yaml. Resumable: videos already written are skipped. Frames without an image are filled "
        "(see --missing). Settings: defaults < --config FILE < key=value < flags (ExtractConfig).",
    )
    p.add_argument("--encoder", default=None,
                   help="encoder checkpoint (ours, reference-MAE .pth or timm); or a baseline: 'pixels' / 'pixels:S' "
                        "(grey SxS pixels, default 24) or 'random:CHECKPOINT' (its architecture, random weights)")
    p.add_argument("--seed", type=int, default=None, help="weights of a random:CHECKPOINT encoder (default 0)")
    p.add_argument("--frames", default=None, help="cropped_aligned folder (or the folder holding it)")
    p.add_argument("--annotations", "--data", dest="annotations", default=None,
                   help="Aff-Wild2 annotation root: frame counts come from the annotations")
    p.add_argument("-o", "--out", default=None, help="features folder")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the features already in it (otherwise finished videos are kept)")
    p.add_argument("--videos", nargs="+", default=None, help="only these videos")
    p.add_argument("--batch-size", type=int, default=None, help="frames per encoder batch (default 32)")
    p.add_argument("--decode-threads", type=int, default=None,
                   help="JPEG decoding threads that decode ahead of the encoder (default: 0 on CPU, 2 on GPU)")
    p.add_argument("--missing", choices=("linear", "nearest", "zero"), default=None,
                   help="features of frames without an image: interpolate in time (default), copy the nearest, "
                        "or zeros")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 0: torch's own)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    p.add_argument("--quantize", choices=("none", "int8"), default=None,
                   help="int8: dynamically quantised Linear layers on the CPU, faster at a small fidelity cost "
                        "(docs/benchmarks.md)")
    add_config_arguments(p, "ExtractConfig")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.features.extract import run_extract

    summary = run_extract(args.config, args.overrides, encoder=args.encoder, frames=args.frames, out=args.out,
                          annotations=args.annotations, videos=args.videos, batch_size=args.batch_size,
                          decode_threads=args.decode_threads, missing=args.missing, threads=args.threads,
                          device=args.device, quantize=args.quantize, seed=args.seed,
                          overwrite=args.overwrite)
    summary.pop("per_video")
    print(json.dumps(summary))
    return 0
