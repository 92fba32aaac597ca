"""The metrics of a run: ``metrics.jsonl`` (one JSON line per record) and TensorBoard scalars.

Every record carries its ``kind``: ``epoch`` (one line per epoch, written by the shared loop of
:mod:`affectmae.training.engine`) or ``train`` (a training step, every ``log_every_steps``). On resume,
:meth:`ScalarLogger.truncate_after` drops records past the restored step, so the file continues as if the
run had never stopped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from affectmae.io import atomic_write_text

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class ScalarLogger:
    """TensorBoard scalars under ``run_dir/tensorboard`` and JSON lines in ``run_dir/metrics.jsonl``.

    Only the main process writes (``enabled``). ``log(record, step, kind)`` writes the record as one line
    and every numeric entry of it as a scalar named ``<kind>/<key>``.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / METRICS_FILE
        self._writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))

    def log(self, record: dict[str, Any], step: int, prefix: str = "train") -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"kind": prefix, "global_step": step, **record}) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def truncate_after(self, step: int) -> None:
        """Drop records with ``global_step > step`` (written after the checkpoint we resume from)."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("global_step", 0) <= step]
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))
            log.info("%s: dropped %d records written after the resumed checkpoint", METRICS_FILE,
                     len(lines) - len(kept))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of ``run_dir/metrics.jsonl`` (optionally only those of one ``kind``)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]
