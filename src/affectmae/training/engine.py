"""The epoch loop shared by every training stage (pretrain, finetune, temporal ``train``).

A stage is written as two parts, in the manner of a ``main_*`` / ``engine.train_one_epoch`` split:

- a *setup* function (in the stage's module) checks the run folder, builds data, model and optimizer,
  creates a :class:`TrainingRun` and restores it on ``--resume`` (:meth:`TrainingRun.restore`);
- a :class:`Stage`: ``train_one_epoch(run) -> stats`` (one epoch of optimizer steps, a progress bar from
  :meth:`TrainingRun.progress`, the NaN guard :func:`check_finite` before each step), and, where the stage
  validates, ``evaluate(run) -> metrics`` with a ``score`` (higher is better) and ``save_best``.

:func:`fit` then runs the epochs: after each one it validates (main process), keeps the best epoch
(``best.json`` and the stage's best products), writes one ``epoch`` line to ``metrics.jsonl`` (and
TensorBoard), rewrites ``last_state.safetensors`` and lets the stage write its per-epoch products. The run
folder layout is described in :mod:`affectmae.training.checkpoints`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import yaml
from tqdm import tqdm

from affectmae.errors import TrainingDivergedError
from affectmae.io import atomic_write_text, prepare_output_dir
from affectmae.progress import progress_bar
from affectmae.training.checkpoints import (
    BEST_RECORD_FILE,
    CONFIG_FILE,
    CheckpointManager,
    check_run_dir,
    run_layout,
)
from affectmae.training.distributed import agree_cpu_gemm_backend
from affectmae.training.metrics_log import ScalarLogger, read_metrics
from affectmae.training.state import load_training_state

log = logging.getLogger(__name__)


def progress(iterable: Iterable, total: int | None = None, desc: str = "", enabled: bool | None = True,
             unit: str = "step") -> tqdm:
    """Progress bar over ``iterable`` (:func:`affectmae.progress.progress_bar`: tqdm's bar on a terminal, a plain
    log line every ``AFFECTMAE_PROGRESS_SECONDS`` elsewhere); hidden with ``enabled=False`` (processes other than
    the main one); ``bar.set_postfix(loss=...)`` shows running values."""
    return progress_bar(iterable, total=total, desc=desc, unit=unit, show=enabled is not False, dynamic_ncols=True,
                        leave=False)


def check_finite(loss: torch.Tensor | float, epoch: int, step: int, run_dir: str | Path | None = None) -> None:
    """The NaN guard: raise :class:`TrainingDivergedError` if ``loss`` is NaN or infinite. Stages call it
    before the optimizer step, so neither the step nor any checkpoint is written and the last good
    checkpoint stays as it was."""
    value = float(loss)
    if not math.isfinite(value):
        where = f"; the last good checkpoint in {run_dir} is untouched" if run_dir is not None else ""
        raise TrainingDivergedError(
            f"loss became {value} at epoch {epoch}, step {step}{where}. Lower the learning rate, check the data, "
            "or resume from the last checkpoint with --resume"
        )


class TrainingRun:
    """One run folder while it trains: counters, the metrics logger, the checkpoint manager, the best epoch.

    ``epoch`` counts finished epochs (the one being trained is ``epoch``, 0-based); ``global_step`` counts
    optimizer steps; ``step_in_epoch`` the steps of the current epoch (a mid-epoch checkpoint resumes there);
    ``loss_sum`` / ``loss_steps`` the running sum of the current epoch's step losses (:meth:`add_step_loss`),
    kept in the state so a resumed epoch's mean covers the steps before the interruption too.
    """

    def __init__(self, name: str, run_dir: str | Path, epochs: int, config: dict[str, Any], *, is_main: bool = True,
                 tensorboard: bool = True, keep_checkpoints: int = 0, show_progress: bool | None = True):
        self.name, self.run_dir, self.epochs, self.config = name, Path(run_dir), epochs, config
        self.is_main = is_main
        self.show_progress = show_progress if is_main else False
        self.logger = ScalarLogger(self.run_dir, enabled=is_main, tensorboard=tensorboard)
        self.checkpoints = CheckpointManager(self.run_dir, keep=keep_checkpoints, enabled=is_main)
        self.epoch = self.step_in_epoch = self.global_step = self.loss_steps = 0
        self.loss_sum = 0.0
        self.resumed = False
        self.best: dict[str, Any] = {"epoch": 0, "score": -math.inf}

    def counters(self) -> dict[str, int | float]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "epoch_loss_sum": self.loss_sum, "epoch_loss_steps": self.loss_steps}

    def add_step_loss(self, value: float) -> None:
        """Count one optimizer step's loss towards the epoch's mean (:meth:`epoch_loss`)."""
        self.loss_sum += value
        self.loss_steps += 1

    def epoch_loss(self) -> float:
        """The mean step loss of the current epoch, the steps before a resume included."""
        return self.loss_sum / max(1, self.loss_steps)

    def begin(self) -> None:
        """Start writing into the run folder (main process; :func:`fit` calls it): create it, remove temporary
        files of a killed run and write ``config.yaml``. A run that does not resume first clears the run files
        in the folder: those of the run it replaces (``overwrite``), or of one that stopped before its first
        state (the folder check let it through: nothing finished there), so no old curve or TensorBoard event
        stays beside the new ones."""
        if not self.is_main:
            return
        if not self.resumed:  # the stage checked already; a run built without that check must not wipe one
            check_run_dir(self.run_dir, False, bool(self.config.get("overwrite")), self.name)
        prepare_output_dir(self.run_dir, run_layout(self.name), "resume" if self.resumed else "overwrite")
        atomic_write_text(self.run_dir / CONFIG_FILE,
                          yaml.safe_dump({**self.config, "resume": self.resumed}, sort_keys=False))

    def progress(self, iterable: Iterable, total: int | None = None) -> tqdm:
        return progress(iterable, total=total, desc=f"{self.name} epoch {self.epoch + 1}/{self.epochs}",
                        enabled=self.show_progress)

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, compare_keys: tuple[str, ...],
                renamed: dict[str, str] | None = None) -> dict[str, Any]:
        """Load ``last_state.safetensors`` into model, optimizer and RNG; continue the counters, the best epoch
        and ``metrics.jsonl`` from there. Returns the state's metadata."""
        meta = load_training_state(self.checkpoints.last, model, optimizer, config=self.config,
                                   compare_keys=compare_keys, renamed=renamed)
        c, extra = meta["counters"], meta.get("extra") or {}
        self.resumed = True
        self.epoch, self.step_in_epoch = c["epoch"], c.get("step_in_epoch", 0)
        self.loss_sum, self.loss_steps = float(c.get("epoch_loss_sum", 0.0)), int(c.get("epoch_loss_steps", 0))
        agree_cpu_gemm_backend(meta.get("cpu_gemm"), str(self.checkpoints.last))  # every process: process 0's
        self.global_step = c.get("global_step", c.get("step", 0))  # `train` states before the shared loop: "step"
        if "best" in extra:
            self.best = extra["best"]
        elif "best_metrics" in extra:  # a `train` state written before the shared loop
            self.best = {"epoch": c.get("best_epoch", 0), "score": c.get("best_score", -math.inf),
                         "metrics": extra["best_metrics"]}
            self._log_old_history(extra.get("history", []))
        self.logger.truncate_after(self.global_step)
        log.info("resumed %s at epoch %d, step %d (global step %d)", self.checkpoints.last, self.epoch,
                 self.step_in_epoch, self.global_step)
        return meta

    def _log_old_history(self, history: list[dict]) -> None:
        """Epoch lines for the history kept inside an older `train` state (it wrote no metrics.jsonl)."""
        if read_metrics(self.run_dir, "epoch") or not history:
            return
        per_epoch = self.global_step / max(1, self.epoch)
        for h in history:
            self.logger.log({"epoch": h["epoch"], "train_loss": h["train_loss"], "val_score": h["val"]["score"],
                             "val": h["val"]}, round(h["epoch"] * per_epoch), prefix="epoch")

    def epoch_records(self) -> list[dict[str, Any]]:
        """The ``epoch`` lines of ``metrics.jsonl`` so far."""
        return read_metrics(self.run_dir, "epoch")


def _val_score(metrics: dict) -> dict:
    return {"val_score": metrics["score"]}


@dataclass
class Stage:
    """One training stage as :func:`fit` sees it.

    ``train_one_epoch(run)`` trains epoch ``run.epoch`` (advancing ``run.global_step``) and returns its stats;
    ``evaluate(run)`` (main process) returns validation metrics with a ``score``; ``save_best(run, metrics)``
    writes the stage's products of a new best epoch; ``val_record(metrics)`` the entries of the epoch line;
    ``save_products(run, record)`` what the stage writes after every epoch's state (``record``: the epoch line); ``barrier`` waits for every process.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_one_epoch: Callable[[TrainingRun], dict[str, Any]]
    evaluate: Callable[[TrainingRun], dict[str, Any]] | None = None
    save_best: Callable[[TrainingRun, dict[str, Any]], None] | None = None
    val_record: Callable[[dict[str, Any]], dict[str, Any]] = _val_score
    save_products: Callable[[TrainingRun, dict[str, Any]], None] | None = None
    barrier: Callable[[], None] | None = None
    numbered_states: bool = False  # the epoch-end state also as state_<step>.safetensors (keep_checkpoints)


def fit(run: TrainingRun, stage: Stage) -> None:
    """Train from ``run.epoch`` to ``run.epochs`` (see the module doc); closes the logger at the end or on error."""
    try:
        run.begin()
        while run.epoch < run.epochs:
            t0 = time.perf_counter()
            stats = stage.train_one_epoch(run)
            run.epoch += 1
            run.step_in_epoch = run.loss_steps = 0
            run.loss_sum = 0.0
            if run.is_main:
                _end_epoch(run, stage, stats, t0)
            if stage.barrier is not None:
                stage.barrier()
    finally:
        run.logger.close()


def _end_epoch(run: TrainingRun, stage: Stage, stats: dict[str, Any], t0: float) -> None:
    metrics = stage.evaluate(run) if stage.evaluate is not None else None
    record = {"epoch": run.epoch, **stats, **(stage.val_record(metrics) if metrics is not None else {}),
              "seconds": time.perf_counter() - t0}
    if metrics is not None and metrics["score"] > run.best["score"]:
        run.best = {"epoch": run.epoch, "score": float(metrics["score"]), "metrics": metrics}
        if stage.save_best is not None:
            stage.save_best(run, metrics)
    run.logger.log(record, run.global_step, prefix="epoch")
    log.info("%s epoch %d/%d: %s", run.name, run.epoch, run.epochs,
             ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch" and _is_number(v)))
    extra = {"best": run.best} if metrics is not None else None
    run.checkpoints.save(stage.model, stage.optimizer, run.counters(), run.config, extra=extra,
                         numbered=stage.numbered_states)
    if metrics is not None:
        atomic_write_text(run.run_dir / BEST_RECORD_FILE, json.dumps(run.best, indent=2) + "\n")
    if stage.save_products is not None:
        stage.save_products(run, record)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
