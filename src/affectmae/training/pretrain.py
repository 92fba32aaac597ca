"""`affectmae pretrain`: masked-autoencoder pretraining of the ViT encoder on face images.

Learning rate: ``lr = base_lr * batch_size / 256`` (the MAE rule), where ``batch_size`` is the *global*
batch of one optimizer step (all processes and accumulation steps together). The paper's "lr 5e-4 with
batch 1024" is read as the absolute rate at that batch, i.e. ``base_lr = 1.25e-4``; set ``lr`` to give
an absolute rate that ignores batch scaling. Warm-up is linear per iteration, then cosine to ``min_lr``.

Run folder: the layout of every stage (:mod:`affectmae.training.checkpoints`: ``config.yaml``,
``metrics.jsonl``, ``tensorboard/``, ``last_state.safetensors``), with ``encoder.safetensors`` (the last
epoch's encoder, for finetune/extract: the "w/o fine-tuning" ablation uses it directly) and
``recon/epoch_XXXX.png``. Pretraining does not validate, so there is no best epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader

from affectmae.config import build_config, config_to_dict
from affectmae.device import autocast
from affectmae.errors import AffectMAEError
from affectmae.models.augment import FaceAugment
from affectmae.models.mae import MaskedAutoencoder
from affectmae.models.preprocess import encoder_normalisation
from affectmae.models.vit import ENCODER_FILE, build_encoder, init_like_reference_mae, load_encoder, save_encoder
from affectmae.training.checkpoints import check_run_dir
from affectmae.training.distributed import (
    DistInfo,
    GlobalBatchSampler,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    distributed_session,
)
from affectmae.training.engine import Stage, TrainingRun, check_finite, fit
from affectmae.training.finetune_data import images_on_device
from affectmae.training.loader import EpochBatches, make_loader, resolve_loader
from affectmae.training.memory import keep_freed_memory
from affectmae.training.optim import make_adamw, param_groups_weight_decay, set_lr, warmup_cosine_lr
from affectmae.training.pretrain_data import MAEAugmented, collate_augment, fixed_batch, save_reconstruction_figure
from affectmae.training.stream_sampler import StreamBatchSampler

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    RENAMED: ClassVar[dict[str, str]] = {"data": "images", "out_dir": "out"}

    images: list[str] = field(default_factory=list)  # face-image specs: folder:/p, fer2013:/p/fer2013.csv, /plain/folder
    out: str = field(default="", metadata={"path": "out_dir"})  # run folder
    # encoder
    model_size: str = field(default="base", metadata={"choices": ("tiny", "small", "base", "large")})
    img_size: int = field(default=112, metadata={"min": 16})
    depth: int | None = field(default=None, metadata={"min": 1})  # override the size's depth (tests, demo)
    init_encoder: str | None = None  # start from an encoder checkpoint (e.g. an ImageNet MAE .pth)
    # decoder and masking (reference MAE)
    decoder_dim: int = field(default=512, metadata={"min": 1})
    decoder_depth: int = field(default=8, metadata={"min": 1})
    decoder_heads: int = field(default=16, metadata={"min": 1})  # must divide decoder_dim
    mask_ratio: float = field(default=0.75, metadata={"gt": 0, "lt": 1})
    norm_pix_loss: bool = True
    # optimisation
    epochs: int = field(default=500, metadata={"min": 1})
    warmup_epochs: int = field(default=40, metadata={"min": 0})
    batch_size: int = field(default=1024, metadata={"min": 1})  # global batch per optimizer step
    accum_steps: int = field(default=1, metadata={"min": 1})
    base_lr: float = field(default=1.25e-4, metadata={"gt": 0})  # lr = base_lr * batch_size / 256 = 5e-4 at batch 1024
    lr: float | None = field(default=None, metadata={"gt": 0})  # absolute lr; overrides base_lr scaling
    min_lr: float = field(default=0.0, metadata={"min": 0})
    weight_decay: float = field(default=0.05, metadata={"min": 0})
    betas: tuple[float, float] = (0.9, 0.95)
    # augmentation
    crop_scale_min: float = field(default=0.2, metadata={"gt": 0, "max": 1})
    hflip: bool = True
    # input pipeline (docs/training.md, "Input pipeline"): JPEGs decoded reduced to at least this shorter side
    # (0: full size), by `decoder`; None: each at the scale where its random crop keeps img_size pixels; or
    # the pixels of a packed folder (affectmae pack; None then means its 2 x img_size)
    decode_min_side: int | None = field(default=None, metadata={"min": 0})
    decoder: str = field(default="auto", metadata={"choices": ("auto", "simplejpeg", "pillow")})
    pack: str | None = field(default=None, metadata={"path": "dir"})
    stream: str | None = None  # litdata shards (affectmae pack --format litdata; local or s3://...) instead of images
    device_augment: bool = False  # crop, resize, flip and normalise whole batches on the training device
    # run
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # autocast on GPUs with bf16 support; never on CPU
    num_workers: int = field(default=-1, metadata={"min": -1})  # -1: from the cores (training/loader.py)
    pin_memory: bool | None = None  # None: on CUDA
    prefetch_factor: int = field(default=4, metadata={"min": 1})
    log_every_steps: int = field(default=10, metadata={"min": 1})
    tensorboard: bool = True
    checkpoint_every_steps: int = field(default=0, metadata={"min": 0})  # 0: checkpoint at epoch ends only
    keep_checkpoints: int = field(default=0, metadata={"min": 0})  # numbered copies state_<step>.safetensors kept (0: only last_state)
    recon_every_epochs: int = field(default=20, metadata={"min": 0})
    recon_images: int = field(default=8, metadata={"min": 0})
    resume: bool = False
    overwrite: bool = False  # replace a finished run in `out` (the output-folder rule, affectmae.io)

    def check(self, prefix: str = "") -> None:
        """Settings that depend on each other (checked by affectmae.config when a config is built)."""
        if self.decoder_dim % self.decoder_heads:
            raise AffectMAEError(f"{prefix}decoder_heads must divide {prefix}decoder_dim ({self.decoder_dim}), "
                                 f"got {self.decoder_heads}")

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256

    @property
    def min_side(self) -> int:
        """The shorter side JPEGs are decoded to (``decode_min_side``; by default twice the input size)."""
        return 2 * self.img_size if self.decode_min_side is None else self.decode_min_side

    @property
    def crop_decode(self) -> bool:
        """Each JPEG decoded at its crop's scale (``decode_min_side`` unset and no pack)."""
        return self.decode_min_side is None and not self.pack and not self.stream


RESUME_KEYS = ("images", "model_size", "img_size", "depth", "decoder_dim", "decoder_depth", "decoder_heads",
               "batch_size", "accum_steps", "seed", "mask_ratio", "norm_pix_loss")


def build_mae(cfg: PretrainConfig) -> MaskedAutoencoder:
    if cfg.init_encoder:
        encoder = load_encoder(cfg.init_encoder, img_size=cfg.img_size)
    else:
        overrides = {"depth": cfg.depth} if cfg.depth is not None else {}
        encoder = init_like_reference_mae(build_encoder(cfg.model_size, cfg.img_size, **overrides))
    return MaskedAutoencoder(encoder, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.norm_pix_loss)



@dataclass
class Pretraining:
    """What :func:`setup_pretraining` builds and :func:`train_one_epoch` uses."""

    cfg: PretrainConfig
    info: DistInfo
    model: MaskedAutoencoder
    net: torch.nn.Module  # the model, wrapped in DDP when several processes train
    optimizer: torch.optim.Optimizer
    dataset: MAEAugmented
    sampler: GlobalBatchSampler
    total_steps: int
    warmup_steps: int
    fig_batch: torch.Tensor | None
    augment: FaceAugment
    loader: DataLoader
    skipped_total: int = 0


def pretrain(cfg: PretrainConfig) -> Path:
    """Run (or resume) MAE pretraining; returns the run folder. Works under ``torchrun`` (DDP)."""
    with distributed_session(cfg.device) as info:
        p, run = setup_pretraining(cfg, info)
        fit(run, Stage(p.model, p.optimizer, partial(train_one_epoch, p), save_products=partial(_save_products, p),
                       barrier=partial(barrier, info), numbered_states=cfg.keep_checkpoints > 0))
        if p.skipped_total:
            log.warning("%d unreadable images were skipped over the run (counted each time they came up)",
                        p.skipped_total)
        return run.run_dir


def setup_pretraining(cfg: PretrainConfig, info: DistInfo) -> tuple[Pretraining, TrainingRun]:
    """Check the run folder, build the MAE, AdamW and the augmented images; restore the state on ``resume``."""
    from affectmae.datasets.face_images import build_face_dataset
    from affectmae.datasets.streaming import StreamFaces

    if not cfg.out:
        raise AffectMAEError("pretrain needs an output folder (-o RUN_DIR)")
    if not cfg.images and not cfg.stream:
        raise AffectMAEError("pretrain needs at least one --images source (e.g. folder:/path/to/faces) or stream=DIR")
    check_run_dir(Path(cfg.out), cfg.resume, cfg.overwrite, "pretrain")
    barrier(info)
    device = info.device
    keep_freed_memory(device)
    torch.manual_seed(cfg.seed)
    model = build_mae(cfg).to(device)
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_decay_names=("pos_embed", "cls_token", "mask_token"))
    optimizer = make_adamw(groups, cfg.effective_lr, cfg.betas)

    if cfg.stream:  # shards read per rank (datasets/streaming.py, training/stream_sampler.py)
        images = StreamFaces(cfg.stream)
        sampler = StreamBatchSampler(images.chunk_sizes, cfg.batch_size, info.rank, info.world_size, cfg.accum_steps,
                                     seed=cfg.seed)
    else:
        images = build_face_dataset(list(cfg.images), min_side=cfg.min_side, decoder=cfg.decoder, pack=cfg.pack)
        sampler = GlobalBatchSampler(len(images), cfg.batch_size, info.rank, info.world_size, cfg.accum_steps,
                                     seed=cfg.seed, shuffle=True, drop_last=True)
    norm = encoder_normalisation(model.encoder)  # ImageNet's, or an init_encoder's own (it stays recorded)
    augment = FaceAugment(cfg.img_size, cfg.crop_scale_min, cfg.hflip, *norm)  # = train_transform, in two halves
    dataset = MAEAugmented(images, augment, model.encoder.num_patches, cfg.seed, device_augment=cfg.device_augment,
                           crop_decode=cfg.crop_decode)
    steps_per_epoch = sampler.steps_per_epoch
    log.info("MAE pretraining: %d images, %d steps/epoch x %d epochs, global batch %d (%d processes x %d accum), lr %.3g",
             len(dataset), steps_per_epoch, cfg.epochs, cfg.batch_size, info.world_size, cfg.accum_steps, cfg.effective_lr)

    workers, pin = resolve_loader(cfg.num_workers, cfg.pin_memory, device)
    ran = dataclasses.replace(cfg, resume=False, num_workers=workers, pin_memory=pin,
                              decode_min_side=None if cfg.crop_decode else cfg.min_side)  # what ran, in config.yaml
    run = TrainingRun("pretrain", cfg.out, cfg.epochs, config_to_dict(ran),
                      is_main=info.is_main, tensorboard=cfg.tensorboard, keep_checkpoints=cfg.keep_checkpoints)
    if cfg.resume:
        run.restore(model, optimizer, RESUME_KEYS, PretrainConfig.RENAMED)
    fig_batch = fixed_batch(images, cfg.img_size, cfg.recon_images) if info.is_main and cfg.recon_every_epochs else None
    net = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = make_loader(dataset, EpochBatches(sampler, lambda: run.epoch), workers, pin, cfg.prefetch_factor,
                         collate_augment)
    p = Pretraining(cfg, info, model, net, optimizer, dataset, sampler, cfg.epochs * steps_per_epoch,
                    cfg.warmup_epochs * steps_per_epoch, fig_batch, augment, loader)
    return p, run


def train_one_epoch(p: Pretraining, run: TrainingRun) -> dict[str, Any]:
    """One epoch of MAE steps (gradient accumulation over ``accum_steps`` micro-batches, mid-epoch checkpoints
    every ``checkpoint_every_steps``); returns the epoch's mean loss, images/s and unreadable images."""
    cfg, info, device = p.cfg, p.info, p.info.device
    p.model.train()
    p.sampler.set_epoch(run.epoch, run.step_in_epoch)
    p.dataset.set_epoch(run.epoch)
    loader = p.loader  # one for the run: its persistent workers get the epoch with each index (EpochBatches)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    t0, n_images, step_loss, skipped = time.perf_counter(), 0, 0.0, 0
    bar = run.progress(loader, total=len(p.sampler))
    for micro, (batch, n_bad) in enumerate(bar):
        first, last = micro % cfg.accum_steps == 0, micro % cfg.accum_steps == cfg.accum_steps - 1
        skipped += int(all_reduce_sum(torch.tensor(float(n_bad)), info).item())
        if first:
            lr = warmup_cosine_lr(run.global_step, p.total_steps, p.warmup_steps, cfg.effective_lr, cfg.min_lr)
            set_lr(p.optimizer, lr)
        if batch is None:
            raise AffectMAEError("a whole micro-batch of images was unreadable; check the data sources")
        # device_augment: uint8 images + the sampled crops, the pixel work on the device, whole batch
        imgs = images_on_device(batch, device, p.augment if cfg.device_augment else None)
        noise = batch[-1].to(device, non_blocking=True)
        sync = contextlib.nullcontext() if (last or not info.enabled) else p.net.no_sync()
        with sync:
            with autocast(device, use_bf16):
                loss, _, _ = p.net(imgs, cfg.mask_ratio, noise)
            loss_value = float(all_reduce_mean(loss.float(), info))
            check_finite(loss_value, run.epoch, run.step_in_epoch, run.run_dir)
            (loss / cfg.accum_steps).backward()
        step_loss += loss_value / cfg.accum_steps
        n_images += imgs.shape[0] * info.world_size
        if not last:
            continue
        p.optimizer.step()
        p.optimizer.zero_grad(set_to_none=True)
        run.global_step += 1
        run.step_in_epoch += 1
        run.add_step_loss(step_loss)  # kept in the state: a resumed epoch averages all its steps
        end_of_epoch = run.step_in_epoch == p.sampler.steps_per_epoch
        if info.is_main and (run.global_step % cfg.log_every_steps == 0 or end_of_epoch):
            run.logger.log({"epoch": run.epoch, "step": run.step_in_epoch, "loss": step_loss, "lr": lr}, run.global_step)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        step_loss = 0.0
        if cfg.checkpoint_every_steps and run.global_step % cfg.checkpoint_every_steps == 0 and not end_of_epoch:
            run.checkpoints.save(p.model, p.optimizer, run.counters(), run.config, numbered=True)
    seconds = time.perf_counter() - t0
    if skipped:
        log.warning("epoch %d: skipped %d unreadable images", run.epoch + 1, skipped)
    p.skipped_total += skipped
    return {"loss": run.epoch_loss(), "images_per_s": n_images / max(seconds, 1e-9),
            "skipped_images": skipped}


def _save_products(p: Pretraining, run: TrainingRun, record: dict[str, Any]) -> None:
    """After every epoch's state: the encoder, and the reconstruction figure every ``recon_every_epochs``."""
    save_encoder(p.model.encoder, run.run_dir / ENCODER_FILE,
                 {"stage": "pretrain", "epoch": run.epoch, "global_step": run.global_step, "mae_loss": record["loss"]})
    if p.fig_batch is not None and (run.epoch % p.cfg.recon_every_epochs == 0 or run.epoch == p.cfg.epochs):
        _write_figure(p.model, p.fig_batch, p.cfg, p.info.device, run.run_dir / "recon" / f"epoch_{run.epoch:04d}.png")


def _write_figure(model: MaskedAutoencoder, batch: torch.Tensor, cfg: PretrainConfig, device, path: Path) -> None:
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.rand(batch.shape[0], model.encoder.num_patches, generator=gen)
    masked, recon = model.reconstruct(batch.to(device), cfg.mask_ratio, noise.to(device))
    save_reconstruction_figure(path, batch, masked, recon)
    model.train()


def run_pretrain(config: str | Path | None = None, overrides: list[str] | dict | None = None, **explicit: Any) -> Path:
    """Entry point: defaults < config file (or packaged name) < ``key=value`` overrides < named settings that
    are not None (``images``, ``out``, ``resume``...); then :func:`pretrain`."""
    return pretrain(build_config(PretrainConfig, config, overrides, **explicit))
