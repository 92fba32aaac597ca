"""The files of a run folder that hold model state, and the manager that writes the resumable one.

Every training stage (pretrain, finetune, train) writes the same layout::

    config.yaml              the merged config (affectmae.config.save_config)
    metrics.jsonl            one "epoch" line per epoch, "train" lines per logged step (metrics_log.py)
    tensorboard/             the same scalars for TensorBoard
    last_state.safetensors   resumable state: model, optimizer, RNG, counters, config (state.py)
    best.json                the best epoch and its validation metrics (stages that validate)

plus the stage's product: ``encoder.safetensors`` (pretrain: last epoch; finetune: best epoch, with
``head_<task>.safetensors``) or ``best.safetensors`` (train: the best temporal model).

A folder holding a run (its state or products) is refused unless ``--resume`` continues it or ``--overwrite``
replaces it (:data:`RUN_LAYOUT`, the rule of :func:`affectmae.io.check_output_dir`); nothing is written into
the folder before the run is accepted and restored (see :meth:`affectmae.training.engine.TrainingRun.begin`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from affectmae.checkpoint import BEST_FILE
from affectmae.io import OutputLayout, check_output_dir
from affectmae.models.vit import ENCODER_FILE
from affectmae.training.metrics_log import METRICS_FILE, TENSORBOARD_DIR
from affectmae.training.state import save_training_state

STATE_FILE = "last_state.safetensors"
BEST_RECORD_FILE = "best.json"
CONFIG_FILE = "config.yaml"


RUN_LAYOUT = OutputLayout(
    "training", finished=(STATE_FILE, BEST_FILE, BEST_RECORD_FILE, ENCODER_FILE),
    owned=(CONFIG_FILE, METRICS_FILE, TENSORBOARD_DIR, STATE_FILE, "state_*.safetensors", BEST_RECORD_FILE, BEST_FILE,
           ENCODER_FILE, "head_*.safetensors", "recon"),
    resumable=True, resume_marker=STATE_FILE)


def run_layout(stage: str) -> OutputLayout:
    """The run-folder layout as the output-folder rule of :mod:`affectmae.io` sees it, named after ``stage``."""
    return dataclasses.replace(RUN_LAYOUT, stage=stage)


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool = False, stage: str = "training") -> str:
    """The output-folder rule for a run folder (:func:`affectmae.io.check_output_dir`): a resumed run needs its
    state; a folder holding a run is refused unless ``resume`` or ``overwrite``. Writes nothing; returns the mode
    (``"new"``, ``"resume"`` or ``"overwrite"``)."""
    return check_output_dir(run_dir, run_layout(stage), resume=resume, overwrite=overwrite)


class CheckpointManager:
    """Writes the resumable state of a run.

    ``save(...)`` rewrites ``run_dir/last_state.safetensors`` atomically; with ``keep > 0`` and
    ``numbered=True`` it also writes ``state_<step>.safetensors`` and deletes all but the newest ``keep``.
    """

    def __init__(self, run_dir: str | Path, keep: int = 0, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.enabled = enabled

    @property
    def last(self) -> Path:
        return self.run_dir / STATE_FILE

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, counters: dict[str, Any],
             config: dict[str, Any], extra: dict[str, Any] | None = None, numbered: bool = False) -> None:
        if not self.enabled:
            return
        save_training_state(self.last, model, optimizer, counters, config, extra)
        if numbered and self.keep > 0:
            step = int(counters.get("global_step", 0))
            save_training_state(self.run_dir / f"state_{step:08d}.safetensors", model, optimizer, counters, config,
                                extra)
            self._rotate()

    def _rotate(self) -> None:
        numbered = sorted(p for p in self.run_dir.glob("state_*.safetensors")
                          if re.fullmatch(r"state_\d+\.safetensors", p.name))
        for old in numbered[: max(0, len(numbered) - self.keep)]:
            old.unlink()
