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
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from affectmae.checkpoint import save_weights
from affectmae.config import config_to_dict, load_config, save_config
from affectmae.datasets.images import collate_skip_corrupt
from affectmae.device import autocast
from affectmae.errors import AffectMAEError
from affectmae.evaluation.metrics import evaluate
from affectmae.io import atomic_write_text
from affectmae.models.vit import ViTEncoder, load_encoder, save_encoder
from affectmae.tasks import TaskSpec, get_task
from affectmae.training.distributed import GlobalBatchSampler, all_reduce_mean, barrier, distributed_session
from affectmae.training.engine import (
    CheckpointManager,
    ScalarLogger,
    check_finite,
    keep_freed_memory,
    make_adamw,
    progress,
    resolve_config,
    step_seed,
)
from affectmae.training.losses import class_weights, task_loss
from affectmae.training.optim import set_lr, warmup_cosine_lr
from affectmae.training.pretrain_data import plain_transform
from affectmae.training.state import load_training_state

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    data: str = ""  # Aff-Wild2 root: annotation challenge folders and cropped_aligned/ somewhere below
    frames: str | None = None  # cropped_aligned folder, when it is not under `data`
    encoder: str = ""  # pretrain run / encoder.safetensors / reference-MAE .pth / timm state dict
    out_dir: str = ""
    task: str = "expr"
    img_size: int | None = None  # default: the encoder's
    freeze_encoder: bool = False  # true: linear probe (head only)
    epochs: int = 10  # not stated in the paper
    max_steps: int = 0  # > 0: train for exactly this many optimizer steps instead (the last epoch may be partial)
    warmup_epochs: int = 1
    warmup_steps: int = 0  # > 0: replaces warmup_epochs (use with max_steps)
    # Linear probe, then fine-tune (LP-FT): the first head_only_steps of max_steps/epochs train the head alone at
    # `lr` (the encoder gets no update), so a random head's first gradients do not distort the pretrained features;
    # warm-up and cosine then run over the remaining steps.
    head_only_steps: int = 0
    batch_size: int = 256  # global batch per optimizer step
    lr: float = 1e-4  # absolute (paper), no batch scaling
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 1.0  # < 1: layer-wise lr decay (block i gets lr * decay^(depth + 1 - (i + 1)))
    drop_path: float = 0.1
    class_weights: bool = False  # inverse-frequency class weights (EXPR) / positive weights (AU)
    label_smoothing: float = 0.0
    crop_scale_min: float = 0.8
    hflip: bool = True
    frame_stride: int = 1  # train on every n-th usable frame (Aff-Wild2 neighbours are near-duplicates)
    val_stride: int = 1
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    num_workers: int = 4
    log_every_steps: int = 10
    tensorboard: bool = True
    overfit_batches: int = 0  # sanity mode: > 0 trains on that many fixed batches (no augmentation), scored on them
    resume: bool = False


RESUME_KEYS = ("data", "encoder", "task", "img_size", "freeze_encoder", "batch_size", "seed", "frame_stride",
               "max_steps", "overfit_batches", "head_only_steps")


class FinetuneModel(nn.Module):
    """encoder + linear head. x: (B, 3, S, S) -> outputs (B, num_outputs) (raw logits; VA: tanh applied)."""

    def __init__(self, encoder: ViTEncoder, spec: TaskSpec):
        super().__init__()
        self.encoder, self.spec = encoder, spec
        self.head = nn.Linear(encoder.embed_dim, spec.num_outputs)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.encoder_grad = True  # False: the encoder runs without autograd (the head-only steps of LP-FT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.encoder_grad):
            pooled = self.encoder.forward_features(x)["pooled"]
        out = self.head(pooled)
        return torch.tanh(out) if self.spec.kind == "regression" else out


class AugmentedFrames(Dataset):
    """(image, label) items with a transform seeded per (seed, epoch, index); None stays None (corrupt)."""

    def __init__(self, frames: Dataset, transform: Any, seed: int):
        self.frames, self.transform, self.seed, self.epoch = frames, transform, seed, 0

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        item = self.frames[i]
        if item is None:
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(self.seed, self.epoch, i))
            return self.transform(item[0]), item[1]


def layer_decay_groups(model: FinetuneModel, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with ``lr_scale`` = layer_decay^(depth + 1 - layer) and no decay on 1-D params/tokens."""
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        head = not name.startswith("encoder.")
        layer = depth + 1 if head else model.encoder.layer_id(name[len("encoder."):])
        no_decay = param.ndim <= 1 or name.endswith((".bias", "pos_embed", "cls_token"))
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": layer_decay ** (depth + 1 - layer), "head": False}
        groups[key]["params"].append(param)
        groups[key]["head"] |= head  # holds head parameters (trained during head_only_steps)
    return [groups[k] for k in sorted(groups)]


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
    for batch, _ in progress(loader, desc="validate", enabled=True):
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


def finetune(cfg: FinetuneConfig) -> Path:
    """Fine-tune (or linear-probe) the encoder; returns the run folder. Works under ``torchrun``."""
    with distributed_session(cfg.device) as info:
        return _finetune(cfg, info)


def _finetune(cfg: FinetuneConfig, info) -> Path:
    from affectmae.datasets.affwild2 import AffWild2Frames

    for name in ("data", "encoder", "out_dir"):
        if not getattr(cfg, name):
            raise AffectMAEError(f"finetune needs {name} (--{name.replace('out_dir', 'out')})")
    for name in ("max_steps", "warmup_steps", "overfit_batches", "head_only_steps"):
        if getattr(cfg, name) < 0:
            raise AffectMAEError(f"finetune: {name} must be >= 0, got {getattr(cfg, name)}")
    spec = get_task(cfg.task)
    run_dir = Path(cfg.out_dir)
    state_path = run_dir / "last_state.safetensors"
    if cfg.resume and not state_path.is_file():
        raise AffectMAEError(f"--resume: no {state_path.name} in {run_dir}")
    if not cfg.resume and state_path.is_file():
        raise AffectMAEError(f"{run_dir} already holds a run; pass --resume to continue it or choose another -o folder")
    device = info.device
    cfg_dict = config_to_dict(dataclasses.replace(cfg, resume=False))
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    torch.manual_seed(cfg.seed)
    encoder = load_encoder(cfg.encoder, img_size=cfg.img_size, drop_path_rate=0.0 if cfg.freeze_encoder else cfg.drop_path)
    encoder.pos_embed.requires_grad_(True)
    img_size = encoder.arch["img_size"]
    keep_freed_memory(device)
    model = FinetuneModel(encoder, spec).to(device)
    if cfg.freeze_encoder:
        encoder.requires_grad_(False)

    frames_root = cfg.frames or cfg.data
    train_frames = AffWild2Frames(cfg.data, frames_root, spec.name, "train")
    val_frames = AffWild2Frames(cfg.data, frames_root, spec.name, "val", transform=plain_transform(img_size))
    from torchvision.transforms import v2

    from affectmae.models.vit import IMAGENET_MEAN, IMAGENET_STD

    aug = [v2.ToImage(), v2.RandomResizedCrop(img_size, scale=(cfg.crop_scale_min, 1.0), antialias=True)]
    aug += [v2.RandomHorizontalFlip()] if cfg.hflip else []
    aug += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_set = AugmentedFrames(Subset(train_frames, range(0, len(train_frames), cfg.frame_stride)), v2.Compose(aug), cfg.seed)
    val_set = Subset(val_frames, range(0, len(val_frames), cfg.val_stride))
    if cfg.overfit_batches:  # the same few training frames, unaugmented, for training and scoring
        keep = _spread(len(train_frames), cfg.overfit_batches * cfg.batch_size)
        train_frames.transform = plain_transform(img_size)
        train_set = AugmentedFrames(Subset(train_frames, keep), _unchanged, cfg.seed)
        val_set = Subset(train_frames, keep)
        log.info("sanity mode: fitting %d fixed training frames (%d batches); the loss should fall towards 0",
                 len(keep), cfg.overfit_batches)
    weights = None
    if cfg.class_weights:
        labels = np.stack([np.atleast_1d(train_frames.label(i).numpy()) for i in train_set.frames.indices])
        weights = class_weights(spec, labels).to(device)
        log.info("class weights: %s", [round(w, 3) for w in weights.tolist()])

    sampler = GlobalBatchSampler(len(train_set), cfg.batch_size, info.rank, info.world_size, 1, seed=cfg.seed,
                                 shuffle=True, drop_last=False)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    epochs = -(-total_steps // steps_per_epoch)
    warmup_steps = cfg.warmup_steps or cfg.warmup_epochs * steps_per_epoch
    optimizer = make_adamw(layer_decay_groups(model, cfg.weight_decay, cfg.layer_decay), cfg.lr, cfg.betas)
    log.info("%s %s: %d train frames (stride %d), %d val frames, %d steps/epoch, %d steps", "linear probe"
             if cfg.freeze_encoder else "fine-tuning", spec.name, len(train_set), cfg.frame_stride, len(val_set),
             steps_per_epoch, total_steps)

    logger = ScalarLogger(run_dir, enabled=info.is_main, tensorboard=cfg.tensorboard)
    ckpt = CheckpointManager(run_dir, enabled=info.is_main)
    epoch, global_step, best = 0, 0, {"epoch": 0, "score": -float("inf")}
    if cfg.resume:
        meta = load_training_state(state_path, model, optimizer, config=cfg_dict, compare_keys=RESUME_KEYS)
        epoch, global_step = meta["counters"]["epoch"], meta["counters"]["global_step"]
        best = meta["extra"]["best"]
        logger.truncate_after(global_step)
    net = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                        find_unused_parameters=cfg.head_only_steps > 0)
    use_bf16 = cfg.bf16 and device.type == "cuda"

    while epoch < epochs:
        model.train()
        if cfg.freeze_encoder:
            encoder.eval()
        sampler.set_epoch(epoch)
        train_set.epoch = epoch
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_skip_corrupt,
                            pin_memory=device.type == "cuda")
        t0, losses, skipped = time.perf_counter(), [], 0
        bar = progress(loader, total=min(len(sampler), total_steps - global_step),
                       desc=f"finetune epoch {epoch + 1}/{epochs}", enabled=info.is_main)
        for step, (batch, n_bad) in enumerate(bar):
            if global_step >= total_steps:
                break
            skipped += n_bad
            if batch is None:
                continue
            lr = _set_step_lr(optimizer, cfg, global_step, total_steps, warmup_steps)
            model.encoder_grad = global_step >= cfg.head_only_steps and not cfg.freeze_encoder
            with autocast(device, use_bf16):
                outputs = net(batch[0].to(device, non_blocking=True))
            loss = frame_loss(spec, outputs.float(), batch[1].to(device), weights, cfg.label_smoothing)
            loss_value = float(all_reduce_mean(loss.detach(), info))
            check_finite(loss_value, epoch, step, run_dir)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step += 1
            losses.append(loss_value)
            if info.is_main and global_step % cfg.log_every_steps == 0:
                logger.log({"epoch": epoch, "step": step, "loss": loss_value, "lr": lr}, global_step)
                bar.set_postfix(loss=f"{loss_value:.4f}")
        epoch += 1
        if skipped:
            log.warning("epoch %d: skipped %d unreadable frames", epoch, skipped)
        if info.is_main:
            outputs, labels = predict_frames(model, val_set, min(cfg.batch_size, 256), device, cfg.num_workers)
            metrics = score(spec, outputs, labels)
            record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                      "val_score": metrics["score"], "skipped_frames": skipped,
                      "seconds": time.perf_counter() - t0}
            logger.log(record, global_step, prefix="epoch")
            log.info("epoch %d/%d: train loss %.4f, %s %s %.4f", epoch, epochs, record["train_loss"],
                     "score on the fitted frames" if cfg.overfit_batches else "val", spec.name, metrics["score"])
            if metrics["score"] > best["score"]:
                best = {"epoch": epoch, "score": float(metrics["score"]), "metrics": _jsonable(metrics)}
                meta = {"stage": "finetune", "task": spec.name, "epoch": epoch, "val_score": best["score"],
                        "freeze_encoder": cfg.freeze_encoder}
                save_encoder(encoder, run_dir / "encoder.safetensors", meta)
                save_weights(run_dir / f"head_{spec.name}.safetensors", model.head.state_dict(),
                             {**meta, "kind": "linear_head", "in_features": encoder.embed_dim,
                              "num_outputs": spec.num_outputs})
            ckpt.save(model, optimizer, {"epoch": epoch, "global_step": global_step}, cfg_dict, extra={"best": best})
            atomic_write_text(run_dir / "best.json", json.dumps(best, indent=2) + "\n")
        barrier(info)
    logger.close()
    return run_dir


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


def _unchanged(image: Any) -> Any:
    return image


def _spread(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n)`` (all of them when ``count >= n``)."""
    if count >= n:
        return list(range(n))
    return np.linspace(0, n - 1, count).round().astype(int).tolist()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def run_finetune(config: str | None, overrides: list[str] | None, **explicit: Any) -> Path:
    """CLI entry: config file (or packaged name), ``key=value`` overrides, then explicit arguments (non-None)."""
    cfg = load_config(FinetuneConfig, resolve_config(config), overrides)
    return finetune(dataclasses.replace(cfg, **{k: v for k, v in explicit.items() if v is not None}))
