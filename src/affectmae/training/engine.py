"""Loop helpers shared by every training stage (pretrain, finetune, temporal training).

- :func:`progress`: a tqdm bar, shown on the main process only.
- :class:`ScalarLogger`: TensorBoard scalars plus a ``metrics.jsonl`` line per record (main process only);
  on resume, :meth:`ScalarLogger.truncate_after` drops records past the restored step so the curve in
  the file continues as if the run had never stopped.
- :func:`check_finite`: the NaN/inf guard; raises :class:`TrainingDivergedError` *before* the step is
  applied or any checkpoint is written, so the last good checkpoint stays as it was.
- :class:`CheckpointManager`: ``last_state.safetensors`` (resume) rewritten atomically, plus optional
  numbered copies of which only the newest ``keep`` are kept.
- :func:`step_seed`: device choice, bf16 autocast on GPUs that
  support it (never on CPU, where bf16 is many times slower), deterministic per-(seed, epoch, index) seeds.
- :func:`keep_freed_memory`: glibc malloc settings that stop a CPU training step from returning its
  activation buffers to the kernel and faulting them back in on the next step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from tqdm import tqdm

from affectmae.config import resolve_config  # noqa: F401  (re-exported until callers move)
from affectmae.errors import TrainingDivergedError
from affectmae.io import atomic_write_text
from affectmae.training.state import save_training_state

log = logging.getLogger(__name__)

STATE_FILE = "last_state.safetensors"


def progress(iterable: Iterable, total: int | None = None, desc: str = "", enabled: bool = True) -> tqdm:
    """tqdm progress bar over ``iterable`` (disabled on non-main processes or with ``enabled=False``);
    ``bar.set_postfix(loss=...)`` shows running values."""
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_malloc_tuned = False


def keep_freed_memory(device: torch.device | None = None) -> bool:
    """Keep freed heap memory in the process (glibc only; a no-op for a non-CPU ``device``, elsewhere, or
    with AFFECTMAE_MALLOC_TUNING=0).

    PyTorch's CPU allocator hands every tensor to malloc. With glibc's defaults, buffers of a few MB
    (the activations of a ViT step) are ``mmap``-ed and returned to the kernel when freed, so each step
    page-faults them in again. Serving allocations up to 32 MB from the heap and trimming the heap only
    beyond 1 GB of free memory made the ViT-B MAE step of ``benchmarks/bench_pretrain.py`` 5-7 % faster
    on a 2-core AMD EPYC (timed with and without, docs/benchmarks.md). The price is that the resident size stays at its peak, which
    training reaches every step anyway; inference commands, whose memory must stay flat, do not call it.
    """
    global _malloc_tuned
    if device is not None and device.type != "cpu":
        return False
    if _malloc_tuned:
        return True
    if os.environ.get("AFFECTMAE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _malloc_tuned = bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
    log.debug("glibc malloc keeps freed memory: %s", _malloc_tuned)
    return _malloc_tuned


def make_adamw(param_groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where this torch supports it (about 2x faster updates on CPU and GPU)."""
    try:
        return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas))


def step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``parts`` (e.g. epoch, sample index)."""
    h = 1469598103934665603
    for value in (seed, *parts):
        h = ((h ^ (int(value) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 64)
    return h & 0x7FFFFFFFFFFFFFFF


def check_finite(loss: torch.Tensor | float, epoch: int, step: int, run_dir: str | Path | None = None) -> None:
    """Raise :class:`TrainingDivergedError` if ``loss`` is NaN or infinite."""
    value = float(loss)
    if not math.isfinite(value):
        where = f"; the last good checkpoint in {run_dir} is untouched" if run_dir is not None else ""
        raise TrainingDivergedError(
            f"loss became {value} at epoch {epoch}, step {step}{where}. Lower the learning rate, check the data, "
            "or resume from the last checkpoint with --resume"
        )


class ScalarLogger:
    """TensorBoard scalars under ``run_dir/tensorboard`` and JSON lines in ``run_dir/metrics.jsonl``.

    Only the main process writes (``enabled``). ``log(record, step)`` writes every numeric entry of
    ``record`` as a scalar named ``<prefix>/<key>``.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / "metrics.jsonl"
        self._writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

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
            log.info("metrics.jsonl: dropped %d records written after the resumed checkpoint", len(lines) - len(kept))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of ``run_dir/metrics.jsonl`` (optionally only those of one ``kind``)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]


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
            save_training_state(self.run_dir / f"state_{step:08d}.safetensors", model, optimizer, counters, config, extra)
            self._rotate()

    def _rotate(self) -> None:
        numbered = sorted(p for p in self.run_dir.glob("state_*.safetensors") if re.fullmatch(r"state_\d+\.safetensors", p.name))
        for old in numbered[: max(0, len(numbered) - self.keep)]:
            old.unlink()
