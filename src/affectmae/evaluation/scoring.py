"""Score an ABAW submission CSV against a folder of Aff-Wild2 annotation files (``affectmae score``).

Every frame with a valid label must have a prediction row; rows for other frames (no label, invalid
label, a video without an annotation file, past the end of the annotations) are ignored and counted.
The metric is the official one from :mod:`affectmae.evaluation.metrics`, computed once over all scored frames of
all videos together (not per video, not per segment).

``run_score(config, overrides, **settings)`` is the command's entry point (:class:`ScoreConfig`: defaults <
YAML file < ``key=value`` < the command's arguments); it writes nothing, the score is its return value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affectmae.config import build_config, check_value
from affectmae.datasets.annotations import read_annotation_file
from affectmae.errors import AffectMAEError
from affectmae.evaluation.metrics import evaluate
from affectmae.evaluation.submission import image_location, read_submission
from affectmae.progress import progress_bar
from affectmae.tasks import SPLITS, get_task

log = logging.getLogger(__name__)


def _annotation_files(annotation_dir: Path, task: str) -> list[Path]:
    if not annotation_dir.is_dir():
        raise AffectMAEError(f"{annotation_dir}: annotation folder not found")
    files = sorted(annotation_dir.glob("*.txt"))
    if files:
        return files
    spec = get_task(task)
    hints = [annotation_dir / spec.challenge_dir / s for s in SPLITS.values()]
    hints = [h for h in hints if h.is_dir()] or [annotation_dir / spec.challenge_dir / SPLITS["val"]]
    raise AffectMAEError(
        f"{annotation_dir}: no annotation .txt files in this folder; give the folder that holds "
        f"<video>.txt, e.g. {hints[0]}"
    )


def score_submission(task: str, pred_csv: str | Path, annotation_dir: str | Path) -> dict:
    """Official score of the submission ``pred_csv`` for ``task`` against ``annotation_dir/*.txt``.

    Returns a JSON-ready dict: ``task``, ``score``, the per-part figures of the task (``ccc_valence``
    and ``ccc_arousal``; ``f1_per_class``; ``f1_per_au``), ``frames_scored``, ``videos`` (annotation
    files), ``rows`` (prediction rows read) and ``rows_ignored`` (rows for frames without a valid label).
    Raises AffectMAEError when a frame with a valid label has no prediction row (naming how many and
    the first few) and InputFormatError (file and line) for a malformed prediction or annotation file.
    """
    spec = get_task(task)
    pred_csv, annotation_dir = Path(pred_csv), Path(annotation_dir)
    check_value("pred_csv", str(pred_csv), {"path": "file"})  # a folder here is a one-line error, as on the CLI
    files = _annotation_files(annotation_dir, task)
    predictions = read_submission(spec.name, pred_csv)
    n_rows = sum(len(frames) for frames, _ in predictions.values())

    pred_parts, true_parts, missing, n_missing, used_rows = [], [], [], 0, 0
    for path in progress_bar(files, desc="score", unit="video", leave=False, show=len(files) >= 50):
        labels = read_annotation_file(path, spec.name)
        n = labels.n_frames
        have = np.zeros(n, dtype=bool)
        values = np.zeros((n, spec.label_width), dtype=np.float64)
        if labels.video in predictions:
            frames, pred = predictions[labels.video]
            inside = frames < n
            have[frames[inside]] = True
            values[frames[inside]] = pred[inside].reshape(int(inside.sum()), spec.label_width)
        lacking = np.flatnonzero(labels.valid & ~have)
        if lacking.size:
            n_missing += lacking.size
            missing.extend(image_location(labels.video, int(k)) for k in lacking[: max(0, 5 - len(missing))])
            continue
        keep = labels.valid
        used_rows += int(keep.sum())
        pred_parts.append(values[keep])
        true_parts.append(labels.labels[keep])
    if n_missing:
        raise AffectMAEError(
            f"{pred_csv}: {n_missing} frames with a valid label in {annotation_dir} have no prediction row "
            f"(first: {', '.join(missing)})"
        )
    pred = np.concatenate(pred_parts)
    true = np.concatenate(true_parts)
    if spec.kind == "multiclass":
        pred, true = pred[:, 0], true[:, 0]
    result = evaluate(spec.name, pred, true)
    frames_scored = result.pop("frames_scored")
    out = {
        "task": spec.name,
        **result,
        "frames_scored": frames_scored,
        "videos": len(files),
        "rows": n_rows,
        "rows_ignored": n_rows - used_rows,
    }
    log.info("%s: %s score %.4f over %d frames of %d videos", pred_csv, spec.name, out["score"], frames_scored, len(files))
    return out


@dataclass
class ScoreConfig:
    task: str = field(default="", metadata={"choices": ("va", "expr", "au")})  # which challenge the submission is for
    pred_csv: str = field(default="", metadata={"path": "file"})  # ABAW submission CSV (image_location,...)
    annotation_dir: str = field(default="", metadata={"path": "dir"})  # folder of <video>.txt annotations of one task and split


def score(cfg: ScoreConfig) -> dict:
    """The ``affectmae score`` stage: :func:`score_submission` with the settings of ``cfg``."""
    if not cfg.task or not cfg.pred_csv or not cfg.annotation_dir:
        raise AffectMAEError("score needs a task (--task), a submission CSV and an annotation folder")
    return score_submission(cfg.task, cfg.pred_csv, cfg.annotation_dir)


def run_score(config: str | Path | None = None, overrides: list[str] | dict | None = None, **explicit) -> dict:
    """``affectmae score``: defaults < config file < ``key=value`` overrides < ``explicit`` settings."""
    return score(build_config(ScoreConfig, config, overrides, **explicit))
