"""ABAW submission files: one CSV per task, one row per frame.

Layout (header, then rows; frame ``k`` (0-based) of ``video`` is ``<video>/%05d.jpg % (k + 1)``)::

    image_location,valence,arousal                      video/00001.jpg,0.125000,-0.250000
    image_location,Neutral,Anger,...,Other              video/00001.jpg,4          (one class index 0..7)
    image_location,AU1,AU2,...,AU26                     video/00001.jpg,0,1,0,0,0,0,1,0,0,0,1,0

``write_submission`` streams video by video into a temporary file that is renamed into place at the
end (a crash never leaves half a file). ``read_submission`` validates everything and names the file
and line of the first problem; it parses with pandas so 300k-row files read in about a second.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.io import atomic_path, writing
from affectmae.tasks import TASKS, TaskSpec, get_task

LOCATION = re.compile(r"^(?P<video>.+)/(?P<number>\d{5,})\.jpg$")
VA_FORMAT = "%.6f"


def image_location(video: str, k: int) -> str:
    """``image_location`` of 0-based frame ``k``: ``"<video>/%05d.jpg" % (k + 1)``."""
    return f"{video}/{k + 1:05d}.jpg"


def submission_columns(task: str) -> list[str]:
    """The exact header fields of a submission file for ``task``."""
    return ["image_location", *get_task(task).columns]


def _values_to_write(spec: TaskSpec, video: str, values: Any) -> np.ndarray:
    """Validate one video's predictions; returns (N, K) float (VA) or int64 (EXPR (N, 1), AU)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if spec.kind == "multiclass":
        if values.ndim == 2 and values.shape[1] == spec.num_outputs:  # scores -> class index
            values = values.argmax(axis=1)
        values = values.reshape(-1, 1) if values.ndim == 1 else values
        expected = "(N,) class indices or (N, 8) scores"
    else:
        expected = f"(N, {spec.num_outputs})"
    if values.ndim != 2 or values.shape[1] != spec.label_width:
        raise AffectMAEError(f"video {video!r}: predictions must have shape {expected}, got {values.shape}")
    if spec.kind == "regression":
        bad = ~np.isfinite(values) | (values < -1) | (values > 1)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise AffectMAEError(
                f"video {video!r}: {spec.columns[j]} must be in [-1, 1], frame {image_location(video, int(i))} has {values[i, j]}"
            )
        return values.astype(np.float64)
    allowed = np.arange(spec.num_outputs) if spec.kind == "multiclass" else np.array([0, 1])
    bad = ~np.isin(values, allowed)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        what = "class indices 0..7" if spec.kind == "multiclass" else "0/1 (threshold probabilities first)"
        raise AffectMAEError(f"video {video!r}: expected {what}, frame {image_location(video, int(i))} has {values[i, j]}")
    return values.astype(np.int64)


class SubmissionWriter:
    """Write a submission one video at a time: ``with SubmissionWriter("va", path) as w: w.add(video, preds)``.

    The file appears at ``path`` only when the ``with`` block ends without an exception. ``staged``: write into
    this temporary file instead and leave its renaming to ``path`` to the caller, which places several files
    together (:func:`affectmae.io.atomic_paths`); write errors still name ``path``.
    """

    def __init__(self, task: str, path: str | Path, staged: str | Path | None = None):
        self.spec = get_task(task)
        self.path = Path(path)
        self.staged = None if staged is None else Path(staged)
        self.rows = 0
        self._videos: set[str] = set()

    def __enter__(self) -> "SubmissionWriter":
        self._atomic = atomic_path(self.path) if self.staged is None else None
        target = self._atomic.__enter__() if self._atomic is not None else self.staged
        with writing(self.path, target):
            self._fh = open(target, "w", newline="\n")
            self._fh.write(",".join(submission_columns(self.spec.name)) + "\n")
        return self

    def add(self, video: str, values: Any, frames: Any = None) -> None:
        """``values: (N, ...)`` for frames ``0..N-1`` of ``video``, or for the 0-based ``frames: (N,)``."""
        if video in self._videos:
            raise AffectMAEError(f"video {video!r} was already written to {self.path}")
        if not video or "," in video or "\n" in video:
            raise AffectMAEError(f"video name {video!r} cannot appear in a submission file")
        values = _values_to_write(self.spec, video, values)
        frames = np.arange(len(values)) if frames is None else np.asarray(frames, dtype=np.int64).ravel()
        if frames.shape[0] != values.shape[0]:
            raise AffectMAEError(f"video {video!r}: {frames.shape[0]} frame indices for {values.shape[0]} predictions")
        if frames.size and (frames.min() < 0 or np.unique(frames).size != frames.size):
            raise AffectMAEError(f"video {video!r}: frame indices must be unique and >= 0")
        row_format = ",".join([VA_FORMAT if self.spec.kind == "regression" else "%d"] * values.shape[1])
        cells = [row_format % tuple(row) for row in values.tolist()]
        with writing(self.path, *([self.staged] if self.staged else [])):
            self._fh.writelines(f"{video}/{k + 1:05d}.jpg,{c}\n" for k, c in zip(frames.tolist(), cells, strict=True))
        self._videos.add(video)
        self.rows += len(cells)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._atomic is None:
            with writing(self.path, self.staged):
                self._fh.close()
            return
        try:
            self._fh.close()
        except OSError as err:  # the last buffered rows did not fit: the file must not appear
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        self._atomic.__exit__(exc_type, exc, tb)


def write_submission(
    task: str, path: str | Path, predictions: Mapping[str, Any] | Iterable[tuple[str, Any]]
) -> int:
    """Write ``predictions`` (video -> values ``(N, ...)`` or ``(frames, values)``) as an ABAW CSV.

    VA values ``(N, 2)`` in [-1, 1]; EXPR ``(N,)`` class indices (``(N, 8)`` scores are arg-maxed);
    AU ``(N, 12)`` of 0/1. ``predictions`` may be a generator of ``(video, values)`` pairs, so videos
    need not all be in memory. Returns the number of rows written.
    """
    items = predictions.items() if isinstance(predictions, Mapping) else predictions
    with SubmissionWriter(task, path) as writer:
        for video, item in items:
            if isinstance(item, tuple) and len(item) == 2:
                writer.add(video, item[1], frames=item[0])
            else:
                writer.add(video, item)
    return writer.rows


# ----------------------------------------------------------------------------------------- reading
def _hint(fields: list[str]) -> str:
    for other in TASKS.values():
        if fields == ["image_location", *other.columns]:
            return f" (this is the header of a {other.name.upper()} submission)"
    return ""


def _check_field_counts(path: Path, width: int, upto_line: int | None = None) -> None:
    """Slow path, only when something is already wrong: name the first line with a wrong field count."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        for number, line in enumerate(fh, start=1):
            if number == 1:
                continue
            if upto_line is not None and number > upto_line:
                return
            line = line.rstrip("\r\n")
            if not line.strip():
                rest = fh.read()
                if rest.strip():
                    raise InputFormatError(path, "blank line between rows", line=number)
                return
            count = line.count(",") + 1
            if count != width:
                what = " (image_location and one class index)" if width == 2 else ""
                raise InputFormatError(
                    path, f"expected {width} comma-separated fields{what}, found {count}: {line[:80]!r}", line=number
                )


def _read_header(path: Path, expected: list[str]) -> None:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first = fh.readline()
    except FileNotFoundError:
        raise AffectMAEError(f"{path}: prediction file not found") from None
    except UnicodeDecodeError:
        raise InputFormatError(path, "not UTF-8 text", line=1) from None
    fields = [f.strip() for f in first.rstrip("\r\n").split(",")]
    if fields != expected:
        raise InputFormatError(
            path, f"wrong header: expected {','.join(expected)!r}, found {first.strip()!r}{_hint(fields)}", line=1
        )


def read_submission(task: str, path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read and validate a submission CSV -> ``{video: (frames (M,) int64 0-based, values)}``.

    ``values``: VA float64 ``(M, 2)``; EXPR int64 ``(M,)``; AU int64 ``(M, 12)``. Rows of a video are
    sorted by frame; videos keep the order of their first row. Raises InputFormatError naming the file
    and line for a wrong header, a wrong field count, a malformed ``image_location``, a non-number, a
    value out of range (VA in [-1, 1], EXPR integer 0..7, AU 0/1) and a duplicated row.
    """
    spec = get_task(task)
    path = Path(path)
    _read_header(path, submission_columns(task))
    # EXPR rows hold one class index under the 8-name header, so rows are narrower than the header there
    label_fields = list(spec.columns) if spec.label_width > 1 else ["expression"]
    columns = ["image_location", *label_fields]
    table, values = _read_table(path, columns)
    n_rows = len(table)

    def fail(row: int, message: str) -> None:
        _check_field_counts(path, len(columns), upto_line=row + 2)  # a short line explains an empty field
        raise InputFormatError(path, message, line=row + 2)

    if values is None:  # the fast float parse failed: find the first field that is not a number
        values = np.empty((n_rows, len(label_fields)), dtype=np.float64)
        for j, name in enumerate(label_fields):
            col = pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64)
            nan = np.isnan(col)
            if nan.any():
                i = int(np.flatnonzero(nan)[0])
                fail(i, f"{name} = {table[name].iat[i]!r} is not a number")
            values[:, j] = col

    locations = table["image_location"].tolist()
    matches = [LOCATION.match(loc) for loc in locations]
    videos = np.empty(n_rows, dtype=object)
    numbers = np.empty(n_rows, dtype=np.int64)
    for i, m in enumerate(matches):
        if m is None:
            fail(i, f"image_location {locations[i]!r} is not '<video>/NNNNN.jpg'")
        videos[i], numbers[i] = m.group("video"), int(m.group("number"))
    if (numbers < 1).any():
        i = int(np.flatnonzero(numbers < 1)[0])
        fail(i, f"image_location {locations[i]!r}: frame numbers start at 00001")

    if spec.kind == "regression":
        bad_cell, allowed = ~np.isfinite(values) | (values < -1) | (values > 1), "a number in [-1, 1]"
    elif spec.kind == "multiclass":
        bad_cell, allowed = ~np.isin(values, np.arange(spec.num_outputs)), "one class index 0..7 (per row)"
    else:
        bad_cell, allowed = ~np.isin(values, (0.0, 1.0)), "0 or 1"
    if bad_cell.any():
        i, j = (int(v) for v in np.argwhere(bad_cell)[0])
        fail(i, f"{label_fields[j]} = {table[label_fields[j]].iat[i]!r} is out of range; expected {allowed}")

    dup = table["image_location"].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        loc = table["image_location"].iat[i]
        first = int(np.flatnonzero((table["image_location"] == loc).to_numpy())[0])
        fail(i, f"duplicate row for {loc} (first at line {first + 2})")
    return _group_by_video(spec, videos, numbers - 1, values)


def _read_table(path: Path, columns: list[str]) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Rows after the header as strings, plus the label columns as float64 (None if any is not a number)."""
    options = dict(
        skiprows=1, header=None, names=columns, na_filter=False, skip_blank_lines=False, encoding="utf-8-sig"
    )
    try:
        table = pd.read_csv(path, dtype=str, engine="c", **options)
    except pd.errors.ParserError:
        _check_field_counts(path, len(columns))
        raise InputFormatError(path, "cannot be parsed as CSV") from None
    except pd.errors.EmptyDataError:
        table = pd.DataFrame(columns=columns)
    except UnicodeDecodeError:
        raise InputFormatError(path, "not UTF-8 text") from None
    blank = (table == "").all(axis=1).to_numpy()
    n_trailing = int(np.argmin(blank[::-1])) if not blank.all() else len(table)
    table = table.iloc[: len(table) - n_trailing]
    if len(table) == 0:
        raise InputFormatError(path, "no prediction rows after the header", line=2)
    try:  # fast path: the C parser's float conversion
        values = pd.read_csv(
            path, dtype=np.float64, usecols=columns[1:], nrows=len(table), engine="c", **options
        ).to_numpy()
    except ValueError:
        values = None
    return table, values


def _group_by_video(spec: TaskSpec, videos: np.ndarray, frames: np.ndarray, values: np.ndarray) -> dict:
    codes, names = pd.factorize(videos, sort=False)
    order = np.lexsort((frames, codes))
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for idx in np.split(order, bounds):
        video = str(names[codes[idx[0]]])
        v = values[idx]  # VA stays float64, exactly as parsed
        if spec.kind == "multiclass":
            v = v[:, 0].astype(np.int64)
        elif spec.kind == "multilabel":
            v = v.astype(np.int64)
        out[video] = (frames[idx].astype(np.int64), v)
    return out
