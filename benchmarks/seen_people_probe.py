"""Does a frame encoder carry expression between videos of the *same* people?

    python benchmarks/seen_people_probe.py RUN [RUN ...]

RUN is a folder written by ``benchmarks/people_scaling.py`` (``RUN/data`` the realistic set, ``RUN/features``
the fine-tuned encoder's features). A balanced logistic probe (EXPR) is fitted on every other training video
and scored with the official macro F1 on the frames it was fitted on, on the remaining training videos (the
same people, other moments) and on the validation videos (unseen people); features as they are, and minus
each video's mean feature. Prints one line per run and variant, and the machine.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from affectmae.datasets.annotations import load_annotations
from affectmae.evaluation.metrics import evaluate
from affectmae.features.store import FeatureStore
from affectmae.models.temporal import person_reference
from bench_pretrain import cpu_name


def rows(store: FeatureStore, videos, person: bool) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for labels in videos:
        feats, present = store.rows(labels.video)
        feats = np.asarray(feats, np.float32)[: labels.n_frames]
        if person:
            feats = feats - person_reference(feats, present[: len(feats)])
        keep = np.flatnonzero(labels.valid[: len(feats)] & present[: len(feats)])
        xs.append(feats[keep])
        ys.append(labels.labels[keep])
    return np.concatenate(xs), np.concatenate(ys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs")
    for run in map(Path, args.runs):
        store, annotations = FeatureStore(run / "features"), str(run / "data" / "annotations")
        train, val = load_annotations(annotations, "expr", "train"), load_annotations(annotations, "expr", "val")
        for person in (False, True):
            (xa, ya), (xb, yb), (xv, yv) = (rows(store, v, person) for v in (train[0::2], train[1::2], val))
            mu, sd = xa.mean(0), xa.std(0) + 1e-6
            probe = LogisticRegression(C=0.05, max_iter=500, class_weight="balanced").fit((xa - mu) / sd, ya.ravel())
            f1 = [evaluate("expr", probe.predict((x - mu) / sd), y)["score"] for x, y in ((xa, ya), (xb, yb), (xv, yv))]
            print(f"{run.name} {'minus video mean' if person else 'raw'}: EXPR fit {f1[0]:.3f}, same people other "
                  f"videos {f1[1]:.3f}, unseen people {f1[2]:.3f}")


if __name__ == "__main__":
    main()
