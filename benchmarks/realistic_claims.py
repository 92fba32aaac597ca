"""The paper's claims on the realistic set (real face photographs), end to end through the CLI, over person
splits, and how they move with the number of training people.

    python benchmarks/realistic_claims.py [-o OUT] [--seeds 0 1 2 3 4] [--train-people 0] [--videos 90]
        [--frames 160] [--split per-seed|fixed] [--pretrain key=value ...] [--pretrain-images SPEC ...]
        [--finetune key=value ...] [--temporal key=value ...]

For every seed the whole learned pipeline is run again. With ``--split per-seed`` (the default) every seed
also gets its own dataset, ``synth --seed k``, and with it its own validation people (unseen in training),
so the mean over seeds is a mean over person splits, as in leave-subjects-out evaluation. ``--split fixed``
keeps one dataset (seed 0) for every seed. ``--train-people N [N ...]`` repeats everything with only N
training people (``synth --train-people N``: the same validation people for a seed at every N; 0 = all of
them) and prints each target against N: the scaling curve. Below, DATA is OUT/n<N>/s<k>/data::

    affectmae synth DATA --source photos --videos 90 --frames 160 --seed k --train-people N
    affectmae pretrain --config pretrain_tiny -o RUN/pretrain --images DATA/faces seed=k
    affectmae finetune --config finetune_tiny --annotations DATA --encoder RUN/pretrain -o RUN/finetune seed=k
    affectmae extract --encoder RUN/finetune ...           (and the MAE encoder, random:<encoder> --seed k)
    affectmae extract --encoder pixels:24 ...              (once per dataset)
    affectmae extract --encoder fer ...                    (once per dataset, when `fetch-media` has the model)
    affectmae ablate --task multi --features ... --mae-features ... --pixel-features ... --random-features ...
        --teacher-features ... --seeds k

then averages every Table 5 row over the seeds (mean ± sample std) and checks the targets:

1. the fine-tuned encoder ("ours") beats raw pixels through the same temporal model on at least 2 of 3 tasks,
   and the per-frame linear model on raw pixels on every task;
2. ours > w/o fine-tuning on every task; ours >= w/o TCN and >= w/o Transformer on at least 2 of 3 tasks;
3. the temporal model >= the per-frame linear baseline on the same features, on every task;
4. EXPR macro-F1 >= 2 x uniform chance; AU F1 at threshold 0.5 above all-ones.

The FER2013 CNN's features (``extract --encoder fer``: a frame model trained on ~28,000 labelled faces) go
through the same temporal model as a reference row; the absolute targets are also checked for that row, to
tell a limit of the temporal model from a limit of the frame encoder.

With the fine-tuned and the MAE features of each run, a linear probe of identity and of expression on the
training videos (``encoder_probe.identity_and_expression``) shows what the encoder carries before and after
fine-tuning. Prints the tables, one PASS/FAIL line per target with the numbers behind it, the curve, the
machine, and the seconds per stage; writes ``OUT/claims.json``. Finished stages in OUT are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from affectmae.features.store import FeatureStore
from encoder_probe import identity_and_expression

TASK_COLUMNS = (("va", "VA"), ("expr_f1", "EXPR"), ("au_f1", "AU (0.5)"))


def _run(args: list[str], timings: dict, key: str) -> None:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "affectmae", *args]
    print("$ affectmae " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): affectmae {' '.join(args)}")
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def _machine() -> str:
    from bench_pretrain import cpu_name

    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    except (OSError, StopIteration):
        isa = "?"
    import torch

    return f"{cpu_name()}, {os.cpu_count()} cores, {isa}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _extract(encoder: str, out: Path, data: Path, seed: int, timings: dict) -> Path:
    if not (out / "features.json").is_file() or any(out.glob("*.tmp*")):
        _run(["extract", "--encoder", encoder, "--frames", str(data / "cropped_aligned"), "--data", str(data),
              "-o", str(out), "--seed", str(seed)], timings, "extract")
    return out


def run_seed(seed: int, run: Path, data: Path, pixels: Path, teacher: Path | None, args, timings: dict) -> dict:
    """The learned pipeline of one seed on ``data`` into ``run``; returns the ablation's results."""
    if not (run / "pretrain" / "encoder.safetensors").is_file():
        extra = [a for spec in args.pretrain_images for a in ("--images", spec.replace("{data}", str(data)))]
        _run(["pretrain", "--config", "pretrain_tiny", "-o", str(run / "pretrain"), "--images", str(data / "faces"),
              *extra, f"seed={seed}", *args.pretrain], timings, "pretrain")
    if not (run / "finetune" / "encoder.safetensors").is_file():
        _run(["finetune", "--config", "finetune_tiny", "--annotations", str(data), "--encoder", str(run / "pretrain"),
              "-o", str(run / "finetune"), f"seed={seed}", *args.finetune], timings, "finetune")
    ours = _extract(str(run / "finetune" / "encoder.safetensors"), run / "features", data, seed, timings)
    mae = _extract(str(run / "pretrain" / "encoder.safetensors"), run / "features_mae", data, seed, timings)
    rand = _extract(f"random:{run / 'finetune' / 'encoder.safetensors'}", run / "features_random", data, seed, timings)
    result = run / "ablate" / "ablation_results.json"
    if not result.is_file():
        _run(["ablate", "--config", "temporal_tiny", "--features", str(ours), "--annotations", str(data / "annotations"),
              "--task", "multi", "--mae-features", str(mae), "--pixel-features", str(pixels), "--random-features",
              str(rand), *(["--teacher-features", str(teacher)] if teacher else []), "--seeds", str(seed),
              "-o", str(run / "ablate"), *args.temporal], timings, "ablate")
    return json.loads(result.read_text())["results"]


def _synth(data: Path, seed: int, train_people: int, args, timings: dict) -> Path:
    info = data / "synth_info.json"
    if not info.is_file() or not json.loads(info.read_text())["complete"]:
        _run(["synth", str(data), "--source", "photos", "--videos", str(args.videos), "--frames", str(args.frames),
              "--seed", str(seed), "--train-people", str(train_people), "--overwrite"], timings, "synth")
    return data


def _score(results: dict, variant: str, key: str) -> float:
    return float(results[variant][key])


def check_claims(rows: dict[str, dict[str, list[float]]]) -> list[tuple[str, bool, str, float]]:
    """rows: variant -> column -> per-seed scores. Returns (claim, passed, the numbers behind it, margin): the
    margin is the smallest of the differences that must be positive (or >= 0) for the claim to pass, taken
    over the tasks that decide it, so the curve can show how far a claim is from passing."""
    m = {v: {c: float(np.mean(s)) for c, s in cols.items()} for v, cols in rows.items()}
    tasks = [c for c, _ in TASK_COLUMNS]

    def cmp(a: str, b: str, need: int, strict: bool) -> tuple[bool, str, float]:
        diffs = sorted((m[a][t] - m[b][t] for t in tasks), reverse=True)
        margin = diffs[need - 1]  # the need-th best difference decides "on at least `need` tasks"
        text = ", ".join(f"{h} {m[a][t]:.3f} vs {m[b][t]:.3f}" for (t, h) in TASK_COLUMNS)
        return (margin > 0 if strict else margin >= 0), text, margin

    claims = []
    if "full" not in m:
        return claims
    for other, title, need, strict in (
            ("pixels_temporal", "ours > raw pixels through the same temporal model on at least 2 of 3 tasks", 2, True),
            ("pixels", "ours > per-frame linear on raw pixels, every task", 3, True),
            ("no_finetune", "ours > w/o fine-tuning, every task", 3, True),
            ("no_tcn", "ours >= w/o TCN on at least 2 of 3 tasks", 2, False),
            ("no_transformer", "ours >= w/o Transformer on at least 2 of 3 tasks", 2, False),
            ("linear", "temporal model >= per-frame linear on the same features, every task", 3, False)):
        if other in m:
            claims.append((title, *cmp("full", other, need, strict)))
    uniform = m["chance_uniform"]["expr_f1"]
    margin = m["full"]["expr_f1"] - 2 * uniform
    claims.append(("EXPR macro-F1 >= 2 x uniform chance", margin >= 0,
                   f"{m['full']['expr_f1']:.3f} vs 2 x {uniform:.3f}", margin))
    ones = m["chance_majority"]["au_f1"]
    margin = m["full"]["au_f1"] - ones
    claims.append(("AU F1 at 0.5 > all-ones", margin > 0, f"{m['full']['au_f1']:.3f} vs {ones:.3f}", margin))
    return claims


def reference_claims(rows: dict[str, dict[str, list[float]]]) -> list[tuple[str, bool, str, float]]:
    """The absolute targets and the pixel comparison for the FER2013 CNN's features through the same temporal
    model (the ``teacher_temporal`` row), when it ran: what the rest of the pipeline reaches with a frame
    encoder that has seen many people."""
    if "teacher_temporal" not in rows:
        return []
    renamed = {("full" if v == "teacher_temporal" else "linear" if v == "teacher" else v): cols
               for v, cols in rows.items() if v not in ("full", "linear")}
    keep = ("raw pixels", "per-frame linear on the same", "2 x uniform", "all-ones")
    return [(c.replace("ours", "FER2013 CNN features"), *rest) for c, *rest in check_claims(renamed)
            if any(k in c for k in keep)]


def people_needed(ns: list[int], margins: list[float]) -> str:
    """Where a least-squares line of margin against log(people) crosses zero: a rough extrapolation, given only
    within 10x the largest number measured."""
    if len(ns) < 2 or margins[-1] >= 0:
        return "met" if margins[-1] >= 0 else "-"
    slope, icpt = np.polyfit(np.log(ns), margins, 1)
    if slope <= 0:
        return "not with more people at this trend"
    needed = float(np.exp(-icpt / slope))
    if needed > 10 * max(ns):
        return f"beyond 10x the people measured (> {10 * max(ns)}; no clear trend)"
    return f"~{needed:.0f} people (extrapolated)"


def print_table(title: str, rows: dict[str, dict[str, list[float]]]) -> None:
    print(f"\n## {title}\n")
    print("| row | " + " | ".join(h for _, h in TASK_COLUMNS) + " |")
    print("| --- |" + " --- |" * len(TASK_COLUMNS))
    for v, cols in rows.items():
        cells = [f"{np.mean(s):.3f} ± {np.std(s, ddof=1) if len(s) > 1 else 0.0:.3f}" for s in cols.values()]
        print(f"| {v} | " + " | ".join(cells) + " |")


def _probes(run: Path, data: Path, pixels: Path, teacher: Path | None) -> dict:
    """Identity and expression probes of the run's features (cached in RUN/probes.json)."""
    cache = run / "probes.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    folders = [("fine-tuned", run / "features"), ("MAE", run / "features_mae"), ("raw pixels", pixels)]
    result = {name: identity_and_expression(FeatureStore(folder), data)
              for name, folder in folders + ([("FER2013 CNN", teacher)] if teacher else [])}
    cache.write_text(json.dumps(result, indent=2))
    return result


def run_level(n: int, args, out: Path, timings: dict) -> dict:
    """Every seed at ``n`` training people (0: all); returns rows, claims, people counts and probes."""
    per_seed, people, probes = {}, [], []
    for seed in args.seeds:
        base, data_seed = (out / f"n{n}" / f"s{seed}", seed) if args.split == "per-seed" else (out / f"n{n}", 0)
        data = _synth(base / "data", data_seed, n, args, timings)
        pixels = _extract("pixels:24", base / "features_pixels", data, 0, timings)
        teacher = _extract("fer", base / "features_teacher", data, 0, timings) if args.teacher else None
        run = out / f"n{n}" / f"s{seed}"
        per_seed[seed] = run_seed(seed, run, data, pixels, teacher, args, timings)
        split = json.loads((data / "synth_info.json").read_text())["people"]["identity_split"]
        people.append(len(split["train"]))
        print(f"n={n} seed {seed}: {people[-1]} training people; validation people {', '.join(split['val'])}",
              flush=True)
        if args.probe:
            probes.append(_probes(run, data, pixels, teacher))
    first = next(iter(per_seed.values()))
    variants = [v for v in first if "skipped" not in first[v]]
    rows = {v: {c: [_score(r, v, c) for r in per_seed.values()] for c, _ in TASK_COLUMNS} for v in variants}
    return {"n": n, "people": int(np.mean(people)), "rows": rows, "claims": check_claims(rows),
            "reference": reference_claims(rows), "probes": probes}


def print_level(level: dict, seeds: list[int]) -> None:
    print_table(f"Table 5 with {level['people']} training people: mean ± sample std over seeds {seeds}",
                level["rows"])
    print("\n## Targets\n")
    for claim, passed, text, _ in level["claims"]:
        print(f"{'PASS' if passed else 'FAIL'}  {claim}: {text}")
    if level["reference"]:
        print("\n## The same targets for the FER2013 CNN's features through the same temporal model (reference)\n")
        for claim, passed, text, _ in level["reference"]:
            print(f"{'PASS' if passed else 'FAIL'}  {claim}: {text}")
    if level["probes"]:
        print("\n## Linear probes on the training videos (first half of each video -> second half)\n")
        print("| features | identity accuracy | identity chance | EXPR macro-F1 |")
        print("| --- | --- | --- | --- |")
        for name in level["probes"][0]:
            vals = {k: np.mean([p[name][k] for p in level["probes"]]) for k in level["probes"][0][name]}
            print(f"| {name} | {vals['identity']:.3f} | {vals['identity_chance']:.3f} | {vals['expr_f1']:.3f} |")


def print_curve(levels: list[dict]) -> None:
    ns = [lv["people"] for lv in levels]
    print("\n## Scaling curve: margin of each target against the number of training people\n")
    print("| target | " + " | ".join(f"{n} people" for n in ns) + " | where it would be met |")
    print("| --- |" + " --- |" * (len(ns) + 1))
    for i, (claim, *_rest) in enumerate(levels[-1]["claims"]):
        margins = [lv["claims"][i][3] for lv in levels]
        cells = [f"{'PASS' if lv['claims'][i][1] else 'FAIL'} {mg:+.3f}" for lv, mg in zip(levels, margins, strict=True)]
        print(f"| {claim} | " + " | ".join(cells) + f" | {people_needed(ns, margins)} |")
    print("\n| row | " + " | ".join(f"{h} @ {n}" for n in ns for _, h in TASK_COLUMNS) + " |")
    print("| --- |" + " --- |" * (len(ns) * len(TASK_COLUMNS)))
    for v in levels[-1]["rows"]:
        cells = [f"{np.mean(lv['rows'][v][c]):.3f}" for lv in levels for c, _ in TASK_COLUMNS]
        print(f"| {v} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", default="realistic_claims")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--train-people", type=int, nargs="+", default=[0],
                        help="numbers of training people, each a level of the curve (0 = all)")
    parser.add_argument("--videos", type=int, default=90,
                        help="videos per dataset; about 30 %% are validation videos, and the training videos cycle "
                             "through the training people (90: about one video per person with all 84 people)")
    parser.add_argument("--frames", type=int, default=160, help="frames per video (with 80, person normalisation removes most of the affect: docs/benchmarks.md)")
    parser.add_argument("--split", choices=("per-seed", "fixed"), default="per-seed",
                        help="per-seed: synth --seed k for seed k (other validation people per seed); "
                             "fixed: one dataset, seed 0")
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="skip the identity/expression probes")
    parser.add_argument("--no-teacher", dest="teacher", action="store_false",
                        help="skip the FER2013 CNN reference rows (they need `affectmae fetch-media`)")
    parser.add_argument("--pretrain", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--pretrain-images", nargs="*", default=[], metavar="SPEC",
                        help="more pretraining images beside DATA/faces, as face specs; {data} is the seed's data "
                             "folder, e.g. 'affwild2:{data}?every=4' (the training videos' frames)")
    parser.add_argument("--finetune", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--temporal", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    out = Path(args.out)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    levels = []
    for n in args.train_people:  # in the order given: all people (0) first gives the claims soonest
        levels.append(run_level(n, args, out, timings))
        print_level(levels[-1], args.seeds)
    if len(levels) > 1:
        print_curve(sorted(levels, key=lambda lv: lv["people"]))
    total = time.perf_counter() - start
    machine = _machine()
    print(f"\nmachine: {machine}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f"; total {total:.0f}")
    (out / "claims.json").write_text(json.dumps({
        "seeds": args.seeds, "levels": [
            {**lv, **{key: [{"claim": c, "passed": p, "numbers": t, "margin": mg} for c, p, t, mg in lv[key]]
                      for key in ("claims", "reference")}}
            for lv in levels],
        "machine": machine, "seconds": timings, "settings": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
