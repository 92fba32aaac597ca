"""Aff-Wild2-layout video frames as unlabelled face images for MAE pretraining (face spec ``affwild2:``).

MAE pretraining needs no labels, so the cropped, aligned frames of video data sets (Aff-Wild2 itself, the
``affectmae synth`` sets, or real clips turned into that layout by ``affectmae pseudo-label``) add faces in
motion to the still-image sets. Which videos is decided by the annotation folders, so a validation split
never leaks into pretraining: ``split=train`` (the default) takes every video listed in a ``Train_Set`` folder
of any task (VA, EXPR, AU), ``split=val`` the ``Validation_Set`` ones, ``split=all`` both. Every frame image on
disk of those videos counts, labelled or not; ``every=N`` keeps each N-th (neighbouring frames are near
duplicates). ``frames=DIR`` names the ``cropped_aligned`` folder when it is not under the root.

    AffWild2VideoFrames(root, split="train", every=1, frames=None)   # items: (image, -1)
        .summary: {"kind", "source", "videos", "frames_on_disk", "len", "videos_without_frames"}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from affectmae.datasets.affwild2 import FrameIndex
from affectmae.datasets.annotations import find_split_dir, has_split
from affectmae.datasets.face_base import FaceImages
from affectmae.errors import AffectMAEError
from affectmae.tasks import TASKS

log = logging.getLogger(__name__)

VIDEO_SPLITS = {"train": ("train",), "val": ("val",), "all": ("train", "val")}


def split_videos(annotation_root: str | Path, split: str) -> list[str]:
    """The videos named by the ``.txt`` files of ``split`` ("train", "val" or "all") in any task's challenge
    folder under ``annotation_root``, sorted. No such folder at all is an error naming the root."""
    if split not in VIDEO_SPLITS:
        raise AffectMAEError(f"affwild2: unknown split {split!r}; choose one of {', '.join(VIDEO_SPLITS)}")
    videos: set[str] = set()
    found = False
    for task in TASKS:
        for name in VIDEO_SPLITS[split]:
            if has_split(annotation_root, task, name):
                found = True
                folder = find_split_dir(annotation_root, task, name)
                videos.update(p.stem for p in folder.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
    if not found:
        raise AffectMAEError(f"affwild2:{annotation_root}: no {split} annotation folder of any task "
                             "(VA_Estimation_Challenge/Train_Set, ...) in it or below it")
    return sorted(videos)


class AffWild2VideoFrames(FaceImages):
    """Every frame image of the ``split`` videos (``every``-th), as an unlabelled face image."""

    kind = "affwild2"

    def __init__(self, root: str | Path, split: str = "train", every: int = 1, frames: str | Path | None = None,
                 transform: Callable[[Any], Any] | None = None, skip_corrupt: bool = True):
        super().__init__(str(root), transform, skip_corrupt)
        if every < 1:
            raise AffectMAEError(f"affwild2:{root}: every must be >= 1, got {every}")
        videos = split_videos(root, split)
        index = FrameIndex(frames if frames is not None else root)
        paths, on_disk, without = [], 0, []
        for video in videos:
            numbers = index.frame_numbers(video)
            on_disk += len(numbers)
            if not len(numbers):
                without.append(video)
            paths += [index.frame_path(video, int(n) - 1) for n in numbers[::every]]
        if not paths:
            raise AffectMAEError(f"affwild2:{root}: none of the {len(videos)} {split} videos has frame images under "
                                 f"{index.root} (looked for {index.root / videos[0] / '00001.jpg'}); "
                                 "give the cropped_aligned folder as ?frames=DIR")
        if without:
            log.warning("affwild2:%s: %d of the %d %s videos have no frame images under %s", root, len(without),
                        len(videos), split, index.root)
        self._paths = paths
        self._labels = np.full(len(paths), -1, dtype=np.int64)
        self.summary.update({"videos": len(videos), "frames_on_disk": on_disk, "len": len(paths),
                             "videos_without_frames": len(without)})
