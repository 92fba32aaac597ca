"""The shared foundations: config layering, atomic safetensors checkpoints, resumable state, LR schedule, CLI errors."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from typing import ClassVar

import numpy as np
import pytest
import torch

from affectmae.checkpoint import load_state_strict, load_weights, read_metadata, save_weights
from affectmae.cli import main
from affectmae.config import load_config, save_config
from affectmae.errors import AffectMAEError, CheckpointError, InputFormatError
from affectmae.io import atomic_path
from affectmae.tasks import TASKS, get_task
from affectmae.training.optim import make_adamw, param_groups_weight_decay, set_lr, warmup_cosine_lr
from affectmae.training.state import load_training_state, save_training_state


@dataclasses.dataclass
class _Inner:
    depth: int = 2
    dims: tuple[int, ...] = (8, 16)


@dataclasses.dataclass
class _Cfg:
    lr: float = 1e-3
    epochs: int = 3
    name: str = "x"
    amp: bool = False
    data: list[str] = dataclasses.field(default_factory=list)
    resume_from: str | None = None
    model: _Inner = dataclasses.field(default_factory=_Inner)


def test_config_layers_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 5.0e-4\nepochs: 10\nmodel:\n  depth: 4\n")
    cfg = load_config(_Cfg, path, ["epochs=7", "amp=true", "model.dims=4,5,6", "data=a,b", "resume_from=none"])
    assert cfg.lr == 5e-4 and cfg.epochs == 7 and cfg.amp is True
    assert cfg.model == _Inner(depth=4, dims=(4, 5, 6))
    assert cfg.data == ["a", "b"] and cfg.resume_from is None
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(_Cfg, tmp_path / "run" / "config.yaml") == cfg


def test_config_errors_name_the_key_and_file(tmp_path):
    with pytest.raises(AffectMAEError, match=r"unknown setting 'lrr' for _Cfg"):
        load_config(_Cfg, None, ["lrr=1"])
    with pytest.raises(AffectMAEError, match=r"epochs: expected int, got 'ten'"):
        load_config(_Cfg, None, ["epochs=ten"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1\nepochs: [1,\n")
    with pytest.raises(InputFormatError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(_Cfg, bad)
    with pytest.raises(AffectMAEError, match="not of the form key=value"):
        load_config(_Cfg, None, ["epochs"])


def test_save_weights_roundtrip_and_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)}
    save_weights(path, tensors, {"arch": {"size": "tiny"}})
    loaded, meta = load_weights(path)
    assert torch.equal(loaded["a"], tensors["a"]) and loaded["b"].dtype == torch.float16
    assert meta["arch"] == {"size": "tiny"} and meta["format_version"] == 1
    assert read_metadata(path)["arch"]["size"] == "tiny"
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left behind


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, {"a": torch.zeros(2)})
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_write_errors_name_the_file_and_other_os_errors_pass_through(tmp_path):
    import errno
    import os

    from affectmae.io import OutputWriteError, writing

    path = tmp_path / "out.csv"
    with pytest.raises(OutputWriteError) as info:
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(info.value) == f"cannot write {path}: No space left on device; free some space and run again"
    assert list(tmp_path.iterdir()) == []
    other = tmp_path / "sub" / "input.txt"  # an input being read inside the block is not "cannot write"
    with pytest.raises(PermissionError):
        with writing(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(other))
    with pytest.raises(FileNotFoundError):  # not a disk problem: unchanged
        with writing(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))


@pytest.mark.parametrize("resume, overwrite, holds, expected", [
    (False, False, False, "new"), (False, True, True, "overwrite"), (True, False, True, "resume"),
    (False, False, True, "already holds a run; pass --resume to continue it or --overwrite to replace it"),
    (True, True, True, "--resume continues .* and --overwrite replaces it; pass one"),
    (True, False, False, "--resume: no last_state.safetensors in"),
])
def test_one_rule_for_output_folders(tmp_path, resume, overwrite, holds, expected):
    from affectmae.training.checkpoints import check_run_dir

    run = tmp_path / "run"
    run.mkdir()
    if holds:
        (run / "last_state.safetensors").write_bytes(b"state")
    before = sorted(run.iterdir())
    if expected in ("new", "overwrite", "resume"):
        assert check_run_dir(run, resume, overwrite, "train") == expected
    else:
        with pytest.raises(AffectMAEError, match=expected):
            check_run_dir(run, resume, overwrite, "train")
    assert sorted(run.iterdir()) == before  # the check never writes
    (tmp_path / "file").write_text("x")
    with pytest.raises(AffectMAEError, match="file: exists and is not a folder; train -o needs a folder"):
        check_run_dir(tmp_path / "file", resume, overwrite, "train")


def test_corrupt_and_newer_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: not a readable safetensors file"):
        load_weights(bad)
    newer = tmp_path / "newer.safetensors"
    save_weights(newer, {"a": torch.zeros(1)}, {"format_version": 99})
    with pytest.raises(CheckpointError, match="written by a newer affectmae"):
        load_weights(newer)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_weights(tmp_path / "missing.safetensors")


def test_load_state_strict_lists_mismatches():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.weight"] = torch.zeros(5, 3)
    state.pop("1.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_state_strict(model, state, "ck.safetensors")
    msg = str(err.value)
    assert "missing keys: 1.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "0.weight: checkpoint (5, 3) vs model (4, 3)" in msg


def _train_steps(model, opt, n, seed_offset=0):
    losses = []
    for _ in range(n):
        x = torch.randn(8, 3)
        noise = float(np.random.rand()) + random.random()
        loss = (model(x) ** 2).mean() + 0 * noise
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item() + noise)
    return losses


def test_training_state_resume_is_exact(tmp_path):
    def fresh():
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        m = torch.nn.Linear(3, 2)
        return m, torch.optim.AdamW(param_groups_weight_decay(m, 0.05), lr=1e-2, betas=(0.9, 0.95))

    m, opt = fresh()
    straight = _train_steps(m, opt, 6)

    m, opt = fresh()
    first = _train_steps(m, opt, 3)
    save_training_state(tmp_path / "s.safetensors", m, opt, {"step": 3}, {"size": "tiny", "batch": 8})
    _train_steps(m, opt, 2)  # work that is lost when the run is killed
    m2, opt2 = fresh()
    meta = load_training_state(tmp_path / "s.safetensors", m2, opt2, {"size": "tiny", "batch": 8}, ("size", "batch"))
    assert meta["counters"] == {"step": 3}
    resumed = first + _train_steps(m2, opt2, 3)
    assert resumed == pytest.approx(straight, abs=1e-7)


def test_resume_with_incompatible_config_is_refused(tmp_path):
    m = torch.nn.Linear(3, 2)
    save_training_state(tmp_path / "s.safetensors", m, None, {"epoch": 1}, {"size": "tiny", "batch": 8})
    with pytest.raises(CheckpointError, match=r"incompatible config \(batch: saved 8, now 16\)"):
        load_training_state(tmp_path / "s.safetensors", m, None, {"size": "tiny", "batch": 16}, ("size", "batch"))
    # a run saved before a setting was renamed: its old name is compared under the new one
    save_training_state(tmp_path / "old.safetensors", m, None, {"epoch": 1}, {"data": "/a", "batch": 8})
    with pytest.raises(CheckpointError, match=r"incompatible config \(annotations: saved '/a', now '/b'\)"):
        load_training_state(tmp_path / "old.safetensors", m, None, {"annotations": "/b", "batch": 8},
                            ("annotations", "batch"), renamed={"data": "annotations"})
    load_training_state(tmp_path / "old.safetensors", m, None, {"annotations": "/a", "batch": 8},
                        ("annotations", "batch"), renamed={"data": "annotations"})


def test_param_groups_and_schedule():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    groups = param_groups_weight_decay(model, 0.05)
    assert [len(g["params"]) for g in groups] == [3, 1]  # bias, ln.weight, ln.bias | linear weight
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.05
    assert warmup_cosine_lr(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert warmup_cosine_lr(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine_lr(55, 100, 10, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine_lr(100, 100, 10, 1.0, min_lr=0.01) == pytest.approx(0.01)
    plain = make_adamw(groups, lr=1.0, fused=False)  # `train`: torch's default update, as before the factory
    assert plain.state_dict()["param_groups"] == torch.optim.AdamW(groups, lr=1.0).state_dict()["param_groups"]
    opt = torch.optim.AdamW(groups, lr=1.0)
    opt.param_groups[0]["lr_scale"] = 0.5
    set_lr(opt, 2e-3)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 2e-3]


def test_task_table():
    assert [TASKS[t].num_outputs for t in ("va", "expr", "au")] == [2, 8, 12]
    assert get_task("EXPR").label_width == 1 and get_task("au").label_width == 12
    with pytest.raises(AffectMAEError, match="unknown task 'pose'"):
        get_task("pose")


def test_cli_without_command_shows_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "usage: affectmae" in capsys.readouterr().err


def test_cli_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == "affectmae 0.1.0"


def test_renamed_setting_still_loads_with_a_warning(tmp_path, caplog):
    @dataclasses.dataclass
    class Cfg:
        RENAMED: ClassVar[dict[str, str]] = {"out_dir": "out"}
        out: str = ""
        lr: float = 0.1

    yaml_file = tmp_path / "old.yaml"
    yaml_file.write_text("out_dir: runs/a\nlr: 0.5\n")
    with caplog.at_level(logging.WARNING, logger="affectmae.config"):
        cfg = load_config(Cfg, yaml_file, ["lr=0.25"])
    assert cfg == Cfg(out="runs/a", lr=0.25)
    assert caplog.messages == [f"{yaml_file}: setting 'out_dir' is now called 'out'"]
    with pytest.raises(AffectMAEError, match="unknown setting 'outdir'"):
        load_config(Cfg, None, ["outdir=x"])
