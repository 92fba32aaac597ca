"""``affectmae live SOURCE --model MODEL_DIR``: per-frame affect rows from a camera, a stream or a file, as it runs."""

from __future__ import annotations

import argparse
import json
import sys

from affectmae.cli import split_settings


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "live",
        help="per-frame affect rows from a camera, network stream, standard input or file, as frames arrive",
        description="Analyse SOURCE frame by frame with a streaming temporal model (one that only looks back: "
        "`affectmae train ... causal=true`) and write one row per frame and face as soon as the frame is "
        "analysed (JSON lines or CSV, flushed per row). When the analysis falls behind, the oldest waiting frame "
        "is dropped and gets a row with analyzed=False. Ctrl-C or the end of the stream closes the outputs and "
        "prints a summary (frames, drops, latency). key=value tokens set LiveConfig or AnalyzeConfig fields; "
        "detection runs on a copy downscaled to 320 px unless detect_max_side=N is given (analyze keeps 960).",
    )
    p.add_argument("source", metavar="SOURCE",
                   help="/dev/videoN or N (camera), a URL FFmpeg opens (rtsp://, http://, udp://, ...), - (standard "
                   "input: a container such as matroska/nut/mpegts, or raw rgb24 frames with --raw-size), or a file")
    p.add_argument("settings", nargs="*", metavar="key=value", help="LiveConfig or AnalyzeConfig settings")
    p.add_argument("--model", dest="model_dir", metavar="MODEL_DIR", required=True,
                   help="folder written by `affectmae export` with a streaming model")
    p.add_argument("-o", "--out", metavar="FILE", help="rows to FILE (.csv or .jsonl); default - (standard output)")
    p.add_argument("--format", choices=("csv", "jsonl"), help="row format (default: from FILE's suffix; jsonl on stdout)")
    p.add_argument("--realtime", action="store_true", help="a file: play it at its own frame rate")
    p.add_argument("--no-drop", action="store_true",
                   help="never drop a frame: the source waits for the analysis (files; a live source would lag)")
    p.add_argument("--queue", type=int, help="frames that may wait for the analysis (default 2)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="seconds without a frame before the stream counts as stalled (default 10; 0: wait forever)")
    p.add_argument("--input-format", metavar="FMT", help="container of standard input or a device (matroska, nut, v4l2, ...)")
    p.add_argument("--raw-size", metavar="WxH", help="standard input carries raw rgb24 frames of this size")
    p.add_argument("--fps", type=float, help="frame rate of raw frames (default 25)")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--video-out", metavar="FILE", help="also write an MP4 of the analysed frames with the faces drawn")
    p.add_argument("--summary", metavar="FILE", help="also write the summary as JSON to FILE")
    p.add_argument("--encoder-split", metavar="N|auto",
                   help="encoder blocks run in the detection stage (default auto: balance the two stages); "
                   "the rows do not depend on it")
    p.add_argument("--openface-names", action="store_true", help="CSV with OpenFace-style column names")
    p.add_argument("--config", metavar="FILE", help="YAML file of AnalyzeConfig settings (detection, tracking)")
    p.set_defaults(func=run, omp_passive=True)


def run(args: argparse.Namespace) -> int:
    from affectmae.inference.live_run import run_live

    extra, settings = split_settings(args.settings)
    if extra:
        raise SystemExit(f"affectmae live: error: one SOURCE only; also got {' '.join(extra)}")
    if args.openface_names:
        settings.append("column_names=openface")
    summary = run_live(args.config, settings, source=args.source, model_dir=args.model_dir, out=args.out,
                       format=args.format, realtime=args.realtime or None, drop=False if args.no_drop else None,
                       queue=args.queue, timeout=args.timeout, input_format=args.input_format,
                       raw_size=args.raw_size, fps=args.fps, max_frames=args.max_frames, video_out=args.video_out,
                       summary=args.summary, encoder_split=args.encoder_split)
    print(json.dumps(summary), file=sys.stderr)
    return 0
