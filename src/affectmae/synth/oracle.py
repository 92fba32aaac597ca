"""Oracle ceilings of a synthetic dataset: what a model that knows the latents (or sees exactly what was drawn)
scores with the official metrics. See docs/synthetic.md, "Ceilings"."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from affectmae.datasets.annotations import load_annotations
from affectmae.errors import AffectMAEError
from affectmae.evaluation.metrics import evaluate
from affectmae.synth.latents import (
    LATENT_NAMES,
    LATENT_REGION,
    OCCLUSION_LOWER,
    OCCLUSION_UPPER,
    convolve_time,
    gaussian_kernel,
    labels_from_latents,
)
from affectmae.tasks import TASKS


def _hidden_mask(occlusion: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(T, 14) bool: latents not visible in frame t (region under the occluder, or no image at all)."""
    hidden = np.zeros((len(occlusion), len(LATENT_NAMES)), dtype=bool)
    hidden[occlusion == OCCLUSION_UPPER] = LATENT_REGION == 0
    hidden[occlusion == OCCLUSION_LOWER] = LATENT_REGION == 1
    hidden[~present] = True
    return hidden


def _nan_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of (T, C) along T that ignores NaNs (normalised convolution); NaN where no support."""
    kernel, _ = gaussian_kernel(sigma)
    seen = ~np.isnan(x)
    num = convolve_time(np.where(seen, x, 0.0), kernel, "same")
    den = convolve_time(seen.astype(float), kernel, "same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-3, num / den, np.nan)


def oracle_predictions(latents: dict[str, np.ndarray], kind: str, sigma: float = 3.0) -> np.ndarray:
    """Latent estimate (T, 14) of one video for an oracle of ``kind``.

    - ``"latent"``: the true latent (labels are a function of it, so every score is 1 by construction);
    - ``"frame"``: per frame, the drawn parameters (latent + observation noise) where visible; latents hidden
      by an occluder or a missing image fall back to the video's mean drawn value;
    - ``"temporal"``: the visible drawn parameters smoothed over time (Gaussian, ``sigma`` frames, ignoring
      hidden values), so neighbours fill occlusions and missing frames and the noise averages out.
    """
    if kind == "latent":
        return np.asarray(latents["latent"], dtype=np.float64)
    observed = np.asarray(latents["observed"], dtype=np.float64).copy()
    observed[_hidden_mask(latents["occlusion"], latents["present"])] = np.nan
    prior = np.nan_to_num(np.nanmean(observed, axis=0)) if np.isfinite(observed).any() else np.zeros(observed.shape[1])
    if kind == "temporal":
        observed = _nan_smooth(observed, sigma)
    elif kind != "frame":
        raise ValueError(f"unknown oracle kind {kind!r}")
    return np.where(np.isnan(observed), prior[None, :], observed)


def oracle_scores(root: str | Path, split: str = "val") -> dict[str, dict[str, float]]:
    """Official metrics of the three oracles of :func:`oracle_predictions` on one split of a synthetic dataset.

    Labels are read with the ordinary Aff-Wild2 reader; every annotated frame with a valid label counts once,
    including frames whose image is missing. Returns ``{"latent"|"frame"|"temporal": {"va"|"expr"|"au": score}}``.
    """
    root = Path(root)
    scores: dict[str, dict[str, float]] = {kind: {} for kind in ("latent", "frame", "temporal")}
    for task in TASKS:
        videos = load_annotations(root / "annotations", task, split)
        preds: dict[str, list[np.ndarray]] = {kind: [] for kind in scores}
        true, valid = [], []
        for labels in videos:
            path = root / "latents" / f"{labels.video}.npz"
            if not path.is_file():
                raise AffectMAEError(f"{path}: latents missing; oracle_scores needs a dataset written by `affectmae synth`")
            with np.load(path) as data:
                latents = {k: data[k] for k in data.files}
            if len(latents["latent"]) != labels.n_frames:
                raise AffectMAEError(f"{path}: {len(latents['latent'])} frames, but {labels.source} has {labels.n_frames}")
            for kind in scores:
                va, expr, au = labels_from_latents(oracle_predictions(latents, kind))
                preds[kind].append({"va": va, "expr": expr, "au": au}[task])
            true.append(labels.labels)
            valid.append(labels.valid)
        for kind in scores:
            result = evaluate(task, np.concatenate(preds[kind]), np.concatenate(true), np.concatenate(valid))
            scores[kind][task] = round(float(result["score"]), 4)
    return scores
