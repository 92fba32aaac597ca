"""Training data for the temporal model: per-video labels aligned with stored features, folds, batches.

- :func:`load_labelled_videos` reads the annotations of the requested tasks (one or all three) for both
  official splits and checks every annotation length against the feature array of that video.
- :func:`make_folds` gives the five folds: fold 0 is the official train/validation split, folds 1-4
  split the merged train+validation videos by video (seeded, deterministic); a video is never on both
  sides of a fold.
- :class:`SegmentBatches` cuts the training videos into windows (``w``/``s``, every frame covered, see
  :mod:`affectmae.segments`) and yields padded batches with per-task label masks.

Length check: the features have one row per frame (``affectmae extract`` sizes them to the longest
annotation of the video). An annotation that is exactly one line shorter or longer than the features is
accepted (the known Aff-Wild2 off-by-one at the end of some videos): a missing last line becomes an
invalid label, an extra last line is dropped. Any other difference is an error naming the video, the
file and both lengths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from affectmae.errors import AffectMAEError
from affectmae.features.store import FeatureStore, NpyRows
from affectmae.tasks import SPLITS, get_task

log = logging.getLogger(__name__)

TOLERATED_LENGTH_DIFFERENCE = 1


@dataclass
class LabelledVideo:
    """One video's labels for the tasks it is annotated for. labels[t]: (N, label_width); valid[t]: (N,)."""

    video: str
    n_frames: int
    split: str  # "train" | "val" (official split; for multi-task, "val" if any task lists it there)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    label_split: dict[str, str] = field(default_factory=dict)  # official split of each task's annotation

    def only_split(self, split: str) -> "LabelledVideo":
        """A copy keeping only the labels whose annotation file is in the official ``split``."""
        keep = [t for t in self.labels if self.label_split.get(t, self.split) == split]
        return LabelledVideo(self.video, self.n_frames, self.split, {t: self.labels[t] for t in keep},
                             {t: self.valid[t] for t in keep}, {t: self.label_split[t] for t in keep if t in self.label_split})


def _align(video: str, task: str, source, labels: np.ndarray, valid: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    m = labels.shape[0]
    if m == n:
        return labels, valid
    if abs(m - n) > TOLERATED_LENGTH_DIFFERENCE:
        raise AffectMAEError(
            f"video {video!r}: the features have {n} frames but the {task.upper()} annotation {source} has {m} "
            f"(only a difference of {TOLERATED_LENGTH_DIFFERENCE} at the end is tolerated); re-run extract with --data"
        )
    if m > n:
        return labels[:n], valid[:n]
    pad = np.full((n - m, labels.shape[1]), get_task(task).invalid, dtype=labels.dtype)
    return np.concatenate([labels, pad]), np.concatenate([valid, np.zeros(n - m, bool)])


def load_labelled_videos(store: FeatureStore, annotation_root: str, tasks: list[str]) -> list[LabelledVideo]:
    """Every annotated video of ``tasks`` (both splits), sorted by name, with labels aligned to the features."""
    from affectmae.datasets.annotations import has_split, load_annotations

    videos: dict[str, LabelledVideo] = {}
    for task in tasks:
        found = False
        for split in SPLITS:
            if not has_split(annotation_root, task, split):
                continue
            found = True
            for vl in load_annotations(annotation_root, task, split):
                if vl.video not in store:
                    raise AffectMAEError(f"video {vl.video!r} ({vl.source}) has no features in {store.root}; "
                                         f"run `affectmae extract` over its frames")
                n = store.n_frames(vl.video)
                lv = videos.setdefault(vl.video, LabelledVideo(vl.video, n, split))
                if split == "val":
                    lv.split = "val"
                lv.labels[task], lv.valid[task] = _align(vl.video, task, vl.source, vl.labels, vl.valid, n)
                lv.label_split[task] = split
        if not found:
            raise AffectMAEError(f"no {task.upper()} annotations (Train_Set/Validation_Set) under {annotation_root}")
    if not videos:
        raise AffectMAEError(f"no annotated videos under {annotation_root}")
    return [videos[v] for v in sorted(videos)]


def make_folds(videos: list[LabelledVideo], n_folds: int = 5, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """``[(train_videos, val_videos)] * n_folds``: fold 0 official, folds 1.. a seeded split by video."""
    if n_folds < 1:
        raise AffectMAEError(f"n_folds must be at least 1, got {n_folds}")
    names = [v.video for v in videos]
    folds = [([v.video for v in videos if v.split == "train"], [v.video for v in videos if v.split == "val"])]
    if n_folds > 1:
        order = np.random.default_rng(seed).permutation(len(names))
        parts = np.array_split(order, n_folds - 1)
        for part in parts:
            val = set(names[i] for i in part)
            folds.append(([n for n in names if n not in val], [n for n in names if n in val]))
    return folds


def select_fold(videos: list[LabelledVideo], fold: int, n_folds: int, seed: int) -> tuple[list[LabelledVideo], list[LabelledVideo]]:
    """Train and validation videos of one fold; clear errors for an empty side.

    Multi-task, fold 0: a video listed in any task's validation split is a validation video; only its
    validation-split labels are scored, and its training-split labels of other tasks are not used at all,
    so no video is on both sides.
    """
    if not 0 <= fold < n_folds:
        raise AffectMAEError(f"fold {fold} out of range 0..{n_folds - 1}")
    train_names, val_names = make_folds(videos, n_folds, seed)[fold]
    if not val_names:
        raise AffectMAEError(f"fold {fold} has no validation videos ({len(videos)} annotated videos in all)")
    if not train_names:
        raise AffectMAEError(f"fold {fold} has no training videos ({len(videos)} annotated videos in all)")
    by_name = {v.video: v for v in videos}
    train, val = [by_name[n] for n in train_names], [by_name[n] for n in val_names]
    if fold == 0:  # official protocol: score only labels from the official validation files
        val = [v.only_split("val") for v in val]
    return train, val


@dataclass
class Batch:
    """x: (B, W, D) float32; present: (B, W) face found; unpadded: (B, W) a frame of the video, not padding;
    targets[t]: (B, W, label_width); masks[t]: (B, W) unpadded frame with a valid label for task t;
    reference: (B, D) the mean feature of each segment's video (``TemporalConfig.person_norm``), or (B, W, D)
    the causal reference of each frame (:func:`~affectmae.models.temporal.causal_reference`, streaming models)."""

    x: torch.Tensor
    present: torch.Tensor
    unpadded: torch.Tensor
    targets: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    reference: torch.Tensor


class SegmentBatches:
    """Padded training batches of windows over ``videos``; shuffled with ``seed + epoch``."""

    def __init__(self, store: FeatureStore, videos: list[LabelledVideo], tasks: list[str], window: int, stride: int,
                 batch_size: int, causal_reference: bool = False):
        from affectmae.segments import make_segments

        if not videos:
            raise AffectMAEError("no training videos")
        self.store, self.videos, self.tasks = store, videos, tasks
        self.window, self.batch_size = window, batch_size
        self.segments = make_segments([v.n_frames for v in videos], window, stride)
        self._cache: dict[int, np.ndarray] = {}
        self._references: dict[int, np.ndarray] = {}
        self.causal_reference = causal_reference
        self._sums: dict[tuple[int, int], tuple] = {}  # (video, start) -> running sums before that frame

    def __len__(self) -> int:
        return -(-len(self.segments) // self.batch_size)

    def _features(self, i: int):
        """(rows read on demand, present mask); masks are cached, files are opened per use (few open files)."""
        if i not in self._cache:
            self._cache[i] = self.store.rows(self.videos[i].video)[1]
        return NpyRows(self.store.root / f"{self.videos[i].video}.npy"), self._cache[i]

    def _reference(self, i: int) -> np.ndarray:
        """The video's mean feature over frames with a face (person normalisation), computed once."""
        if i not in self._references:
            from affectmae.models.temporal import person_reference

            feats, pres = self._features(i)
            self._references[i] = person_reference(feats, pres)
            feats.close()
        return self._references[i]

    def _causal_reference(self, seg) -> np.ndarray:
        """(window, D): the causal reference of each frame of ``seg`` (padding rows: its last frame's), from the
        running sums of the video's frames before the segment (computed once per segment)."""
        from affectmae.models.temporal import causal_reference

        feats, pres = self._features(seg.video)
        key = (seg.video, seg.start)
        if key not in self._sums:
            d = self.store.dim
            total_p, count_p, total_a = np.zeros(d), 0, np.zeros(d)
            for begin in range(0, seg.start, 4096):
                rows = np.asarray(feats[begin:min(begin + 4096, seg.start)], dtype=np.float64)
                p = np.asarray(pres[begin:min(begin + 4096, seg.start)], dtype=bool)
                total_p += rows[p].sum(axis=0)
                count_p += int(p.sum())
                total_a += rows.sum(axis=0)
            self._sums[key] = (total_p, count_p, total_a, seg.start)
        ref = causal_reference(feats[seg.start:seg.stop], pres[seg.start:seg.stop], self._sums[key])
        feats.close()
        out = np.empty((self.window, ref.shape[1]), np.float32)
        out[: len(ref)], out[len(ref):] = ref, ref[-1]
        return out

    def epoch(self, epoch: int, seed: int) -> Iterator[Batch]:
        order = np.random.default_rng(seed + epoch).permutation(len(self.segments))
        for b in range(len(self)):
            yield self.collate([self.segments[j] for j in order[b * self.batch_size : (b + 1) * self.batch_size]])

    def collate(self, segs) -> Batch:
        w, d = self.window, self.store.dim
        x = np.zeros((len(segs), w, d), np.float32)
        present = np.zeros((len(segs), w), bool)
        unpadded = np.zeros((len(segs), w), bool)
        targets = {t: np.full((len(segs), w, get_task(t).label_width), get_task(t).invalid, np.float32) for t in self.tasks}
        masks = {t: np.zeros((len(segs), w), bool) for t in self.tasks}
        if self.causal_reference:
            reference = np.stack([self._causal_reference(seg) for seg in segs])  # (B, W, D)
        else:
            reference = np.stack([self._reference(seg.video) for seg in segs])  # (B, D)
        for j, seg in enumerate(segs):
            feats, pres = self._features(seg.video)
            lv = self.videos[seg.video]
            sl = slice(seg.start, seg.stop)
            x[j, : seg.length] = feats[sl]
            feats.close()
            present[j, : seg.length] = pres[sl]
            unpadded[j, : seg.length] = True
            for t in self.tasks:
                if t in lv.labels:
                    targets[t][j, : seg.length] = lv.labels[t][sl]
                    masks[t][j, : seg.length] = lv.valid[t][sl]
        as_t = torch.from_numpy
        return Batch(as_t(x), as_t(present), as_t(unpadded), {t: as_t(v) for t, v in targets.items()},
                     {t: as_t(v) for t, v in masks.items()}, as_t(reference))
