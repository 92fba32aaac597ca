"""How much expression, valence/arousal and action-unit information a frame encoder's features carry.

    python benchmarks/encoder_probe.py --data ANNOTATIONS FEATURES [FEATURES ...] [--stride 2]

For each feature folder written by ``affectmae extract`` (a learned encoder, ``pixels:24``, ``random:...``),
fits per-frame linear probes on the official training split and scores them on the validation split with the
official metrics (sklearn: logistic regression for EXPR and each AU with balanced class weights, ridge for
VA; features standardised on the training frames). Two variants per folder:

- ``raw``: the frame's feature as it is;
- ``person``: the feature minus its video's mean over frames with a face (``models.temporal.person_reference``),
  i.e. what changes within a person.

No temporal model is involved: this isolates the frame encoder. Prints one markdown row per folder and
variant, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge

from affectmae.datasets.annotations import load_annotations
from affectmae.evaluation.metrics import evaluate
from affectmae.features.store import FeatureStore
from affectmae.models.temporal import person_reference
from bench_pretrain import cpu_name


def frames(store: FeatureStore, annotations: str, task: str, split: str, stride: int, person: bool):
    """Features (N, D) float32 and labels of the valid, present frames of ``split`` (every ``stride``-th)."""
    xs, ys = [], []
    for labels in load_annotations(annotations, task, split):
        rows, present = store.rows(labels.video)
        feats = np.asarray(rows, dtype=np.float32)[: labels.n_frames]
        if person:
            feats = feats - person_reference(feats, present[: len(feats)])
        keep = np.flatnonzero(labels.valid[: len(feats)] & present[: len(feats)])[::stride]
        xs.append(feats[keep])
        ys.append(labels.labels[keep])
    return np.concatenate(xs), np.concatenate(ys)


def probe(store: FeatureStore, annotations: str, stride: int, person: bool, seed: int = 0) -> dict[str, float]:
    scores = {}
    for task in ("va", "expr", "au"):
        xt, yt = frames(store, annotations, task, "train", stride, person)
        xv, yv = frames(store, annotations, task, "val", 1, person)
        mu, sd = xt.mean(0), xt.std(0) + 1e-6
        xt, xv = (xt - mu) / sd, (xv - mu) / sd
        if task == "va":
            pred = Ridge(alpha=100.0).fit(xt, yt).predict(xv)
        elif task == "expr":
            model = LogisticRegression(C=0.05, max_iter=500, class_weight="balanced", random_state=seed)
            pred = model.fit(xt, yt.ravel()).predict(xv)
        else:
            pred = np.zeros_like(yv)
            for k in range(yt.shape[1]):
                if len(np.unique(yt[:, k])) < 2:
                    pred[:, k] = yt[0, k]
                    continue
                model = LogisticRegression(C=0.05, max_iter=500, class_weight="balanced", random_state=seed)
                pred[:, k] = model.fit(xt, yt[:, k]).predict(xv)
        scores[task] = float(evaluate(task, pred, yv)["score"])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features", nargs="+", help="feature folders written by `affectmae extract`")
    parser.add_argument("--data", required=True, help="annotation root (or the synth folder)")
    parser.add_argument("--stride", type=int, default=2, help="every n-th training frame (default 2)")
    parser.add_argument("--json", default=None, help="also write the scores here")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    print("| features | frames | VA CCC | EXPR F1 | AU F1 |")
    print("| --- | --- | --- | --- | --- |")
    for folder in args.features:
        store = FeatureStore(folder)
        for person in (False, True):
            s = probe(store, args.data, args.stride, person)
            variant = "minus video mean" if person else "raw"
            rows.append({"features": folder, "variant": variant, **s})
            print(f"| {folder} | {variant} | {s['va']:.3f} | {s['expr']:.3f} | {s['au']:.3f} |", flush=True)
    print(f"\nmachine: {cpu_name()}, {os.cpu_count()} cores, {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
