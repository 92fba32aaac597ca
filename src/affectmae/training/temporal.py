"""`affectmae train`: the temporal model on stored features, validated with the official per-frame protocol.

Run folder (``cfg.out``)::

    config.yaml            the merged config
    best.safetensors       best model so far (weights, architecture, window/stride, AU thresholds, val metrics)
    last_state.safetensors resumable state (model, AdamW, RNG, epoch, history); ``resume=true`` continues it
    metrics.json           per-epoch history and the best validation metrics
    tb/                    TensorBoard logs

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

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from affectmae.config import config_to_dict, save_config
from affectmae.device import select_device
from affectmae.errors import AffectMAEError
from affectmae.features.store import FeatureStore
from affectmae.io import atomic_write_text
from affectmae.models.temporal import TemporalConfig, TemporalModel, predict_sequence, save_temporal
from affectmae.tasks import TASKS, get_task
from affectmae.training.engine import check_finite, resolve_config
from affectmae.training.losses import class_weights, multitask_loss
from affectmae.training.optim import param_groups_weight_decay, set_lr, warmup_cosine_lr
from affectmae.training.state import load_training_state, save_training_state
from affectmae.training.temporal_data import LabelledVideo, SegmentBatches, load_labelled_videos, select_fold

log = logging.getLogger(__name__)

BEST_FILE = "best.safetensors"
STATE_FILE = "last_state.safetensors"
AU_THRESHOLD_SOURCES = ("train", "val", "none")


@dataclass
class TrainConfig:
    features: str = ""  # features folder written by `affectmae extract`
    data: str = ""  # Aff-Wild2 annotation root
    task: str = "va"  # va | expr | au | multi
    out: str = ""  # run folder
    fold: int = 0  # 0 = official train/val split; 1..n_folds-1 = seeded split by video
    n_folds: int = 5
    fold_seed: int = 0
    seed: int = 0
    seeds: list[int] = field(default_factory=list)  # cv / ablate: one run per seed (empty: [seed]); train uses seed
    window: int = 300
    stride: int = 200
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-5
    min_lr: float = 0.0
    weight_decay: float = 1e-5
    warmup_epochs: float = 1.0
    grad_clip: float = 0.0  # 0 = off
    class_weights: bool = False  # EXPR: inverse class frequency; AU: positive weights (negatives / positives)
    au_threshold_source: str = "train"  # train | val | none: where per-AU thresholds are tuned (see module doc)
    threads: int = 0  # torch threads, 0 = default
    device: str = "auto"  # auto = cuda when available, else cpu
    tensorboard: bool = True
    resume: bool = False
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


def _writer(cfg: TrainConfig, out: Path):
    if not cfg.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"))


def train_temporal(cfg: TrainConfig) -> dict:
    """Train one temporal model (one fold); returns ``{"best": metrics, "best_epoch", "history", "run_dir", ...}``."""
    from tqdm import tqdm

    if not cfg.out:
        raise AffectMAEError("train needs an output folder (-o RUN_DIR)")
    out = Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tasks = task_list(cfg.task)
    if cfg.au_threshold_source not in AU_THRESHOLD_SOURCES:
        raise AffectMAEError(f"au_threshold_source must be one of {', '.join(AU_THRESHOLD_SOURCES)}, "
                             f"got {cfg.au_threshold_source!r}")
    store = FeatureStore(cfg.features)
    videos = load_labelled_videos(store, cfg.data, tasks)
    train_videos, val_videos = select_fold(videos, cfg.fold, cfg.n_folds, cfg.fold_seed)
    mcfg = TemporalConfig(**{**asdict(cfg.model), "input_dim": store.dim, "tasks": tasks})
    cfg = TrainConfig(**{**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "model": mcfg})
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = select_device(cfg.device)
    model = TemporalModel(mcfg).to(device)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr)
    batches = SegmentBatches(store, train_videos, tasks, cfg.window, cfg.stride, cfg.batch_size)
    label_weights = _label_weights(train_videos, tasks, device) if cfg.class_weights else None
    steps_per_epoch = len(batches)
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, int(round(cfg.warmup_epochs * steps_per_epoch))
    cfg_dict = config_to_dict(cfg)
    counters = {"epoch": 0, "step": 0, "best_score": -math.inf, "best_epoch": -1}
    history: list[dict] = []
    best_metrics: dict = {}
    state_path = out / STATE_FILE
    if cfg.resume:
        if not state_path.is_file():
            raise AffectMAEError(f"cannot resume: {state_path} does not exist")
        meta = load_training_state(state_path, model, optimizer, cfg_dict,
                                   compare_keys=("task", "window", "stride", "batch_size", "model", "fold", "epochs"))
        counters, history = meta["counters"], meta["extra"].get("history", [])
        best_metrics = meta["extra"].get("best_metrics", {})
        log.info("resuming %s at epoch %d", out, counters["epoch"])
    log.info("training %s on %d videos (%d windows), validating on %d videos; fold %d", cfg.task, len(train_videos),
             len(batches.segments), len(val_videos), cfg.fold)
    writer = _writer(cfg, out)
    fold_info = {"fold": cfg.fold, "train_videos": [v.video for v in train_videos],
                 "val_videos": [v.video for v in val_videos]}
    t_train = 0.0
    n_segments = 0
    for epoch in range(counters["epoch"], cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(batches.epoch(epoch, cfg.seed), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=None, leave=False)
        for batch in bar:
            lr = warmup_cosine_lr(counters["step"], total_steps, warmup_steps, cfg.lr, cfg.min_lr)
            set_lr(optimizer, lr)
            outputs = model(batch.x.to(device), batch.present.to(device), batch.real.to(device),
                            batch.reference.to(device))
            loss, parts = multitask_loss(outputs, {t: v.to(device) for t, v in batch.targets.items()},
                                         {t: v.to(device) for t, v in batch.masks.items()}, label_weights=label_weights)
            if not torch.isfinite(loss) and writer is not None:
                writer.close()
            check_finite(loss.detach(), epoch + 1, counters["step"], out)  # raises TrainingDivergedError; checkpoints untouched
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            counters["step"] += 1
            losses.append(float(loss.detach()))
            n_segments += batch.x.shape[0]
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if writer is not None:
                writer.add_scalar("train/loss", losses[-1], counters["step"])
                writer.add_scalar("train/lr", lr, counters["step"])
        t_train += time.perf_counter() - t0
        metrics, cat = evaluate_videos(model, store, val_videos, cfg.window, cfg.stride)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val": metrics}
        history.append(record)
        log.info("epoch %d: train loss %.4f, val score %.4f", epoch + 1, record["train_loss"], metrics["score"])
        if writer is not None:
            writer.add_scalar("val/score", metrics["score"], epoch + 1)
            for name in tasks:
                if name in metrics:
                    writer.add_scalar(f"val/{name}", metrics[name]["score"], epoch + 1)
        counters["epoch"] = epoch + 1
        if metrics["score"] > counters["best_score"]:
            counters["best_score"], counters["best_epoch"] = metrics["score"], epoch + 1
            thresholds = au_thresholds_from(cfg.au_threshold_source, model, store, train_videos, cat,
                                            cfg.window, cfg.stride)
            if "au" in metrics:
                metrics["au"]["thresholds_tuned_on"] = cfg.au_threshold_source if thresholds is not None else "none"
                metrics["au"]["thresholds"] = thresholds
                if thresholds is not None:  # the same validation predictions, scored at the tuned thresholds
                    tuned = _score_at(cat, thresholds)
                    metrics["au"]["score_tuned_thresholds"] = tuned["score"]
                    metrics["au"]["f1_per_au_tuned_thresholds"] = tuned["f1_per_au"]
            best_metrics = metrics
            save_temporal(out / BEST_FILE, model, {
                "tasks": tasks, "window": cfg.window, "stride": cfg.stride, "au_thresholds": thresholds,
                "au_threshold_source": cfg.au_threshold_source if thresholds is not None else "none",
                "val": metrics, "epoch": epoch + 1, "features": {k: store.meta.get(k) for k in ("encoder", "dim")},
                **fold_info})
        save_training_state(state_path, model, optimizer, counters, cfg_dict,
                            extra={"history": history, "best_metrics": best_metrics})
    if writer is not None:
        writer.close()
    result = {"run_dir": str(out), "task": cfg.task, "fold": cfg.fold, "best": best_metrics,
              "best_epoch": counters["best_epoch"], "history": history,
              "au_thresholds": best_metrics.get("au", {}).get("thresholds"),
              "train_segments_per_s": round(n_segments / t_train, 2) if t_train > 0 else None, **fold_info}
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2))
    return result


def train_from_args(config: str | None, overrides: list[str], *, baseline: str | None = None, fold: int | None = None,
                    **settings) -> dict:
    """The CLI entry: config file + ``key=value`` overrides + named settings -> :func:`train_temporal`."""
    from affectmae.config import load_config, parse_overrides

    extra = {k: v for k, v in settings.items() if v is not None}
    if fold is not None:
        extra["fold"] = fold
    if baseline:
        extra["model.arch"] = baseline
    cfg = load_config(TrainConfig, resolve_config(config), {**parse_overrides(overrides), **extra})
    return train_temporal(cfg)
