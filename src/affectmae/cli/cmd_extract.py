"""`affectmae extract`: encoder features for every frame of every video (one float16 array per video)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract",
        help="run an encoder over every frame and write one (N, D) float16 array + mask per video",
        description="Writes FEATURES/<video>.npy, FEATURES/<video>.mask.npy and FEATURES/features.json. "
        "Resumable: videos already written are skipped. Frames without an image are filled (see --missing).",
    )
    p.add_argument("--encoder", required=True,
                   help="encoder checkpoint (ours, reference-MAE .pth or timm); or a baseline: 'pixels' / 'pixels:S' "
                        "(grey SxS pixels, default 24) or 'random:CHECKPOINT' (its architecture, random weights)")
    p.add_argument("--seed", type=int, default=0, help="weights of a random:CHECKPOINT encoder")
    p.add_argument("--frames", required=True, help="cropped_aligned folder (or the folder holding it)")
    p.add_argument("--data", default="", help="Aff-Wild2 annotation root: frame counts come from the annotations")
    p.add_argument("-o", "--out", required=True, help="features folder")
    p.add_argument("--videos", nargs="+", default=None, help="only these videos")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--decode-threads", type=int, default=-1,
                   help="JPEG decoding threads that decode ahead of the encoder (default: 0 on CPU, 2 on GPU)")
    p.add_argument("--missing", choices=("linear", "nearest", "zero"), default="linear",
                   help="features of frames without an image: interpolate in time, copy the nearest, or zeros")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: dynamically quantised Linear layers on the CPU, faster at a small fidelity cost "
                        "(docs/benchmarks.md)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.features.store import ExtractConfig, extract_features

    summary = extract_features(ExtractConfig(
        encoder=args.encoder, frames=args.frames, out=args.out, annotations=args.data, videos=args.videos,
        batch_size=args.batch_size, decode_threads=args.decode_threads, missing=args.missing,
        torch_threads=args.threads, quantize=args.quantize, seed=args.seed,
    ))
    summary.pop("per_video")
    print(json.dumps(summary))
    return 0
