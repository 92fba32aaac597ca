"""`affectmae pretrain`: masked-autoencoder pretraining of the ViT encoder on face images.

Learning rate: ``lr = base_lr * batch_size / 256`` (the MAE rule), where ``batch_size`` is the *global*
batch of one optimizer step (all processes and accumulation steps together). The paper's "lr 5e-4 with
batch 1024" is read as the absolute rate at that batch, i.e. ``base_lr = 1.25e-4``; set ``lr`` to give
an absolute rate that ignores batch scaling. Warm-up is linear per iteration, then cosine to ``min_lr``.

Run folder: ``config.yaml``, ``last_state.safetensors`` (resume), ``encoder.safetensors`` (for
finetune/extract: the "w/o fine-tuning" ablation uses it directly), ``metrics.jsonl``, ``tensorboard/``,
``recon/epoch_XXXX.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from affectmae.config import config_to_dict, load_config, save_config
from affectmae.datasets.images import collate_skip_corrupt
from affectmae.device import autocast
from affectmae.errors import AffectMAEError
from affectmae.models.mae import MaskedAutoencoder
from affectmae.models.vit import build_encoder, load_encoder, save_encoder
from affectmae.training.distributed import (
    GlobalBatchSampler,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    distributed_session,
)
from affectmae.training.engine import (
    CheckpointManager,
    ScalarLogger,
    check_finite,
    keep_freed_memory,
    make_adamw,
    progress,
    resolve_config,
)
from affectmae.training.optim import param_groups_weight_decay, set_lr, warmup_cosine_lr
from affectmae.training.pretrain_data import MAEAugmented, fixed_batch, mae_transform, save_reconstruction_figure
from affectmae.training.state import load_training_state

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    data: list[str] = field(default_factory=list)  # face-image specs: folder:/p, fer2013:/p/fer2013.csv, /plain/folder
    out_dir: str = ""
    # encoder
    model_size: str = "base"
    img_size: int = 112
    depth: int | None = None  # override the size's depth (tests, demo)
    init_encoder: str | None = None  # start from an encoder checkpoint (e.g. an ImageNet MAE .pth)
    # decoder and masking (reference MAE)
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    # optimisation
    epochs: int = 500
    warmup_epochs: int = 40
    batch_size: int = 1024  # global batch per optimizer step
    accum_steps: int = 1
    base_lr: float = 1.25e-4  # lr = base_lr * batch_size / 256 = 5e-4 at batch 1024
    lr: float | None = None  # absolute lr; overrides base_lr scaling
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    # augmentation
    crop_scale_min: float = 0.2
    hflip: bool = True
    # run
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # autocast on GPUs with bf16 support; never on CPU
    num_workers: int = 4
    log_every_steps: int = 10
    tensorboard: bool = True
    checkpoint_every_steps: int = 0  # 0: checkpoint at epoch ends only
    keep_checkpoints: int = 0  # numbered copies state_<step>.safetensors kept (0: only last_state)
    recon_every_epochs: int = 20
    recon_images: int = 8
    resume: bool = False

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256


RESUME_KEYS = ("data", "model_size", "img_size", "depth", "decoder_dim", "decoder_depth", "decoder_heads",
               "batch_size", "accum_steps", "seed", "mask_ratio", "norm_pix_loss")


def _check_run_dir(cfg: PretrainConfig, run_dir: Path, is_main: bool) -> None:
    if not cfg.out_dir:
        raise AffectMAEError("pretrain needs an output folder (-o RUN_DIR)")
    if not cfg.data:
        raise AffectMAEError("pretrain needs at least one --data source (e.g. folder:/path/to/faces)")
    state = run_dir / "last_state.safetensors"
    if cfg.resume and not state.is_file():
        raise AffectMAEError(f"--resume: no {state.name} in {run_dir}")
    if not cfg.resume and state.is_file():
        raise AffectMAEError(f"{run_dir} already holds a run; pass --resume to continue it or choose another -o folder")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)


def build_mae(cfg: PretrainConfig) -> MaskedAutoencoder:
    if cfg.init_encoder:
        encoder = load_encoder(cfg.init_encoder, img_size=cfg.img_size)
    else:
        overrides = {"depth": cfg.depth} if cfg.depth is not None else {}
        encoder = build_encoder(cfg.model_size, cfg.img_size, **overrides)
    return MaskedAutoencoder(encoder, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.norm_pix_loss)


def pretrain(cfg: PretrainConfig) -> Path:
    """Run (or resume) MAE pretraining; returns the run folder. Works under ``torchrun`` (DDP)."""
    with distributed_session(cfg.device) as info:
        return _pretrain(cfg, info)


def _pretrain(cfg: PretrainConfig, info) -> Path:
    from affectmae.datasets.face_images import build_face_dataset

    run_dir = Path(cfg.out_dir)
    _check_run_dir(cfg, run_dir, info.is_main)
    barrier(info)
    device = info.device
    cfg_dict = config_to_dict(dataclasses.replace(cfg, resume=False))
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")

    keep_freed_memory(device)
    torch.manual_seed(cfg.seed)
    model = build_mae(cfg).to(device)
    encoder = model.encoder
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_decay_names=("pos_embed", "cls_token", "mask_token"))
    optimizer = make_adamw(groups, cfg.effective_lr, cfg.betas)

    images = build_face_dataset(list(cfg.data))
    dataset = MAEAugmented(images, mae_transform(cfg.img_size, cfg.crop_scale_min, cfg.hflip), encoder.num_patches, cfg.seed)
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, info.rank, info.world_size, cfg.accum_steps,
                                 seed=cfg.seed, shuffle=True, drop_last=True)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    log.info("MAE pretraining: %d images, %d steps/epoch x %d epochs, global batch %d (%d processes x %d accum), lr %.3g",
             len(dataset), steps_per_epoch, cfg.epochs, cfg.batch_size, info.world_size, cfg.accum_steps, cfg.effective_lr)

    logger = ScalarLogger(run_dir, enabled=info.is_main, tensorboard=cfg.tensorboard)
    ckpt = CheckpointManager(run_dir, keep=cfg.keep_checkpoints, enabled=info.is_main)
    epoch, step_in_epoch, global_step = 0, 0, 0
    if cfg.resume:
        meta = load_training_state(ckpt.last, model, optimizer, config=cfg_dict, compare_keys=RESUME_KEYS)
        c = meta["counters"]
        epoch, step_in_epoch, global_step = c["epoch"], c["step_in_epoch"], c["global_step"]
        logger.truncate_after(global_step)
        log.info("resumed %s at epoch %d, step %d (global step %d)", ckpt.last, epoch, step_in_epoch, global_step)
    fig_batch = fixed_batch(images, cfg.img_size, cfg.recon_images) if info.is_main and cfg.recon_every_epochs else None

    net = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    skipped_total = 0

    def counters() -> dict:
        return {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step}

    while epoch < cfg.epochs:
        model.train()
        sampler.set_epoch(epoch, step_in_epoch)
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_skip_corrupt,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        t0, n_images, step_loss, epoch_losses, skipped = time.perf_counter(), 0, 0.0, [], 0
        bar = progress(loader, total=len(sampler), desc=f"pretrain epoch {epoch + 1}/{cfg.epochs}", enabled=info.is_main)
        for micro, (batch, n_bad) in enumerate(bar):
            first, last = micro % cfg.accum_steps == 0, micro % cfg.accum_steps == cfg.accum_steps - 1
            skipped += int(all_reduce_sum(torch.tensor(float(n_bad)), info).item())
            if first:
                lr = warmup_cosine_lr(global_step, total_steps, warmup_steps, cfg.effective_lr, cfg.min_lr)
                set_lr(optimizer, lr)
            if batch is None:
                raise AffectMAEError("a whole micro-batch of images was unreadable; check the data sources")
            imgs, noise = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            sync = contextlib.nullcontext() if (last or not info.enabled) else net.no_sync()
            with sync:
                with autocast(device, use_bf16):
                    loss, _, _ = net(imgs, cfg.mask_ratio, noise)
                loss_value = float(all_reduce_mean(loss.float(), info))
                check_finite(loss_value, epoch, step_in_epoch, run_dir)
                (loss / cfg.accum_steps).backward()
            step_loss += loss_value / cfg.accum_steps
            n_images += imgs.shape[0] * info.world_size
            if not last:
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            step_in_epoch += 1
            epoch_losses.append(step_loss)
            if info.is_main and (global_step % cfg.log_every_steps == 0 or step_in_epoch == steps_per_epoch):
                logger.log({"epoch": epoch, "step": step_in_epoch, "loss": step_loss, "lr": lr}, global_step)
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            step_loss = 0.0
            if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0 and step_in_epoch < steps_per_epoch:
                ckpt.save(model, optimizer, counters(), cfg_dict, numbered=True)
        seconds = time.perf_counter() - t0
        epoch_loss = sum(epoch_losses) / max(1, len(epoch_losses))
        epoch += 1
        step_in_epoch = 0
        skipped_total += skipped
        if skipped:
            log.warning("epoch %d: skipped %d unreadable images", epoch, skipped)
        if info.is_main:
            logger.log({"epoch": epoch, "loss": epoch_loss, "images_per_s": n_images / max(seconds, 1e-9),
                        "skipped_images": skipped}, global_step, prefix="epoch")
            log.info("epoch %d/%d: loss %.4f, %.1f images/s", epoch, cfg.epochs, epoch_loss, n_images / max(seconds, 1e-9))
            ckpt.save(model, optimizer, counters(), cfg_dict, numbered=cfg.keep_checkpoints > 0)
            save_encoder(encoder, run_dir / "encoder.safetensors",
                         {"stage": "pretrain", "epoch": epoch, "global_step": global_step, "mae_loss": epoch_loss})
            if fig_batch is not None and (epoch % cfg.recon_every_epochs == 0 or epoch == cfg.epochs):
                _write_figure(model, fig_batch, cfg, device, run_dir / "recon" / f"epoch_{epoch:04d}.png")
        barrier(info)
    if skipped_total:
        log.warning("%d unreadable images were skipped over the run (counted each time they came up)", skipped_total)
    logger.close()
    return run_dir


def _write_figure(model: MaskedAutoencoder, batch: torch.Tensor, cfg: PretrainConfig, device, path: Path) -> None:
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.rand(batch.shape[0], model.encoder.num_patches, generator=gen)
    masked, recon = model.reconstruct(batch.to(device), cfg.mask_ratio, noise.to(device))
    save_reconstruction_figure(path, batch, masked, recon)
    model.train()


def run_pretrain(config: str | None, overrides: list[str] | None, data: list[str] | None = None,
                 out: str | None = None, resume: bool = False) -> Path:
    """CLI entry: packaged or user YAML config, then ``key=value`` overrides, then the explicit arguments."""
    cfg = load_config(PretrainConfig, resolve_config(config), overrides)
    cfg = dataclasses.replace(cfg, data=list(data) if data else cfg.data, out_dir=out or cfg.out_dir, resume=resume)
    return pretrain(cfg)
