"""Tiny feature datasets for the temporal-model tests: written straight into a features folder + Aff-Wild2
annotation files, so train/cv/predict tests need no encoder and no JPEGs.

Each video has a smooth 2-D latent (valence, arousal) path. Frame features are a fixed random linear map
of the latent plus strong per-frame noise, so a per-frame model sees a noisy signal and a temporal model
can average the noise away. EXPR is the quadrant of the latent (classes 0-3, plus 4 near the centre), AU
k is ``latent . direction_k > 0``. Some labels are invalid and some frames have no face.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from affectmae.tasks import TASKS


def _smooth_path(rng, n: int) -> np.ndarray:
    steps = rng.normal(0, 1, (n + 40, 2))
    kernel = np.hanning(41)
    kernel /= kernel.sum()
    path = np.stack([np.convolve(steps[:, c], kernel, mode="valid") for c in range(2)], 1)[:n]
    return np.clip(path / (np.abs(path).max() + 1e-6) * 0.9, -1, 1).astype(np.float32)


def make_feature_dataset(root: Path, n_videos: int = 6, lengths=(70, 130), dim: int = 16, noise: float = 1.5,
                         seed: int = 0, n_val: int = 2, tasks=("va", "expr", "au")) -> tuple[Path, Path]:
    """Write ``root/features`` and ``root/annotations``; returns both paths. The last ``n_val`` videos are
    the official validation split."""
    rng = np.random.default_rng(seed)
    feats_dir, ann_dir = root / "features", root / "annotations"
    feats_dir.mkdir(parents=True)
    mixing = rng.normal(0, 1, (2, dim)).astype(np.float32)
    au_dirs = rng.normal(0, 1, (12, 2)).astype(np.float32)
    (feats_dir / "features.json").write_text(json.dumps({"format": "affectmae-features", "version": 1,
                                                         "encoder": "synthetic", "dim": dim, "dtype": "float16"}))
    for i in range(n_videos):
        video = f"video{i:02d}"
        n = int(rng.integers(lengths[0], lengths[1] + 1))
        z = _smooth_path(rng, n)  # (n, 2)
        feats = z @ mixing + rng.normal(0, noise, (n, dim)).astype(np.float32)
        present = rng.random(n) > 0.05
        np.save(feats_dir / f"{video}.npy", feats.astype(np.float16))
        np.save(feats_dir / f"{video}.mask.npy", present)
        quadrant = (z[:, 0] > 0).astype(int) * 2 + (z[:, 1] > 0).astype(int)
        expr = np.where(np.linalg.norm(z, axis=1) < 0.15, 4, quadrant)
        au = (z @ au_dirs.T > 0).astype(int)
        invalid = rng.random(n) < 0.05
        split = "Validation_Set" if i >= n_videos - n_val else "Train_Set"
        rows = {
            "va": [f"{a:.4f},{b:.4f}" if not bad else "-5,-5" for (a, b), bad in zip(z, invalid, strict=True)],
            "expr": [str(e) if not bad else "-1" for e, bad in zip(expr, invalid, strict=True)],
            "au": [
                ",".join(map(str, r)) if not bad else ",".join(["-1"] * 12) for r, bad in zip(au, invalid, strict=True)
            ],
        }
        for task in tasks:
            spec = TASKS[task]
            folder = ann_dir / spec.challenge_dir / split
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{video}.txt").write_text(",".join(spec.columns) + "\n" + "\n".join(rows[task]) + "\n")
    return feats_dir, ann_dir
