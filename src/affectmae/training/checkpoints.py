"""The files of a run folder that hold model state, and the manager that writes the resumable one.

Every training stage (pretrain, finetune, train) writes the same layout::

    config.yaml              the merged config (affectmae.config.save_config)
    metrics.jsonl            one "epoch" line per epoch, "train" lines per logged step (metrics_log.py)
    tensorboard/             the same scalars for TensorBoard
    last_state.safetensors   resumable state: model, optimizer, RNG, counters, config (state.py)
    best.json                the best epoch and its validation metrics (stages that validate)

plus the stage's product: ``encoder.safetensors`` (pretrain: last epoch; finetune: best epoch, with
``head_<task>.safetensors``) or ``best.safetensors`` (train: the best temporal model).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from affectmae.errors import AffectMAEError
from affectmae.training.state import save_training_state

STATE_FILE = "last_state.safetensors"
BEST_FILE = "best.safetensors"
BEST_RECORD_FILE = "best.json"
CONFIG_FILE = "config.yaml"


def check_run_dir(run_dir: Path, resume: bool, refuse_existing: bool = True) -> None:
    """A resumed run needs its state; a new one must not overwrite another run (unless ``refuse_existing``
    is False: ``train`` has always rewritten its folder)."""
    state = run_dir / STATE_FILE
    if resume and not state.is_file():
        raise AffectMAEError(f"--resume: no {state.name} in {run_dir}")
    if refuse_existing and not resume and state.is_file():
        raise AffectMAEError(f"{run_dir} already holds a run; pass --resume to continue it or choose another -o folder")


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
