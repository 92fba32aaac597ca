"""The per-(frame, face) table of ``analyze``: its columns and dtypes, how it is built from tracks, and how
it is written and read back.

    df = read_predictions("out/clip.csv")     # the dtypes analyze returned (AU columns Int8, not float64)

Column groups, in order: ``input, frame, time_s, face_id, face_detected, analyzed``, the box
``x1, y1, x2, y2``, ``det_score``, the 5 landmarks (``eye_l_x, eye_l_y, eye_r_x, eye_r_y, nose_x, nose_y,
mouth_l_x, mouth_l_y, mouth_r_x, mouth_r_y``; l/r = left/right in the image), ``pose_roll``, ``valence,
arousal``, ``expr_<name>`` x8, ``expression``, ``<AU>_prob`` x12, ``<AU>`` x12 (0/1, Int8, <NA> without a
face). ``names="openface"`` writes OpenFace-style names (see :data:`OPENFACE_NAMES`).
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.io import atomic_path
from affectmae.tasks import ACTION_UNITS, EXPRESSIONS

EXPR_COLUMNS = [f"expr_{name}" for name in EXPRESSIONS]
AU_PROB_COLUMNS = [f"{au}_prob" for au in ACTION_UNITS]
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
LANDMARK_NAMES = ["eye_l", "eye_r", "nose", "mouth_l", "mouth_r"]  # the detector's 5-point order
LANDMARK_COLUMNS = [f"{name}_{axis}" for name in LANDMARK_NAMES for axis in ("x", "y")]
# float columns carried per detection and interpolated between analysed frames
VALUE_COLUMNS = (BOX_COLUMNS + ["det_score"] + LANDMARK_COLUMNS + ["pose_roll", "valence", "arousal"]
                 + EXPR_COLUMNS + AU_PROB_COLUMNS)
TABLE_COLUMNS = (["input", "frame", "time_s", "face_id", "face_detected", "analyzed"] + BOX_COLUMNS + ["det_score"]
                 + LANDMARK_COLUMNS + ["pose_roll", "valence", "arousal"] + EXPR_COLUMNS + ["expression"]
                 + AU_PROB_COLUMNS + list(ACTION_UNITS))
DTYPES = {
    "input": object, "frame": np.int64, "time_s": np.float64, "face_id": np.int64, "face_detected": bool,
    "analyzed": bool, "expression": object,
    **{c: np.float32 for c in VALUE_COLUMNS}, **{au: "Int8" for au in ACTION_UNITS},
}
# our name -> OpenFace 2.x CSV name, for names="openface" (frame becomes 1-based there, success 0/1,
# pose_Rz radians; AU probabilities keep their names: OpenFace's AU*_r are 0-5 intensities, not probabilities)
OPENFACE_NAMES = {"frame": "frame", "time_s": "timestamp", "det_score": "confidence", "face_detected": "success",
                  "pose_roll": "pose_Rz", **{au: f"{au}_c" for au in ACTION_UNITS}}


def pose_roll(landmarks: np.ndarray) -> np.ndarray:
    """In-plane head rotation in degrees from ``landmarks (N, 5, 2)`` -> ``(N,)``: the angle of the line from
    the left-in-image eye to the right-in-image eye; positive when the face is turned clockwise on screen."""
    d = landmarks[:, 1] - landmarks[:, 0]
    return np.degrees(np.arctan2(d[:, 1], d[:, 0])).astype(np.float32)


def expand_track(frames: np.ndarray, values: np.ndarray, stride: int, n_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Analysed frames ``frames (n,)`` with ``values (n, C)`` -> every covered frame.

    Frame ``a + j`` (0 < j < stride) is interpolated between analysed frames ``a`` and ``a + stride`` when
    the face was seen at both, else holds the value at ``a``. Returns (frame (M,), values (M, C), analysed (M,)).
    """
    if stride == 1:
        return frames, values, np.ones(len(frames), dtype=bool)
    out_frames, out_values, analysed = [], [], []
    offsets = np.arange(stride)
    next_seen = np.zeros(len(frames), dtype=bool)
    next_seen[:-1] = frames[1:] == frames[:-1] + stride
    for i, a in enumerate(frames):
        span = offsets[a + offsets < n_frames]
        w = (span / stride)[:, None]
        nxt = values[i + 1] if next_seen[i] else values[i]
        out_frames.append(a + span)
        out_values.append(values[i][None, :] * (1 - w) + nxt[None, :] * w)
        analysed.append(span == 0)
    return np.concatenate(out_frames), np.concatenate(out_values), np.concatenate(analysed)


def _part_labels(values: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values (n, len(VALUE_COLUMNS))`` -> (expression label (n,) object, AU 0/1 (n, 12) int8 with -1 for
    none): from the values as computed, before they are stored as float32."""
    expr = values[:, [VALUE_COLUMNS.index(c) for c in EXPR_COLUMNS]]
    has = ~np.isnan(expr).any(axis=1)
    label = np.full(len(values), "", dtype=object)
    label[has] = np.array(EXPRESSIONS, dtype=object)[expr[has].argmax(axis=1)]
    au = values[:, [VALUE_COLUMNS.index(c) for c in AU_PROB_COLUMNS]]
    binary = np.where(np.isnan(au), -1, au >= thresholds[None, :]).astype(np.int8)
    return label, binary


def _track_values(rows, det_boxes, det_scores, det_landmarks, predictions: dict) -> np.ndarray:
    """The VALUE_COLUMNS of one track's detections ``rows``, (n, C)."""
    n = len(rows)
    lms = det_landmarks[rows]
    cols = [det_boxes[rows], det_scores[rows, None], lms.reshape(n, 10), pose_roll(lms)[:, None]]
    cols.append(predictions["va"][rows] if "va" in predictions else np.full((n, 2), np.nan))
    cols.append(predictions["expr"][rows] if "expr" in predictions else np.full((n, len(EXPRESSIONS)), np.nan))
    cols.append(predictions["au"][rows] if "au" in predictions else np.full((n, len(ACTION_UNITS)), np.nan))
    return np.concatenate(cols, axis=1)


def build_table(det_frames, det_ids, det_boxes, det_scores, det_landmarks, predictions, frame_times, stride,
                au_thresholds, input_name: str = "", face_ids: dict[int, int] | None = None) -> pd.DataFrame:
    """Assemble the per-(frame, face) table; frames no track covers get one ``face_detected=False`` row.

    det_*: one entry per detection on an analysed frame (``det_boxes (n, 4)``, ``det_landmarks (n, 5, 2)``),
    ``det_ids (n,)`` its track; predictions: ``{"va": (n, 2), "expr": (n, 8), "au": (n, 12)}``, row i for
    detection i (a task the model lacks is absent: NaN columns). face_ids: ``{track_id: face_id}`` (the
    person each track belongs to, :func:`.reid.link_tracks`); default: the track id. Values are interpolated within a track only, never across two tracks of one person.
    Built from arrays, one track at a time, so its memory is the table's plus one track's values.
    """
    n_frames = len(frame_times)
    thresholds = np.asarray(au_thresholds if au_thresholds is not None else [0.5] * len(ACTION_UNITS), dtype=np.float64)
    order = np.argsort(det_ids, kind="stable")  # detections grouped by track
    ids_sorted = det_ids[order]
    starts = np.flatnonzero(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]]) if len(order) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(order)] if len(order) else starts
    bounds = dict(zip(ids_sorted[starts].tolist(), zip(starts, ends, strict=True), strict=True))
    parts = []  # (frame, face_id, face_detected, analyzed, values float32, label, AU 0/1)
    covered = np.zeros(n_frames, dtype=bool)
    for fid, (begin, end) in bounds.items():  # tracks in id order
        rows = order[begin:end]
        values = _track_values(rows, det_boxes, det_scores, det_landmarks, predictions)
        frames, values, analysed = expand_track(det_frames[rows], values, stride, n_frames)
        covered[frames] = True
        person = fid if face_ids is None else face_ids[fid]
        parts.append((frames, np.full(len(frames), person, dtype=np.int64), np.ones(len(frames), dtype=bool),
                      analysed, values.astype(np.float32), *_part_labels(values, thresholds)))
    empty = np.flatnonzero(~covered)
    if len(empty) or not parts:
        values = np.full((len(empty), len(VALUE_COLUMNS)), np.nan)
        parts.append((empty, np.full(len(empty), -1, dtype=np.int64), np.zeros(len(empty), dtype=bool),
                      empty % stride == 0, values.astype(np.float32), *_part_labels(values, thresholds)))
    frame, face_id, detected, analyzed, values, label, binary = (np.concatenate(p) for p in zip(*parts, strict=True))
    del parts
    keep = np.lexsort((face_id, frame))  # by frame, then face id; stable
    columns = {"input": pd.Series(np.full(len(keep), input_name, dtype=object), dtype=object), "frame": frame[keep],
               "time_s": np.asarray(frame_times, dtype=np.float64)[frame[keep]], "face_id": face_id[keep],
               "face_detected": detected[keep], "analyzed": analyzed[keep]}
    values, binary = values[keep], binary[keep]
    for j, name in enumerate(VALUE_COLUMNS):
        columns[name] = values[:, j]
    del values
    columns["expression"] = pd.Series(label[keep], dtype=object)
    for j, au in enumerate(ACTION_UNITS):
        columns[au] = pd.arrays.IntegerArray(np.maximum(binary[:, j], 0), binary[:, j] < 0)
    return pd.DataFrame({c: columns[c] for c in TABLE_COLUMNS})


def csv_frame(df: pd.DataFrame, names: str = "affectmae") -> pd.DataFrame:
    """The table as its CSV holds it: ``time_s`` as text with 6 decimals, and with ``names="openface"`` 1-based
    frames, 0/1 ``face_detected``, roll in radians and OpenFace's column names. ``df`` is not changed."""
    if names not in ("affectmae", "openface"):
        raise AffectMAEError(f"column names must be 'affectmae' or 'openface', got {names!r}")
    out = df.copy(deep=False)  # columns are replaced below, never written into: the table stays as it is
    out["time_s"] = out["time_s"].map("{:.6f}".format)
    if names == "openface":
        out["frame"] = out["frame"] + 1
        out["face_detected"] = out["face_detected"].astype(np.int8)
        out["pose_roll"] = np.radians(out["pose_roll"])
        out.columns = [OPENFACE_NAMES.get(c, c) for c in out.columns]
    return out


def write_table(df: pd.DataFrame, path: str | Path, names: str = "affectmae") -> Path:
    """Write the table as CSV (atomically). ``names``: ``"affectmae"`` (default) or ``"openface"``.

    Floats keep 5 significant digits (``%.5g``), ``time_s`` microseconds (so an hour-long video keeps frame
    precision); missing values are empty fields; text is quoted where it holds a comma, a quote or a line
    break. The bytes are those of pandas' ``to_csv(index=False, float_format="%.5g")``, written column by
    column with Python's own number formatting, about 4x faster (benchmarks/bench_table.py, docs/analyze.md).
    """
    out = csv_frame(df, names)
    path = Path(path)
    with atomic_path(path) as tmp:
        if not all(_csv_kind(out[c]) for c in out.columns):  # a column of another kind: pandas writes it all
            out.to_csv(tmp, index=False, float_format="%.5g")
            return path
        with open(tmp, "w", newline="") as fh:
            fh.write(",".join(_csv_text(pd.Series([str(c) for c in out.columns], dtype=object))) + os.linesep)
            for begin in range(0, len(out), _CSV_CHUNK):  # a chunk of rows at a time: memory stays small
                part = out.iloc[begin:begin + _CSV_CHUNK]
                fields = [_csv_field(part[c]) for c in part.columns]
                fh.write("".join(",".join(row) + os.linesep for row in zip(*fields, strict=True)))
    return path


_CSV_CHUNK = 512
_MAY_NEED_QUOTES = re.compile(r'[^\w .:/+-]')  # other texts go through the csv module


def _csv_kind(column: pd.Series) -> str | None:
    """How :func:`_csv_field` writes ``column``: "bool", "int", "float", "masked", "text", or None (another kind)."""
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype) and isinstance(dtype, np.dtype):
        return "bool"
    if isinstance(dtype, pd.api.extensions.ExtensionDtype):
        if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            return "masked"
        return "text" if pd.api.types.is_string_dtype(dtype) else None
    if dtype.kind in "iu":
        return "int"
    if dtype.kind == "f":
        return "float"
    return "text" if dtype == object else None


def _csv_field(column: pd.Series) -> list[str]:
    """The CSV field of every value of ``column``, as pandas' ``to_csv`` writes it (``float_format="%.5g"``,
    missing values empty, minimal quoting)."""
    kind = _csv_kind(column)
    if kind == "bool":
        return np.where(column.to_numpy(), "True", "False").tolist()
    if kind == "int":
        return [str(v) for v in column.to_numpy().tolist()]
    if kind == "float":
        values = column.to_numpy()
        out = ["%.5g" % v for v in values.tolist()]
        for i in np.flatnonzero(np.isnan(values)).tolist():
            out[i] = ""
        return out
    if kind == "masked":
        missing = column.isna().to_numpy()
        values = column.to_numpy(dtype=object, na_value=None)
        return ["" if m else str(v) for v, m in zip(values.tolist(), missing.tolist(), strict=True)]
    return _csv_text(column)


def _csv_text(column: pd.Series) -> list[str]:
    """Text fields: missing values empty, each distinct text quoted as the csv module quotes it for pandas
    (minimal quoting, quotes doubled, line terminator ``os.linesep``)."""
    missing = column.isna().to_numpy()
    fields: dict[str, str] = {}
    out = []
    for v, m in zip(column.to_numpy(dtype=object).tolist(), missing.tolist(), strict=True):
        text = "" if m else str(v)
        if text not in fields:
            fields[text] = _quoted(text)
        out.append(fields[text])
    return out


def _quoted(text: str) -> str:
    """``text`` as one CSV field: through the csv writer pandas uses (an empty second field, so that an empty
    text is not written as the quoted empty row of a single field)."""
    if not _MAY_NEED_QUOTES.search(text):
        return text
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=os.linesep, quoting=csv.QUOTE_MINIMAL).writerow([text, ""])
    return buffer.getvalue()[: -len("," + os.linesep)]


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a table written by ``analyze`` (CSV in either naming, or Parquet) with its original dtypes."""
    path = Path(path)
    if not path.is_file():
        raise AffectMAEError(f"predictions file not found: {path}")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        try:
            df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"input": str, "expression": str})
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise InputFormatError(path, f"not a CSV table: {err}") from None
    if "timestamp" in df.columns and "success" in df.columns:  # OpenFace-style names
        df = df.rename(columns={v: k for k, v in OPENFACE_NAMES.items()})
        df["frame"] = df["frame"] - 1
        df["pose_roll"] = np.degrees(df["pose_roll"])
        df["face_detected"] = df["face_detected"].astype(bool)
    missing = [c for c in TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise InputFormatError(path, f"not an analyze table: missing columns {', '.join(missing[:5])}"
                               + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    df["input"] = df["input"].fillna("")
    df["expression"] = df["expression"].fillna("")
    if df["face_detected"].dtype == object:
        df["face_detected"] = df["face_detected"].map({"True": True, "False": False, True: True, False: False})
        df["analyzed"] = df["analyzed"].map({"True": True, "False": False, True: True, False: False})
    try:
        return df[TABLE_COLUMNS].astype(DTYPES)
    except (ValueError, TypeError) as err:
        raise InputFormatError(path, f"a column has values of the wrong type: {err}") from None
