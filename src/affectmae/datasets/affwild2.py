"""Aff-Wild2 frames: the one reader for real and synthetic (``affectmae synth``) data.

Public API (signatures are a contract; see docs/data.md for the layouts)::

    FrameIndex(frames_root)
        .root -> Path                          # the cropped_aligned folder
        .videos() -> list[str]                 # frame folders, sorted
        .frame_path(video, k) -> Path          # k is 0-based: image "%05d.jpg" % (k + 1)
        .available(video, n_frames) -> np.ndarray (n_frames,) bool
        .frame_numbers(video) -> np.ndarray    # sorted 1-based numbers of the images on disk
    videos_without_frames(frame_index, videos, what, allow_missing) -> list[str]   # the rule extract and
                                           # finetune share: videos without a single frame image are an error
    AffWild2Frames(annotation_root, frames_root, task, split, transform=None, skip_corrupt=True, frame_stride=1,
                   allow_missing_videos=False)
        [i] -> (image, label)                  # image: PIL RGB, or transform(image); None if corrupt
        .summary -> dict                       # counts of frames excluded per reason
        .frame_id(i) -> (video, k)

The annotation files are read by :mod:`affectmae.datasets.annotations`; ``read_annotation_file`` and
``load_annotations`` are importable from here too. Labels returned by :class:`AffWild2Frames`: EXPR -> int64
scalar tensor (class 0..7); AU -> float32 (12,) of 0/1; VA -> float32 (2,) (valence, arousal).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from affectmae.datasets.annotations import FRAMES_DIR_NAME, load_annotations, read_annotation_file
from affectmae.datasets.images import SkipCounter, load_item, open_rgb
from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.tasks import get_task

__all__ = ["FrameIndex", "AffWild2Frames", "videos_without_frames", "FRAMES_DIR_NAME", "load_annotations", "read_annotation_file"]

log = logging.getLogger(__name__)

_FRAME_NAME = re.compile(r"^(\d{5}|[1-9]\d{5,})\.jpg$")  # exactly what "%05d.jpg" produces


class FrameIndex:
    """Maps (video, 0-based frame index) to ``<frames_root>/<video>/%05d.jpg``.

    ``frames_root`` is either the ``cropped_aligned`` folder or the folder that holds it. Each video's
    folder is listed once (cached), never stat-ed per frame.
    """

    def __init__(self, frames_root: str | Path):
        root = Path(frames_root)
        if (root / FRAMES_DIR_NAME).is_dir():
            root = root / FRAMES_DIR_NAME
        if not root.is_dir():
            raise AffectMAEError(f"frames root {frames_root} is not a folder")
        self.root = root
        self._listing: dict[str, np.ndarray] = {}

    def videos(self) -> list[str]:
        return sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))

    def frame_path(self, video: str, k: int) -> Path:
        return self.root / video / f"{k + 1:05d}.jpg"

    def frame_numbers(self, video: str) -> np.ndarray:
        """Sorted 1-based numbers of the ``%05d.jpg`` files present for ``video`` (empty if no folder)."""
        if video not in self._listing:
            folder = self.root / video
            try:
                names = [e.name for e in os.scandir(folder)]
            except FileNotFoundError:
                names = []
            nums = [int(m.group(1)) for m in map(_FRAME_NAME.match, names) if m]
            self._listing[video] = np.array(sorted(nums), dtype=np.int64)
        return self._listing[video]

    def has_video(self, video: str) -> bool:
        return (self.root / video).is_dir()

    def available(self, video: str, n_frames: int) -> np.ndarray:
        """(n_frames,) bool: True where frame ``k``'s image exists. Extra images beyond ``n_frames`` are ignored."""
        mask = np.zeros(n_frames, dtype=bool)
        nums = self.frame_numbers(video)
        inside = nums[(nums >= 1) & (nums <= n_frames)]
        mask[inside - 1] = True
        if len(nums) > len(inside):
            log.debug("%s: %d images beyond the %d annotated frames (ignored)", video, len(nums) - len(inside), n_frames)
        return mask


def videos_without_frames(frame_index: FrameIndex, videos: list[str], what: str, allow_missing: bool) -> list[str]:
    """The videos of ``videos`` without a single frame image under ``frame_index`` (no folder, or no
    ``%05d.jpg`` in it). Such videos are an error naming them (their frames would be filler only, or nothing
    at all), unless ``allow_missing``: then they are logged and returned, for the caller to skip. When none of
    the videos has frames, the frames root is wrong, and that is said, allowed or not. ``what`` names the
    videos in messages ("to extract", "annotated for va train")."""
    without = [v for v in videos if frame_index.frame_numbers(v).size == 0]
    if not without:
        return []
    where = frame_index.root
    if len(without) == len(videos):
        raise AffectMAEError(f"{where}: no frame images for any of the {len(videos)} videos {what} (looked for "
                             f"{where / without[0] / '00001.jpg'}); give the cropped_aligned folder as --frames")
    names = ", ".join(without[:5]) + (f" and {len(without) - 5} more" if len(without) > 5 else "")
    if not allow_missing:
        raise AffectMAEError(f"{where}: {len(without)} of the {len(videos)} videos {what} have no frame images: "
                             f"{names}; fix --frames, or set allow_missing_videos=true to skip them")
    log.warning("%s: %d videos %s have no frame images and are skipped (allow_missing_videos): %s",
                where, len(without), what, names)
    return without


class AffWild2Frames(Dataset):
    """Frame-level dataset for fine-tuning: only frames with a valid label AND an existing image.

    Items are ``(image, label)``: ``image`` is an RGB PIL image, or ``transform(image)``; ``label`` is
    int64 () for EXPR, float32 (12,) for AU, float32 (2,) for VA. A corrupt image gives ``None`` when
    ``skip_corrupt`` (use :func:`affectmae.datasets.images.collate_skip_corrupt`), else InputFormatError.

    ``summary`` counts: videos, annotated_frames, invalid_label, missing_image (valid label, no image),
    videos_without_frames, usable. ``frame_stride > 1`` keeps every n-th usable frame of each video
    (neighbouring frames are near duplicates); the rest are counted as ``strided_out``. An annotated video
    without a single frame image is an error naming it, unless ``allow_missing_videos`` (the rule of
    :func:`videos_without_frames`, which ``extract`` follows too).
    """

    def __init__(
        self,
        annotation_root: str | Path,
        frames_root: str | Path,
        task: str,
        split: str,
        transform: Callable[[Any], Any] | None = None,
        skip_corrupt: bool = True,
        frame_stride: int = 1,
        allow_missing_videos: bool = False,
        min_side: int = 0,
        decoder: str = "auto",
        pack: Any = None,
    ):
        if frame_stride < 1:
            raise AffectMAEError(f"frame_stride must be >= 1, got {frame_stride}")
        self.spec = get_task(task)
        self.index = FrameIndex(frames_root)
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.skipped = SkipCounter(f"Aff-Wild2 {task} {split}")
        self.min_side, self.decoder, self.pack = min_side, decoder, pack
        videos = load_annotations(annotation_root, task, split)
        self.videos = [v.video for v in videos]
        no_frames = videos_without_frames(self.index, self.videos, f"annotated for {task} {split}", allow_missing_videos)
        vid_idx, frame_idx, labels = [], [], []
        n_invalid = n_missing = n_strided = 0
        for i, v in enumerate(videos):
            have = self.index.available(v.video, v.n_frames)
            keep = v.valid & have
            n_invalid += int((~v.valid).sum())
            n_missing += int((v.valid & ~have).sum())
            ks = np.flatnonzero(keep)
            n_strided += len(ks) - len(ks[::frame_stride])
            ks = ks[::frame_stride]
            vid_idx.append(np.full(len(ks), i, dtype=np.int32))
            frame_idx.append(ks.astype(np.int32))
            labels.append(v.labels[ks])
        self._video_of = np.concatenate(vid_idx)
        self._frame_of = np.concatenate(frame_idx)
        self._labels = np.concatenate(labels).astype(np.float32)
        self.summary = {
            "videos": len(videos),
            "annotated_frames": int(sum(v.n_frames for v in videos)),
            "invalid_label": n_invalid,
            "missing_image": n_missing,
            "videos_without_frames": len(no_frames),
            "strided_out": n_strided,
            "usable": int(len(self._frame_of)),
        }
        if not len(self._frame_of):
            raise AffectMAEError(f"no usable {task} {split} frames: {self.summary}")
        log.info(
            "Aff-Wild2 %s %s: %d usable frames; excluded %d with an invalid label and %d with a missing image",
            task, split, self.summary["usable"], n_invalid, n_missing,
        )

    def __len__(self) -> int:
        return int(len(self._frame_of))

    def frame_id(self, i: int) -> tuple[str, int]:
        """(video, 0-based frame index) of item ``i``."""
        return self.videos[int(self._video_of[i])], int(self._frame_of[i])

    def label(self, i: int) -> torch.Tensor:
        row = self._labels[i]
        if self.spec.kind == "multiclass":
            return torch.tensor(int(row[0]), dtype=torch.int64)
        return torch.from_numpy(row.copy())

    def read_image(self, i: int) -> Any:
        """Item ``i``'s frame: from the pack when one is given, else decoded from its JPEG (reduced to
        ``min_side`` when > 0; a PIL image when 0, as before)."""
        video, k = self.frame_id(i)
        path = self.index.frame_path(video, k)
        if self.pack is not None:
            return read_packed_frame(self.pack, video, k, path)
        if self.min_side > 0:
            from affectmae.datasets.decode import decode_rgb

            return decode_rgb(path, self.min_side, self.decoder)
        return open_rgb(path)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor] | None:
        image = load_item(lambda: self.read_image(i), self.transform, self.skip_corrupt, self.skipped)
        return None if image is None else (image, self.label(i))


def read_packed_frame(pack: Any, video: str, k: int, path: Path) -> np.ndarray:
    """Frame ``k`` (0-based) of ``video`` from a frames pack (datasets/pack.py); an image that could not be
    decoded when packed raises InputFormatError naming ``path``, a frame the pack lacks a PackError."""
    from affectmae.datasets.pack import PackError

    item = pack.frame_item(video, k + 1)
    if item is None:
        raise PackError(f"{pack.root} does not hold {path} (packed before the frame was added?); pack the frames "
                        "again")
    try:
        return pack.pixels(item)
    except InputFormatError as err:
        raise InputFormatError(path, err.message) from None
