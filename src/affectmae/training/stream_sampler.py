"""Per-rank sharding and shuffling of a chunked stream (datasets/streaming.py) across ranks and nodes.

    sampler = StreamBatchSampler(chunk_sizes, global_batch, rank, world_size, accum_steps, seed)

Every epoch the chunks are shuffled by ``(seed, epoch)`` and dealt to the ranks in turn; each rank shuffles the
items of its own chunks by ``(seed, epoch, rank)``. So in an epoch a rank reads only its own chunks (what
streaming from object storage needs), the ranks' items are disjoint, and the order is the same on every run.
Each rank takes the same number of items every epoch: the sum of the ``len(chunks) // world_size`` smallest
chunks (the rest of its chunks waits for another epoch). Steps, gradient accumulation and resume are those of
:class:`~affectmae.training.distributed.GlobalBatchSampler`, over an epoch order in which rank ``r``'s slice of
every micro-batch comes from rank ``r``'s items.
"""

from __future__ import annotations

import numpy as np
import torch

from affectmae.errors import AffectMAEError
from affectmae.training.distributed import GlobalBatchSampler
from affectmae.training.seeds import step_seed


class StreamBatchSampler(GlobalBatchSampler):
    """This rank's micro-batches (lists of item indices) of a stream of chunks ``chunk_sizes`` (the module doc)."""

    def __init__(self, chunk_sizes: list[int], global_batch: int, rank: int = 0, world_size: int = 1,
                 accum_steps: int = 1, seed: int = 0):
        if len(chunk_sizes) < world_size:
            raise AffectMAEError(f"{len(chunk_sizes)} chunks for {world_size} processes: each needs at least one; "
                                 "write the stream with a smaller chunk size")
        self.chunk_sizes = np.asarray(chunk_sizes, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.chunk_sizes)[:-1]]).astype(np.int64)
        self.per_rank = int(np.sort(self.chunk_sizes)[: len(chunk_sizes) // world_size].sum())
        super().__init__(self.per_rank * world_size, global_batch, rank, world_size, accum_steps, seed=seed,
                         shuffle=True, drop_last=True)

    def rank_items(self, epoch: int) -> np.ndarray:
        """(world_size, per_rank) int64: every rank's items in ``epoch``, in the order it reads them."""
        chunks = np.random.default_rng(step_seed(self.seed, epoch, 1)).permutation(len(self.chunk_sizes))
        out = []
        for r in range(self.world):
            mine = chunks[r::self.world]
            items = np.concatenate([np.arange(self.starts[c], self.starts[c] + self.chunk_sizes[c]) for c in mine])
            out.append(np.random.default_rng(step_seed(self.seed, epoch, 2, r)).permutation(items)[: self.per_rank])
        return np.stack(out)

    def _order(self) -> torch.Tensor:
        """The epoch's global order: position (step, micro, rank, k) holds rank ``rank``'s next item."""
        share = self.global_batch // (self.world * self.accum)
        ranks = self.rank_items(self.epoch)
        usable = ranks.shape[1] // share * share
        per = ranks[:, :usable].reshape(self.world, usable // share, share)
        return torch.from_numpy(np.ascontiguousarray(per.transpose(1, 0, 2)).reshape(-1))
