"""`affectmae train`: the temporal model on stored features, validated with the official per-frame protocol.

Run folder (``cfg.out``): the layout of every stage (:mod:`affectmae.training.checkpoints`)::

    config.yaml            the merged config
    metrics.jsonl          one "epoch" line per epoch (train loss, validation metrics), "train" lines per step
    tensorboard/           the same scalars (``tensorboard=true``)
    last_state.safetensors resumable state (model, AdamW, RNG, counters, best epoch); ``resume=true`` continues it
    best.json              the best epoch and its validation metrics
    best.safetensors       best model so far (weights, architecture, window/stride, AU thresholds, val metrics)

Validation: every validation video is predicted in overlapping windows that are merged per frame, then
all validation frames are concatenated and scored once (:func:`affectmae.evaluation.metrics.evaluate`), so each
frame counts once, as in the official protocol (not an average over segments). The model selection
score is the task's official score (the mean over tasks for ``task=multi``), with AU at threshold 0.5.

AU thresholds (``au_threshold_source``): per-AU thresholds are tuned, at each new best epoch, on the
model's predictions over the **training** videos of the fold (default ``train``), so the validation
frames the run is scored on never choose them. ``val`` tunes them on the validation frames (the old
behaviour: the tuned validation score is then optimistic, measured on the data that picked the
thresholds); ``none`` keeps 0.5. The AU metrics always hold ``score`` (= ``score_at_0.5``) beside
``score_tuned_thresholds`` (validation F1 at the stored thresholds) and ``thresholds_tuned_on``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from affectmae.checkpoint import BEST_FILE
from affectmae.config import build_config, config_to_dict
from affectmae.device import select_device
from affectmae.errors import AffectMAEError
from affectmae.features.store import FeatureStore
from affectmae.models.temporal import TemporalConfig, TemporalModel, predict_sequence, save_temporal
from affectmae.tasks import TASKS, get_task
from affectmae.training.checkpoints import check_run_dir
from affectmae.training.engine import Stage, TrainingRun, check_finite, fit
from affectmae.training.losses import class_weights, multitask_loss
from affectmae.training.optim import make_adamw, param_groups_weight_decay, set_lr, warmup_cosine_lr
from affectmae.training.temporal_data import LabelledVideo, SegmentBatches, load_labelled_videos, select_fold

log = logging.getLogger(__name__)

AU_THRESHOLD_SOURCES = ("train", "val", "none")


@dataclass
class TrainConfig:
    RENAMED: ClassVar[dict[str, str]] = {"data": "annotations"}

    features: str = field(default="", metadata={"path": "dir"})  # features folder written by `affectmae extract`
    annotations: str = field(default="", metadata={"path": "dir"})  # Aff-Wild2 annotation root
    task: str = field(default="va", metadata={"choices": ("va", "expr", "au", "multi")})
    out: str = field(default="", metadata={"path": "out_dir"})  # run folder
    fold: int = field(default=0, metadata={"min": 0})  # 0 = official train/val split; 1..n_folds-1 = seeded split by video
    n_folds: int = field(default=5, metadata={"min": 1})
    fold_seed: int = 0
    seed: int = 0
    seeds: list[int] = field(default_factory=list)  # cv / ablate: one run per seed (empty: [seed]); train uses seed
    window: int = field(default=300, metadata={"min": 1})
    stride: int = field(default=200, metadata={"min": 1})
    epochs: int = field(default=30, metadata={"min": 1})  # as configs/temporal_paper.yaml (the paper gives none)
    batch_size: int = field(default=32, metadata={"min": 1})
    lr: float = field(default=3e-5, metadata={"gt": 0})
    min_lr: float = field(default=0.0, metadata={"min": 0})
    weight_decay: float = field(default=1e-5, metadata={"min": 0})
    warmup_epochs: float = field(default=1.0, metadata={"min": 0})
    grad_clip: float = field(default=0.0, metadata={"min": 0})  # 0 = off
    class_weights: bool = False  # EXPR: inverse class frequency; AU: positive weights (negatives / positives)
    au_threshold_source: str = field(default="train", metadata={"choices": AU_THRESHOLD_SOURCES})  # train | val | none: where per-AU thresholds are tuned (see module doc)
    threads: int = field(default=0, metadata={"min": 0})  # torch threads, 0 = default
    device: str = "auto"  # auto = cuda when available, else cpu
    tensorboard: bool = True
    log_every_steps: int = field(default=1, metadata={"min": 1})  # a "train" line in metrics.jsonl every n optimizer steps
    resume: bool = False
    overwrite: bool = False  # replace a finished run in `out` (the output-folder rule, affectmae.io)
    # a streaming model for `affectmae live` and `analyze --causal`: model.causal, and attention over the last
    # model.history frames (0: `window`) without a position table; validated on its causal outputs
    causal: bool = False
    model: TemporalConfig = field(default_factory=TemporalConfig)


def _label_weights(videos: list[LabelledVideo], tasks: list[str], device) -> dict[str, torch.Tensor]:
    """Per-task :func:`~affectmae.training.losses.class_weights` from the valid labels of the training videos."""
    out = {}
    for task in tasks:
        spec = get_task(task)
        labels = [v.labels[task][v.valid[task]] for v in videos if task in v.labels]
        weight = class_weights(spec, np.concatenate(labels)) if labels else None
        if weight is not None:
            out[task] = weight.to(device)
            log.info("%s class weights: %s", task, [round(w, 3) for w in weight.tolist()])
    return out


def task_list(task: str) -> list[str]:
    if task == "multi":
        return list(TASKS)
    if task not in TASKS:
        raise AffectMAEError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}, multi")
    return [task]


@torch.no_grad()
def evaluate_videos(model: TemporalModel, store: FeatureStore, videos: list[LabelledVideo], window: int, stride: int,
                    au_thresholds=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Official per-frame metrics over all ``videos`` at once; returns (metrics, concatenated predictions).

    AU: ``score`` and ``score_at_0.5`` are at threshold 0.5; with ``au_thresholds`` (12,) also
    ``score_tuned_thresholds`` and ``f1_per_au_tuned_thresholds`` at those thresholds (same predictions).
    """
    from affectmae.evaluation.metrics import evaluate

    preds: dict[str, list] = {s.name: [] for s in model.specs}
    trues: dict[str, list] = {s.name: [] for s in model.specs}
    valids: dict[str, list] = {s.name: [] for s in model.specs}
    for lv in videos:
        feats, present = store.rows(lv.video)
        out = predict_sequence(model, feats, present, window, stride)
        for spec in model.specs:
            if spec.name not in lv.labels:
                continue
            preds[spec.name].append(out[spec.name])
            trues[spec.name].append(lv.labels[spec.name])
            valids[spec.name].append(lv.valid[spec.name])
    metrics: dict = {}
    cat = {}
    for name in preds:
        if not preds[name]:
            continue
        p, t, v = (np.concatenate(a) for a in (preds[name], trues[name], valids[name]))
        cat[name] = p
        metrics[name] = evaluate(name, p, t, v)  # AU at threshold 0.5
        if name == "au":
            metrics[name]["score_at_0.5"] = metrics[name]["score"]
            if au_thresholds is not None:
                tuned = evaluate(name, p, t, v, thresholds=au_thresholds)
                metrics[name]["score_tuned_thresholds"] = tuned["score"]
                metrics[name]["f1_per_au_tuned_thresholds"] = tuned["f1_per_au"]
        cat[f"{name}/true"], cat[f"{name}/valid"] = t, v
    if not metrics:
        raise AffectMAEError("no validation video carries labels of the trained task(s)")
    metrics["score"] = float(np.mean([m["score"] for k, m in metrics.items() if k in TASKS]))
    return metrics, cat


def _tune_thresholds(cat: dict[str, np.ndarray]) -> list[float] | None:
    from affectmae.evaluation.metrics import tune_au_thresholds

    if "au" not in cat:
        return None
    return [float(t) for t in tune_au_thresholds(cat["au"], cat["au/true"], cat["au/valid"])]


def au_thresholds_from(source: str, model: TemporalModel, store: FeatureStore, train_videos: list[LabelledVideo],
                       val_cat: dict[str, np.ndarray], window: int, stride: int) -> list[float] | None:
    """Per-AU thresholds (12 floats) for the model as it is now, or None (no AU head, or ``source="none"``).

    ``source="train"``: tuned on the model's merged per-frame predictions over ``train_videos``;
    ``"val"``: on the validation predictions ``val_cat`` (from :func:`evaluate_videos`).
    """
    if source not in AU_THRESHOLD_SOURCES:
        raise AffectMAEError(f"au_threshold_source must be one of {', '.join(AU_THRESHOLD_SOURCES)}, got {source!r}")
    if source == "none" or "au" not in val_cat:
        return None
    if source == "val":
        return _tune_thresholds(val_cat)
    au_train = [v for v in train_videos if "au" in v.labels]
    if not au_train:
        raise AffectMAEError("au_threshold_source=train: no training video carries AU labels to tune thresholds on")
    return _tune_thresholds(evaluate_videos(model, store, au_train, window, stride)[1])


def _score_at(cat: dict[str, np.ndarray], thresholds: list[float]) -> dict:
    from affectmae.evaluation.metrics import evaluate

    return evaluate("au", cat["au"], cat["au/true"], cat["au/valid"], thresholds=thresholds)


RESUME_KEYS = ("task", "window", "stride", "batch_size", "model", "fold", "epochs", "seed")  # seed: the window order


@dataclass
class TemporalTraining:
    """What :func:`setup_temporal` builds and :func:`train_one_epoch` / :func:`evaluate_epoch` use."""

    cfg: TrainConfig
    tasks: list[str]
    store: FeatureStore
    train_videos: list[LabelledVideo]
    val_videos: list[LabelledVideo]
    model: TemporalModel
    optimizer: torch.optim.Optimizer
    batches: SegmentBatches
    label_weights: dict[str, torch.Tensor] | None
    device: torch.device
    total_steps: int
    warmup_steps: int
    val_cat: dict[str, np.ndarray] = field(default_factory=dict)  # the last validation predictions (AU thresholds)
    train_seconds: float = 0.0
    train_segments: int = 0

    @property
    def fold_info(self) -> dict[str, Any]:
        return {"fold": self.cfg.fold, "train_videos": [v.video for v in self.train_videos],
                "val_videos": [v.video for v in self.val_videos]}


def train_temporal(cfg: TrainConfig) -> dict:
    """Train one temporal model (one fold); returns ``{"best": metrics, "best_epoch", "history", "run_dir", ...}``."""
    t, run = setup_temporal(cfg)
    fit(run, Stage(t.model, t.optimizer, partial(train_one_epoch, t), evaluate=partial(evaluate_epoch, t),
                   save_best=partial(_save_best, t), val_record=partial(_val_record, t.tasks)))
    best = run.best.get("metrics", {})
    history = [{"epoch": r["epoch"], "train_loss": r["train_loss"], "val": r["val"]} for r in run.epoch_records()]
    return {"run_dir": str(run.run_dir), "task": t.cfg.task, "fold": t.cfg.fold, "best": best,
            "best_epoch": run.best["epoch"], "history": history,
            "au_thresholds": best.get("au", {}).get("thresholds"),
            "train_segments_per_s": round(t.train_segments / t.train_seconds, 2) if t.train_seconds > 0 else None,
            **t.fold_info}


def setup_temporal(cfg: TrainConfig) -> tuple[TemporalTraining, TrainingRun]:
    """Read the labels of the fold, write the run folder's config, build the model, AdamW and the training
    windows; restore the state on ``resume``."""
    if not cfg.out:
        raise AffectMAEError("train needs an output folder (-o RUN_DIR)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tasks = task_list(cfg.task)
    if cfg.au_threshold_source not in AU_THRESHOLD_SOURCES:
        raise AffectMAEError(f"au_threshold_source must be one of {', '.join(AU_THRESHOLD_SOURCES)}, "
                             f"got {cfg.au_threshold_source!r}")
    store = FeatureStore(cfg.features)
    videos = load_labelled_videos(store, cfg.annotations, tasks)
    train_videos, val_videos = select_fold(videos, cfg.fold, cfg.n_folds, cfg.fold_seed)
    mcfg = TemporalConfig(**{**asdict(cfg.model), "input_dim": store.dim, "tasks": tasks})
    if cfg.causal:
        mcfg = dataclasses.replace(mcfg, causal=True, history=mcfg.history or cfg.window)
    cfg = dataclasses.replace(cfg, model=mcfg)
    check_run_dir(Path(cfg.out), cfg.resume, cfg.overwrite, "train")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = select_device(cfg.device)
    model = TemporalModel(mcfg).to(device)
    optimizer = make_adamw(param_groups_weight_decay(model, cfg.weight_decay), cfg.lr, fused=False)
    batches = SegmentBatches(store, train_videos, tasks, cfg.window, cfg.stride, cfg.batch_size,
                             causal_reference=mcfg.person_norm and mcfg.causal and mcfg.history > 0)
    label_weights = _label_weights(train_videos, tasks, device) if cfg.class_weights else None
    steps_per_epoch = len(batches)
    run = TrainingRun("train", cfg.out, cfg.epochs, config_to_dict(dataclasses.replace(cfg, resume=False)),
                      tensorboard=cfg.tensorboard, show_progress=None)
    if cfg.resume:
        run.restore(model, optimizer, RESUME_KEYS, TrainConfig.RENAMED)
    log.info("training %s on %d videos (%d windows), validating on %d videos; fold %d", cfg.task, len(train_videos),
             len(batches.segments), len(val_videos), cfg.fold)
    t = TemporalTraining(cfg, tasks, store, train_videos, val_videos, model, optimizer, batches, label_weights, device,
                         cfg.epochs * steps_per_epoch, int(round(cfg.warmup_epochs * steps_per_epoch)))
    return t, run


def train_one_epoch(t: TemporalTraining, run: TrainingRun) -> dict[str, Any]:
    """One epoch over the shuffled training windows; returns the mean training loss."""
    cfg, model, device = t.cfg, t.model, t.device
    model.train()
    t0 = time.perf_counter()
    losses = []
    bar = run.progress(t.batches.epoch(run.epoch, cfg.seed), total=len(t.batches))
    for batch in bar:
        lr = warmup_cosine_lr(run.global_step, t.total_steps, t.warmup_steps, cfg.lr, cfg.min_lr)
        set_lr(t.optimizer, lr)
        outputs = model(batch.x.to(device), batch.present.to(device), batch.unpadded.to(device),
                        batch.reference.to(device))
        loss, parts = multitask_loss(outputs, {k: v.to(device) for k, v in batch.targets.items()},
                                     {k: v.to(device) for k, v in batch.masks.items()}, label_weights=t.label_weights)
        check_finite(loss.detach(), run.epoch + 1, run.global_step, run.run_dir)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        t.optimizer.step()
        run.global_step += 1
        run.step_in_epoch += 1
        losses.append(float(loss.detach()))
        t.train_segments += batch.x.shape[0]
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if run.global_step % cfg.log_every_steps == 0:
            run.logger.log({"epoch": run.epoch, "step": run.step_in_epoch, "loss": losses[-1], "lr": lr},
                           run.global_step)
    t.train_seconds += time.perf_counter() - t0
    return {"train_loss": float(np.mean(losses))}


def evaluate_epoch(t: TemporalTraining, run: TrainingRun) -> dict[str, Any]:
    """Official per-frame metrics over the fold's validation videos (:func:`evaluate_videos`)."""
    metrics, t.val_cat = evaluate_videos(t.model, t.store, t.val_videos, t.cfg.window, t.cfg.stride)
    return metrics


def _val_record(tasks: list[str], metrics: dict[str, Any]) -> dict[str, Any]:
    """The epoch line's validation entries: the selection score, each task's score, all metrics."""
    return {"val_score": metrics["score"], **{f"val_{name}": metrics[name]["score"] for name in tasks if name in metrics},
            "val": metrics}


def _save_best(t: TemporalTraining, run: TrainingRun, metrics: dict[str, Any]) -> None:
    """A new best epoch: AU thresholds (``au_threshold_source``) added to ``metrics``, then ``best.safetensors``."""
    cfg = t.cfg
    thresholds = au_thresholds_from(cfg.au_threshold_source, t.model, t.store, t.train_videos, t.val_cat,
                                    cfg.window, cfg.stride)
    if "au" in metrics:
        metrics["au"]["thresholds_tuned_on"] = cfg.au_threshold_source if thresholds is not None else "none"
        metrics["au"]["thresholds"] = thresholds
        if thresholds is not None:  # the same validation predictions, scored at the tuned thresholds
            tuned = _score_at(t.val_cat, thresholds)
            metrics["au"]["score_tuned_thresholds"] = tuned["score"]
            metrics["au"]["f1_per_au_tuned_thresholds"] = tuned["f1_per_au"]
    save_temporal(run.run_dir / BEST_FILE, t.model, {
        "tasks": t.tasks, "window": cfg.window, "stride": cfg.stride, "au_thresholds": thresholds,
        "au_threshold_source": cfg.au_threshold_source if thresholds is not None else "none",
        "val": metrics, "epoch": run.epoch, "features": _features_record(t.store.meta),
        **t.fold_info})


def _features_record(meta: dict) -> dict:
    """What a run records of its features: the encoder, feature size, CPU linear backend and the encoder's
    fingerprint (:mod:`affectmae.features.fingerprint`; an older features.json's is read as it was recorded)."""
    from affectmae.features.fingerprint import recorded_fingerprint

    fingerprint = recorded_fingerprint(meta)
    return {**{k: meta.get(k) for k in ("encoder", "dim", "cpu_gemm")},
            **(fingerprint.record() if fingerprint is not None else {"encoder_sha256": None})}


def run_train(config: str | Path | None = None, overrides: list[str] | dict | None = None, *,
              baseline: str | None = None, **explicit: Any) -> dict:
    """Entry point: defaults < config file (or packaged name) < ``key=value`` overrides < named settings that
    are not None (``features``, ``annotations``, ``task``, ``out``, ``fold``...); ``baseline="linear"`` trains the
    per-frame linear model instead. Then :func:`train_temporal`."""
    if baseline:
        explicit["model.arch"] = baseline
    return train_temporal(build_config(TrainConfig, config, overrides, **explicit))
