"""``affectmae analyze VIDEO... --model MODEL_DIR -o OUT``: per-frame affect for every face in videos."""

from __future__ import annotations

import argparse

from affectmae.cli import add_config_arguments, split_settings


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="per-frame valence/arousal, expression and AUs for every face in videos (CSV + plots)",
        description="Decode each video, detect, track and align faces, and write OUT/<stem>.csv (one row per "
        "frame and face; frames without a face are flagged), OUT/<stem>.summary.json and PNG plots. Videos "
        "already analysed with the same settings are skipped on a rerun. Settings: defaults < --config FILE < "
        "key=value < flags (AnalyzeConfig).",
    )
    p.add_argument("inputs", nargs="*", metavar="VIDEO",
                   help="video files (anything FFmpeg reads: mp4, mov, mkv, avi, ...), folders of videos or quoted "
                   "glob patterns ('clips/**/*.mp4'); key=value tokens among them set any AnalyzeConfig field "
                   "(e.g. max_age=50 align_margin=1.2)")
    p.add_argument("--model", dest="model_dir", metavar="MODEL_DIR",
                   help="folder written by `affectmae export` or `demo`")
    p.add_argument("-o", "--out", metavar="OUT", help="output folder")
    add_config_arguments(p, "AnalyzeConfig", overrides=False)
    p.add_argument("--batch-size", type=int, help="face crops per encoder batch (default 32)")
    p.add_argument("--stride", type=int, help="analyse every k-th frame and interpolate the rest (default 1)")
    p.add_argument("--max-frames", type=int, metavar="N",
                   help="analyse only the first N frames of each video (default: all)")
    p.add_argument("--device", help="cpu, cuda or auto (default)")
    p.add_argument("--detector", help="face detector: auto (default), yuface or mtcnn")
    p.add_argument("--min-face", type=int, help="ignore faces smaller than this many pixels (default 32)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--openface-names", action="store_true",
                   help="write OpenFace-style column names (timestamp, confidence, success, AU12_c, ...)")
    p.add_argument("--video-out", action="store_true", help="also write OUT/<stem>.annotated.mp4")
    p.add_argument("--shard", metavar="K/N", help="analyse only the K-th of N equal parts of the inputs (K = 1..N)")
    p.add_argument("--overwrite", action="store_true", help="re-analyse videos that are already finished in OUT")
    p.add_argument("--causal", action="store_true",
                   help="analyse as `affectmae live` does: each frame from past frames only (needs a model trained "
                   "with `train causal=true`)")
    p.set_defaults(func=run, omp_passive=True)


def run(args: argparse.Namespace) -> int:
    from affectmae.inference.batch import run_analyze

    inputs, settings = split_settings(args.inputs)
    r = run_analyze(args.config, settings, inputs=inputs or None, model_dir=args.model_dir, out=args.out,
                    batch_size=args.batch_size, stride=args.stride, max_frames=args.max_frames,
                    device=args.device, detector=args.detector,
                    min_face=args.min_face, plots=False if args.no_plots else None,
                    column_names="openface" if args.openface_names else None, video_out=args.video_out or None,
                    shard=args.shard, overwrite=args.overwrite or None, causal=args.causal or None)
    print(f"{len(r['analyzed'])} videos analysed ({r['frames']} frames), {len(r['skipped'])} already done -> {r['out']}")
    return 0
