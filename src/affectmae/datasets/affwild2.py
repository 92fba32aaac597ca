"""Aff-Wild2 annotations and frames: the one reader for real and synthetic (``affectmae synth``) data.

Public API (signatures are a contract; see docs/data.md for the layouts)::

    read_annotation_file(path, task) -> VideoLabels
    load_annotations(annotation_root, task, split) -> list[VideoLabels]          # sorted by video name
    find_split_dir(annotation_root, task, split) -> Path
    FrameIndex(frames_root)
        .root -> Path                          # the cropped_aligned folder
        .videos() -> list[str]                 # frame folders, sorted
        .frame_path(video, k) -> Path          # k is 0-based: image "%05d.jpg" % (k + 1)
        .available(video, n_frames) -> np.ndarray (n_frames,) bool
        .frame_numbers(video) -> np.ndarray    # sorted 1-based numbers of the images on disk
    AffWild2Frames(annotation_root, frames_root, task, split, transform=None, skip_corrupt=True, frame_stride=1)
        [i] -> (image, label)                  # image: PIL RGB, or transform(image); None if corrupt
        .summary -> dict                       # counts of frames excluded per reason
        .frame_id(i) -> (video, k)
    base_video_name(video) -> str              # "12-24-1920x1080_left" -> "12-24-1920x1080"
    person_side(video) -> "left" | "right" | None

``VideoLabels.labels`` is ``(N, label_width)`` float32 with the raw file values (invalid markers kept)
and ``VideoLabels.valid`` is ``(N,)`` bool; row ``k`` is line ``k + 2`` of the file and image
``%05d.jpg % (k + 1)``. Frames are never dropped from these arrays, so indices stay aligned.

Labels returned by :class:`AffWild2Frames`: EXPR -> int64 scalar tensor (class 0..7); AU -> float32 (12,)
of 0/1; VA -> float32 (2,) (valence, arousal).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from affectmae.datasets.images import SkipCounter, open_rgb
from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.tasks import SPLITS, TASKS, TaskSpec, get_task

log = logging.getLogger(__name__)

#: folder names of each challenge across ABAW editions; the first one comes from the task table
CHALLENGE_DIR_ALIASES: dict[str, tuple[str, ...]] = {
    "va": (TASKS["va"].challenge_dir, "VA_Set"),
    "expr": (TASKS["expr"].challenge_dir, "EXPR_Classification_Challenge", "EXPR_Set"),
    "au": (TASKS["au"].challenge_dir, "AU_Set"),
}
FRAMES_DIR_NAME = "cropped_aligned"
_SEARCH_DEPTH = 3
_SEARCH_MAX_DIRS = 500  # per level; keeps a search from a too-high root from listing every frame folder
_NOT_ANNOTATIONS = {FRAMES_DIR_NAME, "cropped", "videos", "batch1", "batch2"}  # big media folders of the download
_FRAME_NAME = re.compile(r"^(\d{5}|[1-9]\d{5,})\.jpg$")  # exactly what "%05d.jpg" produces
_SIDE = re.compile(r"^(.*)_(left|right)$")


@dataclass
class VideoLabels:
    """Per-frame labels of one annotation file.

    labels: (N, label_width) float32, the raw values (invalid markers kept).
    valid: (N,) bool, False where the row carries the task's invalid marker.
    """

    video: str
    task: str
    labels: np.ndarray
    valid: np.ndarray
    source: Path

    @property
    def n_frames(self) -> int:
        return int(self.labels.shape[0])


def base_video_name(video: str) -> str:
    """The raw video's stem: two-person folders ``X_left`` / ``X_right`` come from video ``X.mp4``/``X.avi``."""
    m = _SIDE.match(video)
    return m.group(1) if m else video


def person_side(video: str) -> str | None:
    """``"left"`` or ``"right"`` for two-person videos, ``None`` otherwise."""
    m = _SIDE.match(video)
    return m.group(2) if m else None


# ----------------------------------------------------------------------------------------- parsing
def _line_error(path: Path, body_index: int, message: str) -> InputFormatError:
    return InputFormatError(path, message, line=body_index + 2)  # +1 header, +1 for 1-based lines


def _check_values(path: Path, spec: TaskSpec, values: np.ndarray) -> np.ndarray:
    """Range checks; returns the valid mask (N,). values: (N, label_width) float64."""
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise _line_error(path, i, f"value is not a finite number: {values[i].tolist()}")
    if spec.kind == "regression":
        is_marker = values == spec.invalid
        bad = ~(((values >= -1.0) & (values <= 1.0)) | is_marker)
        allowed = f"in [-1, 1] or {spec.invalid:g} (invalid)"
        valid = ~is_marker.any(axis=1)
    elif spec.kind == "multiclass":
        bad = ~(np.isin(values, np.arange(spec.num_outputs)) | (values == spec.invalid))
        allowed = f"an integer class 0..{spec.num_outputs - 1} or {spec.invalid:g} (invalid)"
        valid = values[:, 0] != spec.invalid
    else:
        bad = ~np.isin(values, (0.0, 1.0, spec.invalid))
        allowed = f"0, 1 or {spec.invalid:g} (invalid)"
        valid = ~(values == spec.invalid).any(axis=1)
    bad_rows = bad.any(axis=1)
    if bad_rows.any():
        i = int(np.flatnonzero(bad_rows)[0])
        col = int(np.flatnonzero(bad[i])[0])
        name = spec.columns[col] if spec.kind != "multiclass" else "expression"
        raise _line_error(path, i, f"{name} = {values[i, col]:g} is out of range; expected {allowed}")
    return valid


def _header_hint(found: list[str]) -> str:
    for other in TASKS.values():
        if found == list(other.columns):
            return f" (this is the header of a {other.name.upper()} file)"
    return ""


def read_annotation_file(path: str | Path, task: str) -> VideoLabels:
    """Parse one Aff-Wild2 annotation ``.txt`` file (header line, then one line per frame).

    Accepts Windows line endings, a UTF-8 BOM and blank trailing lines. Raises InputFormatError naming
    the file and line for a wrong header, a wrong number of columns, a non-number or an out-of-range
    value, and for an empty file or one with no frame lines.
    """
    spec = get_task(task)
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputFormatError(path, "annotation file not found") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputFormatError(path, f"not UTF-8 text ({err.reason} at byte {err.start})", line=line) from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    expected = ",".join(spec.columns)
    if not lines:
        raise InputFormatError(path, f"empty file; expected the header {expected!r}", line=1)
    found = [field.strip() for field in lines[0].split(",")]
    if found != list(spec.columns):
        raise InputFormatError(
            path,
            f"wrong header for task {spec.name}: expected {expected!r}, found {lines[0].strip()!r}{_header_hint(found)}",
            line=1,
        )
    body = lines[1:]
    if not body:
        raise InputFormatError(path, "no frame lines after the header", line=2)

    width = spec.label_width
    rows = [line.split(",") for line in body]
    widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    wrong = np.flatnonzero(widths != width)
    if wrong.size:
        i = int(wrong[0])
        if not body[i].strip():
            raise _line_error(path, i, "blank line inside the file (frames after it would be misaligned)")
        raise _line_error(path, i, f"expected {width} comma-separated values, found {int(widths[i])}: {body[i].strip()!r}")
    try:
        values = np.array(rows, dtype=np.float64).reshape(len(rows), width)
    except ValueError:
        for i, row in enumerate(rows):  # slow path only to name the line
            for field in row:
                try:
                    float(field)
                except ValueError:
                    raise _line_error(path, i, f"not a number: {field.strip()!r}") from None
        raise  # pragma: no cover - numpy and float() disagree
    valid = _check_values(path, spec, values)
    return VideoLabels(path.stem, spec.name, values.astype(np.float32), valid, path)


# ------------------------------------------------------------------------------------ locating data
class AnnotationsNotFound(AffectMAEError):
    """The task's challenge folder, or the split folder inside it, does not exist (a dataset may hold only
    some tasks). Other problems, such as several candidate folders, are plain :class:`AffectMAEError`."""


def _find_challenge_dir(root: Path, task: str) -> Path:
    names = CHALLENGE_DIR_ALIASES[task]
    if root.name in names:
        return root
    level = [root]
    for _depth in range(_SEARCH_DEPTH + 1):
        hits = [d / n for d in level for n in names if (d / n).is_dir()]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise AffectMAEError(
                f"{root}: several {task.upper()} annotation folders found, pass one of them as the annotation root: "
                + ", ".join(str(h) for h in hits)
            )
        level = [
            Path(e.path)
            for d in level
            for e in sorted(os.scandir(d), key=lambda e: e.name)
            if e.is_dir() and not e.name.startswith(".") and e.name not in _NOT_ANNOTATIONS
        ][:_SEARCH_MAX_DIRS]
        if not level:
            break
    raise AnnotationsNotFound(
        f"{root}: no {task.upper()} annotation folder ({' or '.join(names)}) found in it or up to "
        f"{_SEARCH_DEPTH} levels below"
    )


def find_split_dir(annotation_root: str | Path, task: str, split: str) -> Path:
    """The folder of ``.txt`` files for ``task`` and ``split`` ("train"/"val" or "Train_Set"/"Validation_Set").

    ``annotation_root`` may be the challenge folder itself, the folder holding it, or any parent up to
    three levels above (e.g. the root of an unpacked Aff-Wild2 download).
    """
    spec = get_task(task)
    root = Path(annotation_root)
    if not root.is_dir():
        raise AffectMAEError(f"annotation root {root} is not a folder")
    split_name = SPLITS.get(split, split if split in SPLITS.values() else None)
    if split_name is None:
        raise AffectMAEError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    split_dir = _find_challenge_dir(root, spec.name) / split_name
    if not split_dir.is_dir():
        raise AnnotationsNotFound(f"split folder {split_dir} does not exist")
    return split_dir


def has_split(annotation_root: str | Path, task: str, split: str) -> bool:
    """Whether ``task`` has a ``split`` folder under the root. Ambiguous or unreadable layouts still raise."""
    try:
        find_split_dir(annotation_root, task, split)
    except AnnotationsNotFound:
        return False
    return True


def load_annotations(annotation_root: str | Path, task: str, split: str) -> list[VideoLabels]:
    """Read every ``<video>.txt`` of one challenge split, sorted by video name."""
    split_dir = find_split_dir(annotation_root, task, split)
    files = sorted(p for p in split_dir.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
    if not files:
        raise AffectMAEError(f"split folder {split_dir} contains no .txt annotation files")
    videos = [read_annotation_file(p, task) for p in tqdm(files, desc=f"{task} {split} annotations", disable=None)]
    n = sum(v.n_frames for v in videos)
    n_valid = sum(int(v.valid.sum()) for v in videos)
    log.info("%s: %d videos, %d frames, %d with a valid %s label", split_dir, len(videos), n, n_valid, task)
    return videos


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


class AffWild2Frames(Dataset):
    """Frame-level dataset for fine-tuning: only frames with a valid label AND an existing image.

    Items are ``(image, label)``: ``image`` is an RGB PIL image, or ``transform(image)``; ``label`` is
    int64 () for EXPR, float32 (12,) for AU, float32 (2,) for VA. A corrupt image gives ``None`` when
    ``skip_corrupt`` (use :func:`affectmae.datasets.images.collate_skip_corrupt`), else InputFormatError.

    ``summary`` counts: videos, annotated_frames, invalid_label, missing_image (valid label, no image),
    videos_without_frames, usable. ``frame_stride > 1`` keeps every n-th usable frame of each video
    (neighbouring frames are near duplicates); the rest are counted as ``strided_out``.
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
    ):
        if frame_stride < 1:
            raise AffectMAEError(f"frame_stride must be >= 1, got {frame_stride}")
        self.spec = get_task(task)
        self.index = FrameIndex(frames_root)
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.skipped = SkipCounter(f"Aff-Wild2 {task} {split}")
        videos = load_annotations(annotation_root, task, split)
        self.videos = [v.video for v in videos]
        vid_idx, frame_idx, labels = [], [], []
        n_invalid = n_missing = n_strided = 0
        no_dir = []
        for i, v in enumerate(videos):
            if not self.index.has_video(v.video):
                no_dir.append(v.video)
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
            "videos_without_frames": len(no_dir),
            "strided_out": n_strided,
            "usable": int(len(self._frame_of)),
        }
        if no_dir:
            log.warning(
                "%d annotated videos have no frame folder under %s (e.g. %s)", len(no_dir), self.index.root, no_dir[0]
            )
        if len(no_dir) == len(videos):
            raise AffectMAEError(
                f"none of the {len(videos)} annotated {task} {split} videos has a frame folder under {self.index.root} "
                f"(e.g. {self.index.root / videos[0].video}); is the frames root right?"
            )
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

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor] | None:
        video, k = self.frame_id(i)
        path = self.index.frame_path(video, k)
        try:
            image = open_rgb(path)
        except InputFormatError as err:
            if not self.skip_corrupt:
                raise
            self.skipped.add(path, err)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, self.label(i)
