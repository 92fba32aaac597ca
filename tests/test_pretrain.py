"""MAE pretraining: exact resume, NaN guard, DDP equivalence, CLI run folder, corrupt images."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affectmae.checkpoint import read_metadata
from affectmae.cli import main
from affectmae.config import load_config
from affectmae.errors import CheckpointError, TrainingDivergedError
from affectmae.models.mae import MaskedAutoencoder
from affectmae.models.vit import load_encoder
from affectmae.training import pretrain as pretrain_mod
from affectmae.training.checkpoints import CheckpointManager
from affectmae.training.metrics_log import read_metrics
from affectmae.training.pretrain import PretrainConfig, pretrain


def _faces(folder: Path, n: int = 24, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.clip(rng.normal(128, 40, (size, size, 3)) + np.linspace(0, 60, size)[None, :, None], 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def _cfg(data: Path, out: Path, **kw) -> PretrainConfig:
    base = dict(images=[str(data)], out=str(out), model_size="tiny", depth=1, img_size=32, decoder_dim=32,
                decoder_depth=1, decoder_heads=2, epochs=4, warmup_epochs=1, batch_size=8, base_lr=2e-3,
                num_workers=0, log_every_steps=1, recon_every_epochs=0, norm_pix_loss=True, device="cpu", tensorboard=False)
    base.update(kw)
    return PretrainConfig(**base)


def _losses(run: Path) -> np.ndarray:
    rows = read_metrics(run, "train")
    assert [r["global_step"] for r in rows] == list(range(1, len(rows) + 1))
    return np.array([r["loss"] for r in rows])


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return _faces(tmp_path_factory.mktemp("faces") / "imgs")


@pytest.fixture(scope="module")
def straight_run(faces, tmp_path_factory) -> Path:
    return pretrain(_cfg(faces, tmp_path_factory.mktemp("runs") / "straight"))


def test_resume_after_kill_continues_the_loss_curve(faces, straight_run, tmp_path, monkeypatch):
    """24 images / batch 8 = 3 steps per epoch, 12 steps. A mid-epoch checkpoint at step 4, a kill during
    step 6: the resumed run drops the orphan record of step 5 and reproduces every loss exactly."""
    cfg = _cfg(faces, tmp_path / "killed", checkpoint_every_steps=4)
    real_check = pretrain_mod.check_finite

    def kill_at_epoch1_step2(loss, epoch, step, run_dir=None):
        if (epoch, step) == (1, 2):
            raise KeyboardInterrupt
        real_check(loss, epoch, step, run_dir)

    monkeypatch.setattr(pretrain_mod, "check_finite", kill_at_epoch1_step2)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg)
    assert len(read_metrics(cfg.out, "train")) == 5
    assert read_metadata(Path(cfg.out) / "last_state.safetensors")["counters"] == {
        "epoch": 1, "step_in_epoch": 1, "global_step": 4, "epoch_loss_steps": 1,
        "epoch_loss_sum": read_metrics(cfg.out, "train")[3]["loss"]}  # the interrupted epoch's steps so far
    monkeypatch.setattr(pretrain_mod, "check_finite", real_check)

    pretrain(dataclasses.replace(cfg, resume=True))
    straight, resumed = _losses(straight_run), _losses(Path(cfg.out))
    assert len(straight) == 12 and len(resumed) == 12
    np.testing.assert_allclose(resumed, straight, rtol=0, atol=1e-6)
    # the interrupted epoch's loss averages all three of its steps, not only those after the resume
    epoch_loss = [r["loss"] for r in read_metrics(cfg.out, "epoch")]
    np.testing.assert_allclose(epoch_loss, [r["loss"] for r in read_metrics(straight_run, "epoch")], rtol=0, atol=1e-6)
    np.testing.assert_allclose(epoch_loss[1], straight[3:6].mean(), rtol=0, atol=1e-6)
    a = load_encoder(straight_run).state_dict()
    b = load_encoder(cfg.out).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert straight[-3:].mean() < straight[:3].mean()  # the reconstruction loss falls


def test_resume_with_incompatible_config_names_the_difference(faces, straight_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(straight_run, run)
    with pytest.raises(CheckpointError, match=r"incompatible config \(depth: saved 1, now 2\)"):
        pretrain(_cfg(faces, run, depth=2, resume=True))
    with pytest.raises(Exception, match="already holds a run; pass --resume"):
        pretrain(_cfg(faces, run))


def test_nan_loss_stops_training_and_keeps_last_checkpoint(faces, tmp_path, monkeypatch):
    cfg = _cfg(faces, tmp_path / "nan", epochs=2)
    state = Path(cfg.out) / "last_state.safetensors"
    saved: list[bytes] = []
    real_save = CheckpointManager.save

    def recording_save(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        saved.append(state.read_bytes())

    calls = {"n": 0}
    real_loss = MaskedAutoencoder.forward_loss

    def nan_on_fifth_step(self, imgs, pred, mask):
        calls["n"] += 1
        loss = real_loss(self, imgs, pred, mask)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(CheckpointManager, "save", recording_save)
    monkeypatch.setattr(MaskedAutoencoder, "forward_loss", nan_on_fifth_step)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 1, step 1; the last good checkpoint"):
        pretrain(cfg)
    assert len(saved) == 1 and state.read_bytes() == saved[0]
    assert read_metadata(state)["counters"]["global_step"] == 3


def _ddp_worker(rank: int, world: int, port: int, cfg: PretrainConfig) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    pretrain(cfg)


def test_two_gloo_processes_follow_the_single_process_curve(faces, straight_run, tmp_path):
    """Same global batch (8): 2 processes x 4 images, and 1 process x 2 accumulation steps x 4 images."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _cfg(faces, tmp_path / "ddp", epochs=2)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, cfg), nprocs=2, join=True)
    accum = pretrain(_cfg(faces, tmp_path / "accum", epochs=2, accum_steps=2))
    single = pretrain(_cfg(faces, tmp_path / "single", epochs=2))
    np.testing.assert_allclose(_losses(Path(cfg.out)), _losses(single), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_losses(accum), _losses(single), rtol=0, atol=1e-5)
    assert len(_losses(single)) == 6


def test_torchrun_launch_of_the_cli_matches_one_process(faces, tmp_path):
    """The documented multi-process launch, for real: ``torchrun --nproc-per-node 2 -m affectmae pretrain``."""
    import subprocess
    import sys

    out = tmp_path / "torchrun"
    settings = ["model_size=tiny", "depth=1", "img_size=32", "decoder_dim=32", "decoder_depth=1", "decoder_heads=2",
                "epochs=2", "warmup_epochs=1", "batch_size=8", "base_lr=2e-3", "num_workers=0", "log_every_steps=1",
                "recon_every_epochs=0", "norm_pix_loss=true", "device=cpu", "tensorboard=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "affectmae", "pretrain", "--data", str(faces), "-o", str(out), *settings],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single = pretrain(_cfg(faces, tmp_path / "single", epochs=2))
    assert len(_losses(single)) == 6
    np.testing.assert_allclose(_losses(out), _losses(single), rtol=0, atol=1e-5)


def test_cli_run_folder_figure_and_corrupt_image(tmp_path, capsys):
    data = _faces(tmp_path / "faces", n=9)
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    run = tmp_path / "run"
    code = main(["pretrain", "--images", f"folder:{data}", "-o", str(run), "--config", "pretrain_tiny",
                 "depth=1", "img_size=32", "decoder_dim=32", "decoder_depth=1", "decoder_heads=2",
                 "epochs=2", "batch_size=5", "recon_every_epochs=1", "recon_images=3"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(run / "encoder.safetensors")
    for name in ("config.yaml", "last_state.safetensors", "encoder.safetensors", "metrics.jsonl",
                 "recon/epoch_0001.png", "recon/epoch_0002.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    assert Image.open(run / "recon/epoch_0002.png").size == (3 * 34 + 2, 3 * 34 + 2)
    epochs = read_metrics(run, "epoch")
    assert [e["skipped_images"] for e in epochs] == [1, 1]  # 10 files, 2 steps of 5: the broken one each epoch
    meta = read_metadata(run / "encoder.safetensors")
    assert meta["kind"] == "encoder" and meta["arch"]["depth"] == 1 and meta["epoch"] == 2
    assert "depth: 1" in (run / "config.yaml").read_text()
    assert main(["pretrain", "--data", str(data), "-o", str(run), "depth=1"]) == 2  # exists, no --resume (old flag)


def test_lr_scaling_rule():
    assert PretrainConfig().effective_lr == pytest.approx(5e-4)  # paper: 5e-4 at batch 1024
    assert PretrainConfig(batch_size=256).effective_lr == pytest.approx(1.25e-4)
    assert PretrainConfig(batch_size=64, lr=1e-3).effective_lr == 1e-3


def test_global_batch_sampler_splits_each_step_across_ranks_and_accumulation():
    from affectmae.training.distributed import GlobalBatchSampler

    def batches(world, accum, start=0):
        out = []
        for rank in range(world):
            s = GlobalBatchSampler(20, 8, rank, world, accum, seed=3)
            s.set_epoch(1, start)
            out.append(list(s))
        return out

    (single,) = batches(1, 1)
    assert len(single) == 2 and all(len(b) == 8 for b in single)  # 20 // 8 steps, the last 4 dropped
    r0, r1 = batches(2, 2)
    assert len(r0) == 4 and all(len(b) == 2 for b in r0 + r1)
    assert sorted(r0[0] + r1[0] + r0[1] + r1[1]) == sorted(single[0])  # same samples in optimizer step 0
    assert batches(1, 1, start=1)[0] == single[1:]  # resume mid-epoch at step 1
    other_epoch = GlobalBatchSampler(20, 8, seed=3)
    assert list(other_epoch) != single
    ragged = GlobalBatchSampler(10, 8, 0, 2, drop_last=False)
    assert [len(b) for b in ragged] == [4, 1]  # last step: 2 samples, one per rank
    with pytest.raises(Exception, match="divisible by processes x accum_steps = 2 x 3"):
        GlobalBatchSampler(20, 8, 0, 2, 3)


def test_checkpoint_rotation_and_packaged_configs(tmp_path):
    from affectmae.config import resolve_config

    model = torch.nn.Linear(2, 2)
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3):
        manager.save(model, None, {"global_step": step}, {}, numbered=True)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "last_state.safetensors", "state_00000002.safetensors", "state_00000003.safetensors"]
    assert resolve_config("pretrain_tiny").name == "pretrain_tiny.yaml"
    with pytest.raises(Exception, match="config file not found: nope.yaml .packaged configs: .*pretrain_paper"):
        resolve_config("nope.yaml")
    paper = load_config(PretrainConfig, resolve_config("pretrain_paper"))
    assert (paper.model_size, paper.batch_size, paper.epochs, paper.effective_lr) == ("base", 1024, 500, pytest.approx(5e-4))
