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


def identity_and_expression(store: FeatureStore, data: str | Path, seed: int = 0) -> dict[str, float]:
    """What a frame encoder carries about *who* versus *what expression*, on the training videos of a
    ``synth`` folder: linear probes fitted on the first half of every training video's frames and scored on
    the second half. ``identity``: accuracy of a logistic regression over the person shown (``synth_info.json``,
    the identity where several photographs show one person), with ``identity_chance`` the share of the most
    common person; ``expr_f1``: macro-F1 of the same kind of probe over the EXPR labels."""
    data = Path(data)
    info = json.loads((data / "synth_info.json").read_text())
    videos = {v["name"]: v.get("identity") or v["person"] for v in info["videos"] if v["split"] == "train"}
    expr = {lab.video: lab for lab in load_annotations(data / "annotations", "expr", "train")}
    halves: dict[str, list] = {"xi": [[], []], "yi": [[], []], "xe": [[], []], "ye": [[], []]}
    for name, person in sorted(videos.items()):
        rows, present = store.rows(name)
        feats = np.asarray(rows, dtype=np.float32)
        n = len(feats)
        for h, part in enumerate((slice(0, n // 2), slice(n // 2, n))):
            keep = np.flatnonzero(present[:n][part]) + (part.start or 0)
            halves["xi"][h].append(feats[keep])
            halves["yi"][h] += [person] * len(keep)
            if name in expr:
                lab = expr[name]
                keep = keep[keep < lab.n_frames]
                keep = keep[lab.valid[keep]]
                halves["xe"][h].append(feats[keep])
                halves["ye"][h].append(lab.labels[keep].ravel())
    xi = [np.concatenate(x) for x in halves["xi"]]
    mu, sd = xi[0].mean(0), xi[0].std(0) + 1e-6
    model = LogisticRegression(C=0.05, max_iter=500, random_state=seed)
    model.fit((xi[0] - mu) / sd, halves["yi"][0])
    identity = float(np.mean(model.predict((xi[1] - mu) / sd) == np.asarray(halves["yi"][1])))
    _, counts = np.unique(halves["yi"][1], return_counts=True)
    xe = [(np.concatenate(x) - mu) / sd for x in halves["xe"]]
    ye = [np.concatenate(y) for y in halves["ye"]]
    model = LogisticRegression(C=0.05, max_iter=500, class_weight="balanced", random_state=seed)
    expr_f1 = float(evaluate("expr", model.fit(xe[0], ye[0]).predict(xe[1])[:, None], ye[1][:, None])["score"])
    return {"identity": identity, "identity_chance": float(counts.max() / counts.sum()), "expr_f1": expr_f1,
            "people": len(set(videos.values()))}


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
