"""Fine-tuning: layer-wise lr decay, class weights, losses, CLI run on synthetic Aff-Wild2, resume, probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from affectmae.checkpoint import load_weights, read_metadata
from affectmae.cli import main
from affectmae.errors import AffectMAEError, CheckpointError
from affectmae.evaluation.metrics import ccc
from affectmae.models.vit import build_encoder, load_encoder, save_encoder
from affectmae.synth.dataset import generate_affwild2
from affectmae.tasks import TASKS
from affectmae.training.finetune import FinetuneModel, frame_loss, layer_decay_groups
from affectmae.training.losses import class_weights
from affectmae.training.metrics_log import read_metrics
from affectmae.training.optim import set_lr


def test_layer_decay_scales_and_no_decay_groups():
    model = FinetuneModel(build_encoder("tiny", 32, depth=2), TASKS["expr"])
    groups = layer_decay_groups(model, weight_decay=0.05, layer_decay=0.5)
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr(opt, 1e-3)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["encoder.patch_embed.proj.weight"])] == (pytest.approx(1e-3 * 0.125), 0.05)
    assert lr_of[id(named["encoder.cls_token"])] == (pytest.approx(1e-3 * 0.125), 0.0)
    assert lr_of[id(named["encoder.blocks.0.attn.qkv.weight"])] == (pytest.approx(1e-3 * 0.25), 0.05)
    assert lr_of[id(named["encoder.blocks.1.norm1.weight"])] == (pytest.approx(1e-3 * 0.5), 0.0)
    assert lr_of[id(named["head.weight"])] == (pytest.approx(1e-3), 0.05)
    assert lr_of[id(named["encoder.norm.bias"])] == (pytest.approx(1e-3), 0.0)
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_class_weights_by_hand():
    w = class_weights(TASKS["expr"], np.array([[0], [0], [0], [1]]))
    torch.testing.assert_close(w, torch.tensor([4 / 24, 4 / 8, 0, 0, 0, 0, 0, 0], dtype=torch.float32))
    au = np.zeros((5, 12))
    au[:1, 0] = 1  # AU1: 1 positive, 4 negatives -> 4; AU2: no positive -> 5 / max(0, 1) = 5
    torch.testing.assert_close(class_weights(TASKS["au"], au)[:2], torch.tensor([4.0, 5.0]))
    many = np.zeros((30, 12))
    many[:, 1] = 1  # AU2 always on -> 0 / 30, clamped up to 0.1; AU1 never on -> 30, clamped down to 10
    torch.testing.assert_close(class_weights(TASKS["au"], many)[:2], torch.tensor([10.0, 0.1]))


def test_frame_losses_match_independent_definitions():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 8), torch.tensor([0, 3, 3, 7, 1, 0])
    torch.testing.assert_close(frame_loss(TASKS["expr"], logits, labels, None), F.cross_entropy(logits, labels))
    w = torch.rand(8)
    torch.testing.assert_close(frame_loss(TASKS["expr"], logits, labels, w), F.cross_entropy(logits, labels, weight=w))
    va_pred, va_true = torch.rand(6, 2) * 2 - 1, torch.rand(6, 2) * 2 - 1
    expected = 1 - (ccc(va_pred[:, 0].numpy(), va_true[:, 0].numpy()) + ccc(va_pred[:, 1].numpy(), va_true[:, 1].numpy())) / 2
    assert frame_loss(TASKS["va"], va_pred, va_true, None).item() == pytest.approx(expected, abs=1e-5)
    au_logits, au_true = torch.randn(6, 12), (torch.rand(6, 12) > 0.5).float()
    torch.testing.assert_close(frame_loss(TASKS["au"], au_logits, au_true, None),
                               F.binary_cross_entropy_with_logits(au_logits, au_true))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ft")
    generate_affwild2(root / "aw2", videos=3, frames=40, faces=0, size=32)
    torch.manual_seed(0)
    save_encoder(build_encoder("tiny", 32, depth=1), root / "mae" / "encoder.safetensors", {"stage": "pretrain"})
    return root / "aw2", root / "mae"


def test_cli_finetune_expr_then_resume(synth, tmp_path, capsys):
    data, mae = synth
    run = tmp_path / "ft"
    args = ["finetune", "--data", str(data), "--encoder", str(mae), "-o", str(run), "--config", "finetune_tiny",
            "batch_size=16", "tensorboard=false", "class_weights=true", "max_steps=0", "head_only_steps=0"]
    assert main(args + ["epochs=2"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "encoder.safetensors")
    epochs = read_metrics(run, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2]
    best = max(epochs, key=lambda e: e["val_score"])
    record = json.loads((run / "best.json").read_text())
    assert (record["epoch"], record["score"]) == (best["epoch"], best["val_score"])
    for name in ("config.yaml", "metrics.jsonl", "last_state.safetensors", "best.json", "encoder.safetensors"):
        assert (run / name).is_file(), name
    meta = read_metadata(run / "encoder.safetensors")
    assert meta["stage"] == "finetune" and meta["task"] == "expr" and meta["val_score"] == best["val_score"]
    head, head_meta = load_weights(run / "head_expr.safetensors")
    assert head["weight"].shape == (8, 192) and head_meta["num_outputs"] == 8
    assert load_encoder(run).arch["depth"] == 1  # usable by extract as it is

    assert main(args + ["epochs=3", "--resume"]) == 0
    assert [e["epoch"] for e in read_metrics(run, "epoch")] == [1, 2, 3]
    with pytest.raises(CheckpointError, match=r"incompatible config \(task: saved 'expr', now 'au'\)"):
        from affectmae.training.finetune import run_finetune

        run_finetune("finetune_tiny", ["epochs=4", "batch_size=16", "max_steps=0", "head_only_steps=0"],
                     annotations=str(data), encoder=str(mae), out=str(run), task="au", resume=True)


def test_linear_probe_on_au_leaves_encoder_unchanged(synth, tmp_path):
    data, mae = synth
    run = tmp_path / "probe"
    assert main(["finetune", "--annotations", str(data), "--encoder", str(mae / "encoder.safetensors"), "-o", str(run),
                 "--task", "au", "--config", "finetune_tiny", "epochs=1", "max_steps=0", "batch_size=16", "freeze_encoder=true",
                 "tensorboard=false"]) == 0
    before, after = load_encoder(mae).state_dict(), load_encoder(run).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    head, _ = load_weights(run / "head_au.safetensors")
    assert head["weight"].shape == (12, 192)
    assert 0.0 <= read_metrics(run, "epoch")[0]["val_score"] <= 1.0


def test_max_steps_sets_the_training_length_in_optimizer_steps(synth, tmp_path):
    data, mae = synth
    run = tmp_path / "steps"
    assert main(["finetune", "--annotations", str(data), "--encoder", str(mae), "-o", str(run), "--config", "finetune_tiny",
                 "batch_size=16", "tensorboard=false", "max_steps=7", "warmup_steps=2", "head_only_steps=0",
                 "lr=1e-3"]) == 0
    steps = read_metrics(run, "train")
    assert [s["global_step"] for s in steps] == list(range(1, 8))
    # warm-up over 2 steps, then a half cosine from lr 1e-3 to min_lr 1e-5 over the remaining 5
    assert steps[0]["lr"] == pytest.approx(5e-4) and steps[1]["lr"] == pytest.approx(1e-3)
    assert steps[-1]["lr"] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * 4 / 5)))
    per_epoch = sum(s["epoch"] == 0 for s in steps)  # steps of a full epoch
    assert [e["epoch"] for e in read_metrics(run, "epoch")] == list(range(1, -(-7 // per_epoch) + 1))


def test_sanity_mode_fits_a_fixed_batch(synth, tmp_path, caplog):
    data, mae = synth
    run = tmp_path / "sanity"
    with caplog.at_level("INFO", logger="affectmae.training"):
        assert main(["finetune", "--data", str(data), "--encoder", str(mae), "-o", str(run), "--config",
                     "finetune_tiny", "batch_size=8", "tensorboard=false", "overfit_batches=1", "epochs=60", "max_steps=0",
                     "head_only_steps=0",
                     "lr=2e-3", "min_lr=2e-3", "warmup_epochs=0", "log_every_steps=1"]) == 0
    assert "sanity mode: fitting 8 fixed training frames (1 batches)" in caplog.text
    epochs = read_metrics(run, "epoch")
    assert len(epochs) == 60
    assert epochs[0]["train_loss"] > 1.0 and epochs[-1]["train_loss"] < 0.05  # a fixed batch is memorised
    with pytest.raises(AffectMAEError, match="command line: max_steps must be >= 0, got -1"):
        from affectmae.training.finetune import run_finetune

        run_finetune("finetune_tiny", ["max_steps=-1"], annotations=str(data), encoder=str(mae), out=str(tmp_path / "x"))


def test_head_only_steps_train_the_head_alone_first(synth, tmp_path):
    from affectmae.training.finetune import FinetuneConfig, _set_step_lr

    model = FinetuneModel(build_encoder("tiny", 32, depth=2), TASKS["expr"])
    opt = torch.optim.AdamW(layer_decay_groups(model, 0.05, 0.5), lr=1.0)
    cfg = FinetuneConfig(lr=1e-3, min_lr=0.0, head_only_steps=4)
    assert _set_step_lr(opt, cfg, 2, total_steps=14, warmup_steps=2) == 1e-3
    assert {g["lr"] for g in opt.param_groups if g["head"]} == {1e-3}
    assert {g["lr"] for g in opt.param_groups if not g["head"]} == {0.0}
    # then warm-up (2 steps) and cosine over the remaining 10 steps, with layer decay
    assert _set_step_lr(opt, cfg, 4, total_steps=14, warmup_steps=2) == pytest.approx(5e-4)
    assert [g["lr"] for g in opt.param_groups if g["head"]] == pytest.approx([5e-4, 5e-4])  # head level: scale 1
    assert max(g["lr"] for g in opt.param_groups if not g["head"]) == pytest.approx(2.5e-4)  # blocks.1: 0.5
    assert _set_step_lr(opt, cfg, 9, total_steps=14, warmup_steps=2) == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 3 / 8)))

    data, mae = synth
    run = tmp_path / "lpft"
    assert main(["finetune", "--data", str(data), "--encoder", str(mae), "-o", str(run), "--config", "finetune_tiny",
                 "batch_size=16", "tensorboard=false", "max_steps=3", "head_only_steps=3"]) == 0
    before, after = load_encoder(mae).state_dict(), load_encoder(run).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the encoder did not move
    assert [s["lr"] for s in read_metrics(run, "train")] == [3e-4] * 3  # finetune_tiny's lr, head only


def test_resume_of_a_run_folder_written_with_the_old_setting_names(synth, tmp_path, caplog):
    """A run folder from before the rename (config.yaml and state with ``data`` and ``out_dir``) resumes, with a
    warning, and its saved settings are still compared under the new names."""
    from affectmae.checkpoint import load_weights, save_weights
    from affectmae.training.finetune import run_finetune

    data, mae = synth
    run = tmp_path / "old"
    common = ["batch_size=16", "tensorboard=false", "max_steps=0", "head_only_steps=0"]
    run_finetune("finetune_tiny", [*common, "epochs=1"], annotations=str(data), encoder=str(mae), out=str(run))
    text = (run / "config.yaml").read_text()
    assert "annotations: " in text and "out: " in text
    old_config = tmp_path / "old_config.yaml"  # as written in the run folder before the rename
    old_config.write_text(text.replace("annotations: ", "data: ").replace("out: ", "out_dir: "))
    tensors, meta = load_weights(run / "last_state.safetensors")
    config = meta["config"]
    config["data"], config["out_dir"] = config.pop("annotations"), config.pop("out")
    save_weights(run / "last_state.safetensors", tensors, meta)
    (tmp_path / "elsewhere").symlink_to(data)  # the same data under another name: the saved `data` is compared
    with pytest.raises(CheckpointError, match=r"incompatible config \(annotations: saved '.*', now '.*elsewhere'\)"):
        run_finetune(old_config, ["epochs=2"], annotations=str(tmp_path / "elsewhere"), resume=True)
    with caplog.at_level("WARNING"):
        run_finetune(old_config, ["epochs=2"], resume=True)
    assert f"{old_config}: setting 'data' is now called 'annotations'" in caplog.messages
    assert [e["epoch"] for e in read_metrics(run, "epoch")] == [1, 2]


def test_cli_finetune_va_with_the_tiny_config_runs_end_to_end(synth, tmp_path, caplog):
    """finetune_tiny sets class_weights: true, which has no meaning for VA (a regression): it is skipped with a
    note, and the run scores the best epoch by mean CCC and writes a 2-output head."""
    data, mae = synth
    run = tmp_path / "va"
    with caplog.at_level("INFO", logger="affectmae.training.finetune"):
        assert main(["finetune", "--data", str(data), "--encoder", str(mae), "-o", str(run), "--task", "va",
                     "--config", "finetune_tiny", "batch_size=16", "tensorboard=false", "max_steps=4",
                     "head_only_steps=2", "warmup_steps=1"]) == 0
    assert "class weights: not used for va (a regression task)" in caplog.messages
    epochs = read_metrics(run, "epoch")
    assert [s["global_step"] for s in read_metrics(run, "train")] == [1, 2, 3, 4]
    record = json.loads((run / "best.json").read_text())
    assert set(record["metrics"]) >= {"score", "ccc_valence", "ccc_arousal"}
    assert record["score"] == pytest.approx((record["metrics"]["ccc_valence"] + record["metrics"]["ccc_arousal"]) / 2)
    assert record["score"] == max(e["val_score"] for e in epochs)
    head, head_meta = load_weights(run / "head_va.safetensors")
    assert head["weight"].shape == (2, 192) and head_meta["task"] == "va" and head_meta["num_outputs"] == 2
    assert read_metadata(run / "encoder.safetensors")["task"] == "va"


def _finetune_losses(run: Path) -> np.ndarray:
    rows = read_metrics(run, "train")
    assert [r["global_step"] for r in rows] == list(range(1, len(rows) + 1))
    return np.array([r["loss"] for r in rows])


def test_resume_after_kill_continues_the_loss_curve_exactly(synth, tmp_path, monkeypatch):
    """Killed during epoch 2 of 3, then resumed from the epoch-1 state: every step loss, the epoch lines and the
    final weights equal those of an uninterrupted run, which needs AdamW's moments back as well as the weights."""
    from affectmae.training import finetune as finetune_mod
    from affectmae.training.finetune import run_finetune

    data, mae = synth
    settings = ["batch_size=16", "tensorboard=false", "max_steps=0", "head_only_steps=0", "epochs=3",
                "warmup_epochs=1", "frame_stride=2", "lr=1e-3"]
    straight = run_finetune("finetune_tiny", settings, annotations=str(data), encoder=str(mae), out=str(tmp_path / "a"))
    real_check = finetune_mod.check_finite

    def kill_at_epoch1_step1(loss, epoch, step, run_dir=None):
        if (epoch, step) == (1, 1):
            raise KeyboardInterrupt
        real_check(loss, epoch, step, run_dir)

    monkeypatch.setattr(finetune_mod, "check_finite", kill_at_epoch1_step1)
    with pytest.raises(KeyboardInterrupt):
        run_finetune("finetune_tiny", settings, annotations=str(data), encoder=str(mae), out=str(tmp_path / "b"))
    monkeypatch.setattr(finetune_mod, "check_finite", real_check)
    per_epoch = len(_finetune_losses(straight)) // 3
    assert len(_finetune_losses(tmp_path / "b")) == per_epoch + 1  # one step of epoch 2 past the saved state
    resumed = run_finetune("finetune_tiny", settings, annotations=str(data), encoder=str(mae), out=str(tmp_path / "b"),
                           resume=True)
    np.testing.assert_allclose(_finetune_losses(resumed), _finetune_losses(straight), rtol=0, atol=1e-6)
    a, b = read_metrics(straight, "epoch"), read_metrics(resumed, "epoch")
    assert [e["epoch"] for e in b] == [1, 2, 3]
    np.testing.assert_allclose([e["val_score"] for e in b], [e["val_score"] for e in a], rtol=0, atol=1e-6)
    wa, wb = load_weights(straight / "last_state.safetensors")[0], load_weights(resumed / "last_state.safetensors")[0]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa if k.startswith(("model/", "optim/")))


def test_validation_keeps_the_best_epoch_and_its_weights(synth, tmp_path):
    """Fitting 8 fixed frames (sanity mode), the validation F1 changes from epoch to epoch. best.json names the
    epoch of the highest score, and the saved encoder + head score exactly that on the same frames, recomputed
    here from their logits (argmax, official macro F1)."""
    from affectmae.evaluation.metrics import evaluate
    from affectmae.training.finetune import FinetuneConfig, predict_frames
    from affectmae.training.finetune_data import frame_sets

    data, mae = synth
    run = tmp_path / "best"
    assert main(["finetune", "--data", str(data), "--encoder", str(mae), "-o", str(run), "--config", "finetune_tiny",
                 "batch_size=8", "tensorboard=false", "overfit_batches=1", "epochs=8", "max_steps=0",
                 "head_only_steps=0", "lr=2e-3", "min_lr=2e-3", "warmup_epochs=0"]) == 0
    scores = [e["val_score"] for e in read_metrics(run, "epoch")]
    assert len(set(scores)) > 2  # the epochs differ, so choosing one is tested
    record = json.loads((run / "best.json").read_text())
    assert (record["epoch"], record["score"]) == (int(np.argmax(scores)) + 1, max(scores))
    encoder = load_encoder(run)
    model = FinetuneModel(encoder, TASKS["expr"])
    model.head.load_state_dict(load_weights(run / "head_expr.safetensors")[0])
    cfg = FinetuneConfig(annotations=str(data), task="expr", batch_size=8, overfit_batches=1)
    _, _, fixed = frame_sets(cfg, TASKS["expr"], 32)
    logits, labels = predict_frames(model, fixed, 8, torch.device("cpu"))
    assert evaluate("expr", logits.argmax(1), labels)["score"] == pytest.approx(record["score"], abs=1e-9)
    assert read_metadata(run / "encoder.safetensors")["epoch"] == record["epoch"]


def test_fit_keeps_the_epoch_with_the_highest_score(tmp_path):
    from affectmae.training.engine import Stage, TrainingRun, fit

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scores, saved = iter([0.2, 0.7, 0.4, 0.7]), []
    run = TrainingRun("finetune", tmp_path / "run", 4, {}, tensorboard=False)
    fit(run, Stage(model, optimizer, lambda r: {"train_loss": 1.0}, evaluate=lambda r: {"score": next(scores)},
                   save_best=lambda r, m: saved.append(r.epoch)))
    assert saved == [1, 2]  # a later tie does not replace the best epoch
    assert json.loads((tmp_path / "run" / "best.json").read_text()) == {"epoch": 2, "score": 0.7,
                                                                        "metrics": {"score": 0.7}}
    assert [e["val_score"] for e in read_metrics(tmp_path / "run", "epoch")] == [0.2, 0.7, 0.4, 0.7]
