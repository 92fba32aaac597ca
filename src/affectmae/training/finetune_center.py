"""Person-centred fine-tuning (``FinetuneConfig.person_center``): the head sees a frame's pooled feature minus
the mean pooled feature of its video, so the loss rewards what changes within a person, not who it is.

- Training: batches of whole video groups (:class:`~affectmae.training.finetune_sampler.VideoGroupedBatchSampler`);
  the mean is over that video's frames in the (per-process) batch and is not detached, so the gradient flows
  through it as well. Items carry their video id (:class:`VideoTaggedFrames`, :func:`collate_video_frames`).
- Validation (:func:`predict_centred`): the pooled features of all validation frames, each video's mean over all
  its validation frames subtracted, then the head, so the score measures the objective that was trained.
- ``extract`` writes the raw features; the temporal model's ``person_norm`` centres them there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from affectmae.datasets.images import collate_skip_corrupt
from affectmae.training.finetune_data import AugmentedFrames, collate_frames
from affectmae.training.finetune_sampler import VideoGroupedBatchSampler, video_ids


def center_by_video(features: torch.Tensor, videos: torch.Tensor) -> torch.Tensor:
    """(B, D) features minus the mean of the rows with the same video id; ``videos``: (B,) ints. The mean
    is computed in float32 and is part of the graph (not detached)."""
    _, group = torch.unique(videos, return_inverse=True)
    x = features.float()
    sums = torch.zeros(int(group.max()) + 1, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, group, x)
    counts = torch.bincount(group, minlength=sums.shape[0]).to(x.dtype)
    return x - (sums / counts[:, None])[group]


class VideoTaggedFrames(AugmentedFrames):
    """The items of an :class:`AugmentedFrames` with the frame's video id appended (None stays None)."""

    def __init__(self, base: AugmentedFrames, videos: np.ndarray):
        super().__init__(base.frames, base.transform, base.seed, device_augment=base.device_augment)
        self.videos = videos

    def __getitem__(self, key: int | tuple[int, int]):
        item = super().__getitem__(key)
        i = key[1] if isinstance(key, tuple) else key
        return None if item is None else (*item, int(self.videos[i]))


class _Tagged(Dataset):
    """Any dataset's items with a video id appended (validation)."""

    def __init__(self, frames: Dataset, videos: np.ndarray):
        self.frames, self.videos = frames, videos

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        item = self.frames[i]
        return None if item is None else (*item, int(self.videos[i]))


def collate_video_frames(batch: list[Any]) -> tuple[Any, int]:
    """:func:`collate_frames` of the untagged items, with the video ids (B,) inserted before the labels:
    ``(images, videos, labels)`` or, with ``device_augment``, ``(images, params, videos, labels)``."""
    collated, n_bad = collate_frames([None if item is None else item[:-1] for item in batch])
    if collated is None:
        return None, n_bad
    videos = torch.tensor([item[-1] for item in batch if item is not None], dtype=torch.int64)
    return (*collated[:-1], videos, collated[-1]), n_bad


def grouped_training(train_set: AugmentedFrames, cfg: Any, info: Any) -> tuple[VideoTaggedFrames, VideoGroupedBatchSampler]:
    """The training set with video ids and its video-grouped batch sampler (``cfg``: a FinetuneConfig,
    ``info``: the DistInfo of this process)."""
    videos = video_ids(train_set.frames)
    sampler = VideoGroupedBatchSampler(videos, cfg.batch_size, cfg.frames_per_video, info.rank, info.world_size,
                                       cfg.seed)
    return VideoTaggedFrames(train_set, videos), sampler


@torch.no_grad()
def predict_centred(model: Any, dataset: Dataset, batch_size: int, device: torch.device,
                    num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """As ``predict_frames``, with every pooled feature centred on the mean over all of its video's frames
    in ``dataset`` before the head: outputs (N, K) and labels."""
    model.eval()
    loader = DataLoader(_Tagged(dataset, video_ids(dataset)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_skip_corrupt)
    pooled, labels, videos = [], [], []
    for batch, _ in loader:
        if batch is None:
            continue
        pooled.append(model.encoder.forward_features(batch[0].to(device))["pooled"].float().cpu())
        labels.append(batch[1])
        videos.append(batch[2])
    centred = center_by_video(torch.cat(pooled), torch.cat(videos))  # on the host: N x D can be large
    outs = torch.cat([model.outputs(part.to(device)).float().cpu() for part in centred.split(batch_size)])
    model.train()
    outs = torch.sigmoid(outs) if model.spec.kind == "multilabel" else outs
    return outs.numpy(), torch.cat(labels).numpy()
