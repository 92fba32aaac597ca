"""Aff-Wild2 annotation files: parsing one ``.txt`` file and finding a challenge's split folders.

Public API (signatures are a contract; see docs/data.md for the layouts)::

    read_annotation_file(path, task) -> VideoLabels
    load_annotations(annotation_root, task, split) -> list[VideoLabels]          # sorted by video name
    find_split_dir(annotation_root, task, split) -> Path
    has_split(annotation_root, task, split) -> bool
    base_video_name(video) -> str              # "12-24-1920x1080_left" -> "12-24-1920x1080"
    person_side(video) -> "left" | "right" | None

``VideoLabels.labels`` is ``(N, label_width)`` float32 with the raw file values (invalid markers kept)
and ``VideoLabels.valid`` is ``(N,)`` bool; row ``k`` is line ``k + 2`` of the file and image
``%05d.jpg % (k + 1)``. Frames are never dropped from these arrays, so indices stay aligned.
The frames themselves are read by :mod:`affectmae.datasets.affwild2`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.progress import progress_bar
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
    videos = [read_annotation_file(p, task) for p in progress_bar(files, desc=f"{task} {split} annotations", unit="file")]
    n = sum(v.n_frames for v in videos)
    n_valid = sum(int(v.valid.sum()) for v in videos)
    log.info("%s: %d videos, %d frames, %d with a valid %s label", split_dir, len(videos), n, n_valid, task)
    return videos
