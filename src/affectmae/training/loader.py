"""DataLoader settings that follow the machine, and the pieces that let one loader serve every epoch.

    workers, pin = resolve_loader(num_workers=-1, pin_memory=None, device=device, local_processes=8)
    loader = make_loader(dataset, EpochBatches(sampler, lambda: run.epoch), workers, pin, prefetch_factor=4,
                         collate_fn=collate_augment)

- ``num_workers=-1`` (auto): on CUDA, the CPU cores this process may use (``os.sched_getaffinity``) divided by
  the processes of the node (torchrun's ``LOCAL_WORLD_SIZE``), minus one for the training loop, at most 16;
  on the CPU, where the model's own threads use the cores, ``cores // 2 - 1`` at most 4 (0 on 2 cores).
- ``pin_memory=None`` (auto): pinned host memory on CUDA, not elsewhere.
- Workers are persistent (started once per run, not per epoch) and prefetch ``prefetch_factor`` batches each.
  :class:`EpochBatches` tags every index with the epoch the sampler is in, so a worker that outlives an epoch
  still augments with the right per-sample seed (datasets read ``(epoch, index)`` pairs).

The resolved settings are what the stages write into ``config.yaml`` (``num_workers``, ``pin_memory``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

MAX_WORKERS_CUDA = 16
MAX_WORKERS_CPU = 4


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_loader(num_workers: int, pin_memory: bool | None, device: torch.device,
                   local_processes: int | None = None) -> tuple[int, bool]:
    """(workers, pin_memory) for ``num_workers`` (-1: auto) and ``pin_memory`` (None: auto) on ``device``."""
    if num_workers < 0:
        procs = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        per_process = max(1, available_cores() // max(1, procs))
        if device.type == "cuda":
            num_workers = max(1, min(MAX_WORKERS_CUDA, per_process - 1))
        else:
            num_workers = max(0, min(MAX_WORKERS_CPU, per_process // 2 - 1))
    pin = device.type == "cuda" if pin_memory is None else bool(pin_memory and device.type == "cuda")
    return num_workers, pin


class EpochBatches(Sampler):
    """A batch sampler's lists of indices, each index paired with the current epoch: ``[(epoch, i), ...]``."""

    def __init__(self, batch_sampler: Any, epoch: Callable[[], int]):
        self.batch_sampler, self.epoch = batch_sampler, epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch()
        for batch in self.batch_sampler:
            yield [(epoch, i) for i in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler)


def make_loader(dataset: Dataset, batch_sampler: Any, num_workers: int, pin_memory: bool, prefetch_factor: int,
                collate_fn: Callable) -> DataLoader:
    """One DataLoader for the whole run: persistent workers and prefetching when ``num_workers`` > 0."""
    extra: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if num_workers else {}
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, pin_memory=pin_memory,
                      collate_fn=collate_fn, **extra)
