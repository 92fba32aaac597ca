"""Batches of frames grouped by video, for person-centred fine-tuning (``FinetuneConfig.person_center``).

Every optimizer step takes ``groups = batch_size // frames_per_video`` different videos and
``frames_per_video`` frames of each, so the mean feature of a video's frames in the batch is a reference
for that person. Per epoch, from a generator seeded by ``(seed, epoch)`` alone:

- the number of steps is that of :class:`~affectmae.training.distributed.GlobalBatchSampler` on the same
  frames (``ceil(N / batch_size)``), so an epoch holds about as many frames either way;
- each video gets ``ceil(n_v / frames_per_video)`` slots (in proportion to its frames), at most one per step;
  slots are added round-robin to videos with room when the total falls short of ``steps x groups`` (too few
  frames, or capped videos), and the last videos' slots are dropped when it exceeds it;
- a video's slots take consecutive runs of a fresh permutation of its frames, cycling through it again when
  the video has fewer frames than its slots need (a video shorter than ``frames_per_video`` repeats frames);
- the slots, listed video by video in a shuffled video order, are dealt to the steps in turn (slot ``j`` to
  step ``j mod steps``), so no step holds a video twice; the steps are then put in a shuffled order.

With several processes, rank ``r`` of ``W`` gets groups ``r*groups/W .. (r+1)*groups/W - 1`` of each step:
whole videos, disjoint across ranks, so each process centres over complete groups.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from affectmae.errors import AffectMAEError
from affectmae.training.seeds import step_seed


def video_ids(frames: Dataset) -> np.ndarray:
    """(N,) int64: a number per video (sorted names) for every item of ``frames``, an AffWild2Frames or a
    Subset of one (its ``frame_id(i) -> (video, k)``)."""
    base, indices = (frames.dataset, frames.indices) if isinstance(frames, Subset) else (frames, range(len(frames)))
    names = [base.frame_id(int(i))[0] for i in indices]
    return np.unique(np.asarray(names, dtype=str), return_inverse=True)[1].astype(np.int64).reshape(-1)


class VideoGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's batches (lists of dataset indices): ``frames_per_video`` consecutive indices per video.

    ``videos``: (N,) the video id of every dataset item (:func:`video_ids`). ``set_epoch(epoch, start_step)``
    picks the epoch's batches and where to start (for resume), as GlobalBatchSampler does.
    """

    def __init__(self, videos: np.ndarray, batch_size: int, frames_per_video: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        videos = np.asarray(videos).reshape(-1)
        if batch_size % frames_per_video:
            raise AffectMAEError(f"person_center: batch_size {batch_size} must be a multiple of "
                                 f"frames_per_video {frames_per_video}")
        self.groups = batch_size // frames_per_video
        if self.groups % world_size:
            raise AffectMAEError(f"person_center: the {self.groups} videos of a batch (batch_size // frames_per_video) "
                                 f"must be divisible by the {world_size} processes")
        self.members = [np.flatnonzero(videos == v) for v in np.unique(videos)]
        if len(self.members) < self.groups:
            raise AffectMAEError(f"person_center: {len(self.members)} training videos, fewer than the {self.groups} "
                                 f"a batch needs (batch_size // frames_per_video); lower batch_size")
        self.n, self.batch_size, self.per_video = len(videos), batch_size, frames_per_video
        self.rank, self.world, self.seed = rank, world_size, seed
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n // self.batch_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def _slots(self, g: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(slots per video of ``self.members``: proportional, capped at one per step, summing to
        steps x groups; the epoch's shuffled video order)."""
        steps, need = self.steps_per_epoch, self.steps_per_epoch * self.groups
        slots = np.array([min(steps, -(-len(m) // self.per_video)) for m in self.members])
        order = torch.randperm(len(self.members), generator=g).numpy()
        while slots.sum() < need:  # top up round-robin (there are >= groups videos, so room is left)
            for v in order:
                if slots.sum() < need and slots[v] < steps:
                    slots[v] += 1
        excess = int(slots.sum()) - need
        for v in order[::-1]:  # drop from the last videos of the order
            cut = min(excess, int(slots[v]))
            slots[v] -= cut
            excess -= cut
        return slots, order

    def epoch_batches(self) -> list[list[int]]:
        """All ranks' batches of the epoch: ``steps`` lists of ``groups x frames_per_video`` indices."""
        g = torch.Generator().manual_seed(step_seed(self.seed, self.epoch))
        slots, order = self._slots(g)
        runs = []  # one run of frames_per_video indices per slot, video by video in `order`
        for v in order:
            frames = self.members[v][torch.randperm(len(self.members[v]), generator=g).numpy()]
            take = np.arange(int(slots[v]) * self.per_video) % len(frames)
            runs.extend(frames[take].reshape(-1, self.per_video))
        steps = self.steps_per_epoch
        batches = [[int(i) for run in runs[s::steps] for i in run] for s in range(steps)]
        return [batches[s] for s in torch.randperm(steps, generator=g).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        share = self.groups // self.world * self.per_video
        for batch in self.epoch_batches()[self.start_step:]:
            yield batch[self.rank * share:(self.rank + 1) * share]

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step
