"""Progress bars: tqdm's bar on a terminal, plain log lines when stderr is a file (no carriage returns in logs)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import affectmae
from affectmae import progress as progress_mod
from affectmae.models.vit import build_encoder, save_encoder
from affectmae.progress import PlainProgress, progress_bar
from affectmae.synth.dataset import generate_affwild2


def test_plain_lines_every_interval_and_at_the_end_short_loops_silent(monkeypatch, caplog):
    monkeypatch.setattr(progress_mod, "stderr_is_terminal", lambda: False)
    monkeypatch.setenv("AFFECTMAE_PROGRESS_SECONDS", "0.05")
    with caplog.at_level(logging.INFO, logger="affectmae.progress"):
        bar = progress_bar(range(6), desc="train epoch 1/2", unit="step")
        assert isinstance(bar, PlainProgress)
        for i in bar:
            time.sleep(0.03)
            bar.set_postfix(loss=f"{1 / (i + 1):.3f}")  # no line of its own
        for _ in progress_bar(range(1000), desc="short"):
            pass
    lines = [r.getMessage() for r in caplog.records]
    assert all(re.fullmatch(r"train epoch 1/2: \d/6 step \(\d+%\), 00:00 elapsed, [\d.]+step/s(, loss=[\d.]+)?", m)
               for m in lines), lines
    assert 2 <= len(lines) <= 4 and lines[-1].startswith("train epoch 1/2: 6/6 step (100%)")
    assert len({m.split(",")[0] for m in lines}) == len(lines)  # never the same count twice


def test_slow_loops_log_single_spaced_lines(monkeypatch, caplog):
    """Below 10 steps/s tqdm pads the rate ("  6.67step/s"); the plain lines keep one space between fields."""
    monkeypatch.setattr(progress_mod, "stderr_is_terminal", lambda: False)
    monkeypatch.setenv("AFFECTMAE_PROGRESS_SECONDS", "0.05")
    with caplog.at_level(logging.INFO, logger="affectmae.progress"):
        for _ in progress_bar(range(3), desc="slow", unit="step"):
            time.sleep(0.15)
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all(re.fullmatch(r"slow: \d/3 step \(\d+%\), 00:00 elapsed, \d\.\d\dstep/s", m) for m in lines), lines


def test_a_terminal_gets_tqdm_and_hidden_bars_write_nothing(monkeypatch, caplog):
    monkeypatch.setattr(progress_mod, "stderr_is_terminal", lambda: True)
    bar = progress_bar(range(3), desc="x")
    assert type(bar) is tqdm and not bar.disable
    bar.close()
    monkeypatch.setattr(progress_mod, "stderr_is_terminal", lambda: False)
    monkeypatch.setenv("AFFECTMAE_PROGRESS_SECONDS", "0")
    with caplog.at_level(logging.INFO, logger="affectmae.progress"):
        assert list(progress_bar(range(3), desc="other process", show=False)) == [0, 1, 2]
    assert caplog.records == []
    monkeypatch.setenv("AFFECTMAE_PROGRESS_SECONDS", "soon")
    assert progress_mod.progress_seconds() == 30.0


def test_a_stage_with_stderr_in_a_file_logs_plain_progress_lines(tmp_path):
    """`affectmae finetune 2> log`: no carriage return in the log, the epochs' progress as plain lines."""
    generate_affwild2(tmp_path / "aw2", videos=3, frames=40, faces=0, size=32)
    torch.manual_seed(0)
    save_encoder(build_encoder("tiny", 32, depth=1), tmp_path / "encoder.safetensors")
    # a line after every step (0 s): an epoch of 4 tiny steps can end within any positive interval, and a loop
    # that ends before its first line is due stays silent by design
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AFFECTMAE_PROGRESS_SECONDS": "0"}
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.run([sys.executable, "-m", "affectmae", "finetune", "--data", str(tmp_path / "aw2"),
                               "--encoder", str(tmp_path / "encoder.safetensors"), "-o", str(tmp_path / "run"),
                               "--config", "finetune_tiny", "batch_size=8", "tensorboard=false", "max_steps=0",
                               "head_only_steps=0", "epochs=2", "frame_stride=2"],
                              stdout=subprocess.DEVNULL, stderr=log, env=env, timeout=300)
    text = (tmp_path / "log").read_bytes().decode()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text and "\x1b" not in text
    for epoch in (1, 2):
        ends = re.findall(rf"INFO affectmae\.progress: finetune epoch {epoch}/2: (\d+)/(\d+) step \(100%\), "
                          r"[\d:]+ elapsed, [\d.]+step/s, loss=[\d.]+", text)
        assert len(ends) == 1 and ends[0][0] == ends[0][1], text[-3000:]
    assert re.search(r"INFO affectmae\.training\.engine: finetune epoch 2/2: train_loss", text)


def test_every_progress_bar_comes_from_the_helper():
    """No module of the package makes a tqdm bar itself."""
    root = Path(affectmae.__file__).parent
    direct = [str(p.relative_to(root)) for p in root.rglob("*.py") if "tqdm(" in p.read_text() and p.name != "progress.py"]
    assert direct == []
