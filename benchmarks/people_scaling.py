"""Does the frame encoder generalise to unseen people better when it is trained on more people?

    python benchmarks/people_scaling.py --modes k4 k14 blend40 --seeds 0 1 [--out /tmp/people_scaling]

For each mode and seed, the realistic set (``synth --source photos``, 40 videos of about 150 frames, the same
4 validation people for every mode of a seed) is generated with a different set of *training* identities:

- ``kN``: N of the 14 training people (chosen by the seed);
- ``blendN``: the 14 training people plus N new identities, each an aligned blend of two training people
  (weights 0.35-0.65); validation people are never blended;
- ``mixN``: the 14 training people plus N new identities, each an aligned blend of three training people
  (Dirichlet(1, 1, 1) weights), for more identities than the 91 pairs allow.

Then the CLI runs as a user would: ``pretrain --config pretrain_tiny`` on the set's ``faces/`` images,
``finetune --config finetune_tiny`` (EXPR, from that encoder), ``extract`` with the fine-tuned encoder, and
per-frame linear probes (``benchmarks/encoder_probe.py``: raw features, and features minus the video's mean)
score VA, EXPR and AU on the unseen validation people. Prints one markdown row per run, the mean per mode, the
chance rows of the first run's labels, and the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np

from affectmae.cli import main as cli
from affectmae.datasets.annotations import load_annotations
from affectmae.features.store import FeatureStore
from affectmae.synth import people as people_module
from affectmae.synth.photos import PhotoPerson
from affectmae.training.baselines import majority_chance, uniform_chance
from bench_pretrain import cpu_name
from encoder_probe import probe


def _mix(people: list[PhotoPerson], weights, tag: int | None = None) -> PhotoPerson:
    """An aligned blend of ``people`` with ``weights`` (summing to 1): a new identity."""
    canvas = sum(w * p.canvas for w, p in zip(weights, people, strict=True)).astype(np.float32)
    key = "+".join(p.key for p in people) + ("" if tag is None else f"#{tag}")
    return PhotoPerson(key, people[0].source, canvas, min(p.score for p in people), min(p.face_px for p in people))


def training_people(train: list, mode: str, seed: int) -> list:
    """The training identities of ``mode`` (see the module docstring)."""
    rng = np.random.default_rng([seed, 99])
    if mode.startswith("k"):
        return [train[i] for i in sorted(rng.permutation(len(train))[: int(mode[1:])])]
    if mode.startswith("blend"):
        pairs = list(itertools.combinations(range(len(train)), 2))
        blends = []
        for j in rng.permutation(len(pairs))[: int(mode[5:])]:
            w = rng.uniform(0.35, 0.65)
            blends.append(_mix([train[pairs[j][0]], train[pairs[j][1]]], (w, 1 - w)))
        pool = train + blends
        return [pool[i] for i in rng.permutation(len(pool))]
    if mode.startswith("mix"):
        mixes = [_mix([train[i] for i in rng.choice(len(train), 3, replace=False)], rng.dirichlet(np.ones(3)), j)
                 for j in range(int(mode[3:]))]
        pool = train + mixes
        return [pool[i] for i in rng.permutation(len(pool))]
    raise SystemExit(f"unknown mode {mode!r}: use kN, blendN or mixN")


def patch_people(mode: str, seed: int) -> None:
    original = people_module.FaceSource.__init__

    def init(self, source, seed_, photos=(), val_fraction=0.25, **kwargs):
        original(self, source, seed_, photos, val_fraction, **kwargs)
        self.people["train"] = training_people(self.people["train"], mode, seed)
        self.info["split"]["train"] = [p.key for p in self.people["train"]]

    people_module.FaceSource.__init__ = init


def run_one(out: Path, mode: str, seed: int, videos: int, frames: int) -> dict:
    patch_people(mode, seed)
    data, seconds = out / "data", {}

    def stage(name: str, args: list[str]) -> None:
        start = time.perf_counter()
        if cli(args) not in (0, None):
            raise SystemExit(f"{name} failed: affectmae {' '.join(args)}")
        seconds[name] = round(time.perf_counter() - start, 1)

    stage("synth", ["synth", str(data), "--videos", str(videos), "--frames", str(frames), "--seed", str(seed),
                    "--source", "photos", "--overwrite"])
    stage("pretrain", ["pretrain", "--images", str(data / "faces"), "-o", str(out / "pretrain"),
                       "--config", "pretrain_tiny", f"seed={seed}"])
    stage("finetune", ["finetune", "--annotations", str(data), "--encoder", str(out / "pretrain"),
                       "-o", str(out / "finetune"), "--config", "finetune_tiny", f"seed={seed}"])
    stage("extract", ["extract", "--encoder", str(out / "finetune" / "encoder.safetensors"),
                      "--frames", str(data / "cropped_aligned"), "--annotations", str(data),
                      "-o", str(out / "features")])
    info = json.loads((data / "synth_info.json").read_text())
    store = FeatureStore(out / "features")
    return {"mode": mode, "seed": seed, "train_identities": len(info["people"]["split"]["train"]),
            "raw": probe(store, str(data / "annotations"), 2, False),
            "person": probe(store, str(data / "annotations"), 2, True), "seconds": seconds}


def chance(annotations: Path) -> dict[str, dict[str, float]]:
    """Uniform-random and majority/all-ones scores on the validation labels (``training/baselines.py``)."""
    rows: dict[str, dict[str, float]] = {"uniform": {}, "majority": {}}
    for task, key in (("va", "va"), ("expr", "expr_f1"), ("au", "au_f1")):
        videos = load_annotations(str(annotations), task, "val")
        true = np.concatenate([v.labels for v in videos])
        valid = np.concatenate([v.valid for v in videos])
        rows["uniform"][task] = uniform_chance(task, true, valid)[key]
        rows["majority"][task] = majority_chance(task, true, valid)[key]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["k4", "k14", "blend40"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--out", default="/tmp/people_scaling")
    args = parser.parse_args()
    rows = []
    for mode, seed in itertools.product(args.modes, args.seeds):
        out = Path(args.out) / f"{mode}_s{seed}"
        cached = out / "result.json"
        if cached.is_file():
            rows.append(json.loads(cached.read_text()))
            continue
        # each run in its own process: the people patch and the CLI's state stay per run
        pid = os.fork()
        if pid == 0:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(run_one(out, mode, seed, args.videos, args.frames)))
            os._exit(0)
        os.waitpid(pid, 0)
        rows.append(json.loads(cached.read_text()))
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; AFFECTMAE_CPU_GEMM={os.environ.get('AFFECTMAE_CPU_GEMM', 'auto')}")
    print("| mode | seed | training identities | VA raw | EXPR raw | AU raw | VA person | EXPR person | AU person |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['mode']} | {r['seed']} | {r['train_identities']} | "
              + " | ".join(f"{r[v][t]:.3f}" for v in ("raw", "person") for t in ("va", "expr", "au")) + " |")
    for mode in args.modes:
        sel = [r for r in rows if r["mode"] == mode]
        print(f"| {mode} | mean of {len(sel)} | {sel[0]['train_identities']} | "
              + " | ".join(f"{np.mean([r[v][t] for r in sel]):.3f}" for v in ("raw", "person")
                           for t in ("va", "expr", "au")) + " |")
    first = Path(args.out) / f"{args.modes[0]}_s{args.seeds[0]}" / "data" / "annotations"
    for name, scores in chance(first).items():
        cells = " | ".join(f"{scores[t]:.3f}" for t in ("va", "expr", "au"))
        print(f"| chance: {name} ({args.modes[0]}, seed {args.seeds[0]} labels) | | | {cells} | {cells} |")


if __name__ == "__main__":
    main()
