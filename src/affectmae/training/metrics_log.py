"""The metrics of a run: ``metrics.jsonl`` (one JSON line per record) and TensorBoard scalars.

Every record carries its ``kind``: ``epoch`` (one line per epoch, written by the shared loop of
:mod:`affectmae.training.engine`) or ``train`` (a training step, every ``log_every_steps``). On resume,
:meth:`ScalarLogger.truncate_after` drops records past the restored step, so the file continues as if the
run had never stopped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from affectmae.io import atomic_write_text, writing

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class ScalarLogger:
    """TensorBoard scalars under ``run_dir/tensorboard`` and JSON lines in ``run_dir/metrics.jsonl``.

    Only the main process writes (``enabled``). ``log(record, step, kind)`` writes the record as one line
    and every numeric entry of it as a scalar named ``<kind>/<key>``. Nothing is created before the first
    record (a run refused at its start leaves the folder as it was). A line that cannot be written whole
    (disk full) is taken back, so the file never ends in half a record.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / METRICS_FILE
        self.tensorboard = enabled and tensorboard
        self._writer = None

    def _tensorboard(self):
        if self._writer is None and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            with writing(self.run_dir / TENSORBOARD_DIR):
                self._writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))
        return self._writer

    def log(self, record: dict[str, Any], step: int, prefix: str = "train") -> None:
        if not self.enabled:
            return
        append_line(self.path, json.dumps({"kind": prefix, "global_step": step, **record}) + "\n")
        if self._tensorboard() is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    with writing(self.run_dir / TENSORBOARD_DIR):
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


def append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` whole or not at all (a failed write is cut off again)."""
    data = memoryview(line.encode())
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of ``run_dir/metrics.jsonl`` (optionally only those of one ``kind``)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]
