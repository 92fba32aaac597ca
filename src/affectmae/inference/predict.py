"""ABAW submission files from stored features (``affectmae predict``).

Which frames get a row:

- ``test_list`` is the organisers' example file (a CSV whose header starts with ``image_location``, one
  row per frame to submit, e.g. ``video/00001.jpg,...``): exactly those frames, in that order; or
- ``test_list`` is a plain list with one video per line, optionally followed by its frame count
  (``video`` / ``video,1234`` / ``video 1234``): frames 1..N, N from the line or else from the video's
  feature array (whose length came from the frame folder or the annotations, see ``affectmae extract``);
- no ``test_list``: every video of the features folder, all its frames.

Every listed frame gets a row, frames without a face included: their features were interpolated from the
neighbouring frames at extraction (the mask says which), so the temporal model predicts them like any
other frame. A listed frame past the end of the features is an error naming the video and both lengths,
except for exactly one frame (the known Aff-Wild2 off-by-one at the end of some videos), which gets the
last frame's prediction.

Before anything is written, every listed video's feature files are checked (a damaged one is a one-line
error naming it) and the features' encoder fingerprint (``encoder_sha256`` in features.json) is compared
with the one each head's training run recorded: features of another encoder are refused, even when
their size matches.

``run_predict(config, overrides, **settings)`` is the command's entry point (defaults < YAML file <
``key=value`` < flags); the merged config is saved as ``OUT/config.yaml`` next to the CSV files.

EXPR rows hold the arg-max class; AU rows hold 0/1 from the per-AU thresholds stored with the model
(0.5 where none were tuned). Several runs (e.g. the CV folds) are ensembled by averaging VA values and
class / AU probabilities.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from affectmae.config import build_config, save_config
from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.features.store import FeatureStore
from affectmae.inference.model import AffectModel, load_model_dir, load_runs
from affectmae.io import OutputLayout, atomic_paths, check_output_dir, prepare_output_dir
from affectmae.progress import progress_bar
from affectmae.tasks import TASKS, get_task

log = logging.getLogger(__name__)

_LOCATION = re.compile(r"^(?P<video>.+)/(?P<number>\d+)\.jpg$")


@dataclass
class PredictConfig:
    RENAMED: ClassVar[dict[str, str]] = {"model": "model_dir"}

    features: str = field(default="", metadata={"path": "dir"})  # features folder of the videos to predict
    out: str = field(default="", metadata={"path": "out_dir"})  # folder for the CSV files
    model_dir: str = field(default="", metadata={"path": "dir"})  # MODEL_DIR (or give runs)
    runs: list[str] = field(default_factory=list)  # training run folders; several = ensemble
    tasks: list[str] = field(default_factory=list, metadata={"choices": tuple(TASKS)})  # default: every task the model has
    test_list: str = field(default="", metadata={"path": "file"})  # organisers' example CSV or a list of videos (see the module docstring)
    overwrite: bool = False  # replace submission files already in `out` (the output-folder rule, affectmae.io)


def predict_layout(tasks: list[str]) -> OutputLayout:
    """The output-folder rule (affectmae.io) for ``tasks``: their submission files already in ``out`` are replaced
    only with ``overwrite``; other tasks' files stay (one run per task may fill one folder)."""
    files = tuple(f"{t}_predictions.csv" for t in tasks)
    return OutputLayout("predict", finished=files, owned=files)


def read_test_list(path: str | Path) -> "OrderedDict[str, np.ndarray | int | None]":
    """``{video: 0-based frames (M,)}`` for an organisers' CSV, ``{video: n_frames or None}`` for a plain list."""
    path = Path(path)
    if not path.is_file():
        raise AffectMAEError(f"test list not found: {path}")
    lines = path.read_text().splitlines()
    out: OrderedDict = OrderedDict()
    if lines and lines[0].split(",")[0].strip() == "image_location":
        frames: OrderedDict[str, list[int]] = OrderedDict()
        for i, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            m = _LOCATION.match(line.split(",")[0].strip())
            if m is None or int(m.group("number")) < 1:
                raise InputFormatError(path, f"expected image_location like video/00001.jpg, got {line.split(',')[0]!r}", line=i)
            frames.setdefault(m.group("video"), []).append(int(m.group("number")) - 1)
        out.update((v, np.asarray(k, dtype=np.int64)) for v, k in frames.items())
    else:
        for i, line in enumerate(lines, start=1):
            parts = [p for p in re.split(r"[,\s]+", line.strip()) if p]
            if not parts:
                continue
            if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
                raise InputFormatError(path, f"expected 'video' or 'video,n_frames', got {line!r}", line=i)
            if parts[0] in out:
                raise InputFormatError(path, f"video {parts[0]!r} listed twice", line=i)
            out[parts[0]] = int(parts[1]) if len(parts) == 2 else None
    if not out:
        raise AffectMAEError(f"{path}: the test list names no video")
    return out


def _frames_for(video: str, wanted, n_features: int) -> np.ndarray:
    """0-based frames to write for ``video``; checks them against the feature length."""
    frames = np.arange(n_features if wanted is None else wanted) if not isinstance(wanted, np.ndarray) else wanted
    last = int(frames.max()) + 1 if frames.size else 0
    if last > n_features + 1:
        raise AffectMAEError(f"video {video!r}: the test list asks for {last} frames but the features have "
                             f"{n_features}; re-run extract with the right frame count")
    return frames


def check_same_encoder(store: FeatureStore, model: AffectModel) -> None:
    """Refuse features of another encoder than the one the model's heads were trained on: the fingerprints
    (weights, input size, normalisation, pooling; :mod:`affectmae.features.fingerprint`) in features.json and in
    each head's run differ. Features or runs made before fingerprints were recorded are not checked; where one
    side recorded the weights only (an older version) and they agree, a warning says what cannot be compared."""
    from affectmae.features.fingerprint import (
        WEIGHTS_ONLY_NOTE,
        compare_fingerprints,
        recorded_fingerprint,
        settings_difference,
    )

    fingerprint = recorded_fingerprint(store.meta)
    for head, trained_on in model.trained_on.items():
        if fingerprint is None or trained_on is None:
            continue
        verdict = compare_fingerprints(fingerprint, trained_on)
        if verdict == "different":
            other = settings_difference(fingerprint, trained_on)
            detail = f"; the same weights, but {other}" if other else ""
            raise AffectMAEError(f"{store.root / 'features.json'}: features of encoder {store.meta.get('encoder')} "
                                 f"(sha256 {fingerprint.shown[:12]}), but {head} was trained on features of another "
                                 f"encoder (sha256 {trained_on.shown[:12]}{detail}); extract with the model's encoder")
        if verdict == "weights only":
            old = head if trained_on.full is None else store.root / "features.json"
            log.warning("%s %s (features %s, head %s)", old, WEIGHTS_ONLY_NOTE, store.root, head)


def predict_submissions(cfg: PredictConfig) -> dict:
    """Write ``<out>/<task>_predictions.csv`` per task, all of them or none (a failure while writing or placing
    any of them leaves no submission file); returns ``{task: {"path", "rows", "videos"}}``."""
    if not cfg.out:
        raise AffectMAEError("predict needs an output folder (-o)")
    if not cfg.features:
        raise AffectMAEError("predict needs a features folder (--features)")
    if bool(cfg.model_dir) == bool(cfg.runs):
        raise AffectMAEError("give either a MODEL_DIR (--model) or training runs (--run), not both or neither")
    model: AffectModel = load_model_dir(cfg.model_dir) if cfg.model_dir else load_runs(cfg.runs)
    tasks = [get_task(t).name for t in cfg.tasks] or model.tasks
    for t in tasks:
        if t not in model.tasks:
            raise AffectMAEError(f"the model has no {t} head (it has {', '.join(model.tasks)})")
    layout = predict_layout(tasks)
    mode = check_output_dir(cfg.out, layout, overwrite=cfg.overwrite)
    store = FeatureStore(cfg.features)
    if store.dim != model.feature_dim:
        raise AffectMAEError(f"features in {store.root} are {store.dim}-d but the model expects {model.feature_dim}-d")
    check_same_encoder(store, model)
    wanted = read_test_list(cfg.test_list) if cfg.test_list else OrderedDict((v, None) for v in store.videos())
    if not wanted:
        raise AffectMAEError(f"no videos to predict: {store.root} holds no features")
    for video in wanted:  # every listed video's files, before anything is written
        store.check(video)
    out = prepare_output_dir(cfg.out, layout, mode)
    save_config(cfg, out / "config.yaml")
    paths = {t: out / f"{t}_predictions.csv" for t in tasks}
    with atomic_paths(list(paths.values())) as staged:  # every task's file appears, or none does
        summary = _write_submissions(store, model, wanted, dict(zip(tasks, staged, strict=True)), paths)
    log.info("wrote %s", ", ".join(f"{s['path']} ({s['rows']} rows)" for s in summary.values()))
    return summary


def _write_submissions(store: FeatureStore, model: AffectModel, wanted: "OrderedDict", staged: dict[str, Path],
                       paths: dict[str, Path]) -> dict:
    """Predict every video of ``wanted`` once and write each task's rows into its temporary file ``staged[t]``
    (renamed to ``paths[t]`` by the caller once all are written)."""
    from affectmae.evaluation.submission import SubmissionWriter

    tasks = list(paths)
    summary = {t: {"path": str(paths[t]), "rows": 0, "videos": 0} for t in tasks}
    thresholds = model.au_thresholds
    with contextlib.ExitStack() as stack:
        writers = {t: stack.enter_context(SubmissionWriter(t, paths[t], staged=staged[t])) for t in tasks}
        for video, want in progress_bar(wanted.items(), total=len(wanted), desc="predict", unit="video"):
            feats, present = store.rows(video)
            n = feats.shape[0]
            frames = _frames_for(video, want, n)
            preds = model.predict_sequence(feats, present)
            rows = np.minimum(frames, n - 1)  # the tolerated extra last frame reuses the last prediction
            for t in tasks:
                p = preds[t][rows]
                if TASKS[t].kind == "multilabel":
                    p = (p >= thresholds[None, :]).astype(np.int64)
                elif TASKS[t].kind == "regression":
                    p = np.clip(p, -1.0, 1.0)
                writers[t].add(video, p, frames=frames)
                summary[t]["rows"] += len(frames)
                summary[t]["videos"] += 1
            log.debug("%s: %d frames (%d without a face, interpolated)", video, len(frames), int((~present).sum()))
    return summary


def run_predict(config: str | Path | None = None, overrides: list[str] | dict | None = None, **explicit) -> dict:
    """``affectmae predict``: defaults < config file < ``key=value`` overrides < ``explicit`` settings."""
    return predict_submissions(build_config(PredictConfig, config, overrides, **explicit))
