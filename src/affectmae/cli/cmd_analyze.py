"""``affectmae analyze VIDEO --model MODEL_DIR -o OUT``: per-frame affect for every face in a video."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="per-frame valence/arousal, expression and AUs for every face in a video (CSV + plots)",
        description="Decode VIDEO, detect, track and align faces, and write OUT/predictions.csv (one row per "
        "frame and face; frames without a face are flagged), OUT/summary.json and PNG plots.",
    )
    p.add_argument("video", help="video file (anything FFmpeg reads: mp4, mov, mkv, avi, ...)")
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="folder written by `affectmae train` or `demo`")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
    p.add_argument("--config", metavar="FILE", help="YAML file of analyze settings (AnalyzeConfig)")
    p.add_argument("--batch-size", type=int, help="face crops per encoder batch (default 32)")
    p.add_argument("--stride", type=int, help="analyse every k-th frame and interpolate the rest (default 1)")
    p.add_argument("--device", help="cpu, cuda or auto (default)")
    p.add_argument("--detector", help="face detector: auto (default) or yuface")
    p.add_argument("--min-face", type=int, help="ignore faces smaller than this many pixels (default 32)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--video-out", metavar="MP4", help="also write an annotated copy of the video")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any other AnalyzeConfig setting, given right after VIDEO "
                   "(e.g. `affectmae analyze clip.mp4 max_age=50 align_margin=1.2 --model M -o OUT`)")
    p.set_defaults(func=run, omp_passive=True)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..inference.pipeline import AnalyzeConfig, analyze_video

    flags = {"batch_size": args.batch_size, "stride": args.stride, "device": args.device,
             "detector": args.detector, "min_face": args.min_face}
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.no_plots:
        overrides.append("plots=false")
    cfg = load_config(AnalyzeConfig, args.config, overrides)
    df = analyze_video(args.video, args.model, out_dir=args.out, config=cfg, video_out=args.video_out)
    s = df.attrs["summary"]
    print(f"{s['frames_decoded']} frames ({s['frames_analyzed']} analysed), {s['faces']} face tracks, "
          f"{s['frames_without_face']} frames without a face -> {args.out}/predictions.csv")
    return 0
