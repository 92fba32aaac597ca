"""Multi-process training with PyTorch DDP, launched by ``torchrun`` (one process per GPU, or per CPU
worker with gloo).

``torchrun --nproc_per_node 4 -m affectmae pretrain ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them (no variables -> one process).
Backend: nccl on GPUs, gloo on CPU. Only the main process (rank 0) writes files, and only it chooses the
fp32 CPU linear backend (:func:`agree_cpu_gemm_backend`): every process computes with its choice.

:class:`GlobalBatchSampler` splits each *global* batch (the optimizer-step batch) into micro-batches
(gradient accumulation) and then across ranks, from one permutation seeded by (seed, epoch). Every
sample therefore lands in the same optimizer step whatever the number of processes or accumulation
steps, which makes N processes follow the same loss curve as 1 process with the same global batch, and
lets a resumed run restart mid-epoch at an exact step. (``torch.utils.data.DistributedSampler`` gives
each rank a strided slice of the epoch, which does not have these two properties.)
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from affectmae.device import select_device
from affectmae.errors import AffectMAEError
from affectmae.training.seeds import step_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, 0, select_device(device))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = select_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise AffectMAEError(f"WORLD_SIZE={world} but {var} is not set; launch with torchrun")
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    log.info("process %d of %d on %s (%s)", rank, world, dev, backend)
    agree_cpu_gemm_backend()
    return DistInfo(rank, world, local_rank, dev)


def agree_cpu_gemm_backend(recorded: str | None = None, source: str = "") -> str:
    """The fp32 CPU linear backend of every process (:mod:`affectmae.models.fast_linear`): process 0 decides,
    taking ``recorded`` (the backend stored with the artifact ``source``, e.g. the state a run resumes from)
    where given, else from its environment and CPU, and broadcasts it; the other processes take it and decide
    nothing themselves, so the choice is made and logged once. Without a process group: this process's own
    decision. In a process group every process must call it (at start, and on resume)."""
    from affectmae.models.fast_linear import adopt_cpu_gemm_backend, take_cpu_gemm_backend

    group = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    main = not group or dist.get_rank() == 0
    choice = adopt_cpu_gemm_backend(recorded, source) if main else None
    if not group:
        return choice
    shared = [choice]
    dist.broadcast_object_list(shared, src=0)
    if main:
        log.info("CPU fp32 linear backend of all %d processes: %s", dist.get_world_size(), choice)
        return choice
    return take_cpu_gemm_backend(shared[0], "process 0 of the run")


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[DistInfo]:
    """:func:`init_distributed` for the duration of a stage; the process group is always torn down."""
    info = init_distributed(device)
    try:
        yield info
    finally:
        cleanup_distributed()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``value`` over all processes (a detached copy; identity with one process)."""
    out = value.detach().clone()
    if info.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= info.world_size
    return out


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    out = value.detach().clone()
    if info.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class GlobalBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of dataset indices) for one epoch.

    Optimizer step ``s`` uses ``perm[s*B:(s+1)*B]`` (B = ``global_batch``); it is cut into
    ``accum_steps`` micro-batches, each cut into ``world_size`` equal slices, and rank ``r`` gets slice
    ``r``. ``set_epoch(epoch, start_step)`` picks the permutation and where to start (for resume).
    With ``drop_last=False`` a final short step is kept (its size rounded down to a multiple of
    ``world_size * accum_steps``, at least one sample per slice, by repeating samples from the start).
    """

    def __init__(self, n: int, global_batch: int, rank: int = 0, world_size: int = 1, accum_steps: int = 1,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True):
        parts = world_size * accum_steps
        if global_batch % parts:
            raise AffectMAEError(
                f"batch_size {global_batch} must be divisible by processes x accum_steps = {world_size} x {accum_steps}"
            )
        if drop_last and n < global_batch:
            raise AffectMAEError(f"only {n} samples, fewer than one batch of {global_batch}; lower batch_size")
        self.n, self.global_batch, self.rank, self.world, self.accum = n, global_batch, rank, world_size, accum_steps
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.global_batch)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(step_seed(self.seed, self.epoch))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        perm = self._order()
        parts = self.world * self.accum
        for step in range(self.start_step, self.steps_per_epoch):
            chunk = perm[step * self.global_batch:(step + 1) * self.global_batch]
            if len(chunk) % parts:  # short final step: pad by wrapping around
                size = max(parts, len(chunk) // parts * parts) if len(chunk) >= parts else parts
                chunk = torch.cat([chunk, perm[: max(0, size - len(chunk))]])[:size]
            micro = len(chunk) // self.accum
            for a in range(self.accum):
                piece = chunk[a * micro:(a + 1) * micro]
                share = len(piece) // self.world
                yield piece[self.rank * share:(self.rank + 1) * share].tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum
