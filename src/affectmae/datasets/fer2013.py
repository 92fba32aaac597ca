"""FER2013 (``fer2013.csv``) and FER+ (``fer2013new.csv`` + ``fer2013.csv``) face-image readers.

Both decode every 48x48 grayscale image once into a ``(N, 48, 48) uint8`` array at construction and
return RGB PIL images (the gray channel repeated). Labels are mapped to the Aff-Wild2 expression order
(:data:`affectmae.tasks.EXPRESSIONS`); used for nothing by MAE pretraining.
"""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from affectmae.datasets.face_base import FaceImages
from affectmae.errors import AffectMAEError, InputFormatError

log = logging.getLogger(__name__)

FER_SIZE = 48
FER2013_COLUMNS = ("emotion", "pixels", "Usage")
FER_USAGES = ("Training", "PublicTest", "PrivateTest")
#: FER2013 emotion code (Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral) -> EXPRESSIONS index
FER2013_TO_EXPR = (1, 2, 3, 4, 5, 6, 0)
FERPLUS_EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FERPLUS_COLUMNS = ("Usage", "Image name", *FERPLUS_EMOTIONS, "unknown", "NF")
#: FER+ vote column -> EXPRESSIONS index (contempt goes to Other)
FERPLUS_TO_EXPR = (0, 4, 6, 5, 1, 2, 3, 7)


def open_csv_with_header(path: Path, expected: tuple[str, ...]) -> tuple[csv.reader, Any]:
    """Open a CSV (BOM and CRLF tolerated), check its header; returns (reader, file handle)."""
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputFormatError(path, "file not found") from None
    reader = csv.reader(fh)
    try:
        header = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as err:
        fh.close()
        raise InputFormatError(path, f"cannot read CSV header ({err})", line=1) from None
    if header is None:
        fh.close()
        raise InputFormatError(path, f"empty file; expected the header {','.join(expected)!r}", line=1)
    if tuple(h.strip() for h in header) != expected:
        fh.close()
        raise InputFormatError(
            path, f"wrong header: expected {','.join(expected)!r}, found {','.join(header)!r}", line=1
        )
    return reader, fh


def csv_rows(reader: csv.reader, path: Path, width: int):
    """Yields (line, row) for every non-blank row, checking the number of fields."""
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                raise InputFormatError(path, f"expected {width} columns, found {len(row)}", line=reader.line_num)
            yield reader.line_num, row
    except (csv.Error, UnicodeDecodeError) as err:
        raise InputFormatError(path, f"malformed CSV ({err})", line=reader.line_num) from None


def _decode_pixels(path: Path, line: int, text: str) -> np.ndarray:
    """'p0 p1 ... p2303' -> (48, 48) uint8; InputFormatError naming the line otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (does not raise) when it stops at a bad token
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            bad = next((t for t in text.split() if not t.isdigit()), text[:20])
            raise InputFormatError(path, f"pixels: not an integer: {bad!r}", line=line) from None
    if values.size != FER_SIZE * FER_SIZE:
        raise InputFormatError(path, f"pixels: expected {FER_SIZE * FER_SIZE} values, found {values.size}", line=line)
    if values.min() < 0 or values.max() > 255:
        bad = values[(values < 0) | (values > 255)][0]
        raise InputFormatError(path, f"pixels: value {bad} is outside 0..255", line=line)
    return values.astype(np.uint8).reshape(FER_SIZE, FER_SIZE)


def _check_usage(usage: str | None) -> None:
    if usage is not None and usage not in FER_USAGES:
        raise AffectMAEError(f"unknown FER usage {usage!r}; choose one of {', '.join(FER_USAGES)}")


def read_fer2013(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All rows of ``fer2013.csv``: pixels (N, 48, 48) uint8, FER emotion codes (N,) int64, usages."""
    path = Path(path)
    reader, fh = open_csv_with_header(path, FER2013_COLUMNS)
    pixels, emotions, usages = [], [], []
    with fh:
        for line, (emotion, px, usage) in csv_rows(reader, path, 3):
            if not emotion.strip().isdigit() or int(emotion) > 6:
                raise InputFormatError(path, f"emotion must be an integer 0..6, found {emotion!r}", line=line)
            if usage.strip() not in FER_USAGES:
                raise InputFormatError(path, f"Usage must be one of {', '.join(FER_USAGES)}, found {usage!r}", line=line)
            pixels.append(_decode_pixels(path, line, px))
            emotions.append(int(emotion))
            usages.append(usage.strip())
    if not pixels:
        raise InputFormatError(path, "no image rows after the header", line=2)
    return np.stack(pixels), np.array(emotions, dtype=np.int64), usages


class _GrayFaces(FaceImages):
    """Shared item access for in-memory (N, 48, 48) uint8 images."""

    _pixels: np.ndarray

    def load_image(self, i: int) -> Image.Image:
        return Image.fromarray(self._pixels[i]).convert("RGB")


class FER2013(_GrayFaces):
    """``fer2013.csv`` (columns ``emotion,pixels,Usage``); ``usage`` keeps only Training/PublicTest/PrivateTest."""

    kind = "fer2013"

    def __init__(
        self,
        csv_path: str | Path,
        usage: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        skip_corrupt: bool = True,
    ):
        _check_usage(usage)
        super().__init__(str(csv_path), transform, skip_corrupt)
        pixels, emotions, usages = read_fer2013(csv_path)
        keep = np.array([usage is None or u == usage for u in usages], dtype=bool)
        self._pixels = pixels[keep]
        self._labels = np.array(FER2013_TO_EXPR, dtype=np.int64)[emotions[keep]]
        self.summary.update({"rows": len(usages), "other_usage": int((~keep).sum()), "len": len(self)})


class FERPlus(_GrayFaces):
    """FER+ labels (``fer2013new.csv``, vote counts) on the FER2013 images (``fer2013.csv``, same row order).

    Rows with an empty ``Image name`` or where ``NF`` (not a face) has the most votes are dropped and
    counted. The label is the emotion with the most votes (ties: first column), -1 if ``unknown`` wins.
    ``votes``: (N, 10) int64 counts in ``FERPLUS_COLUMNS[2:]`` order.
    """

    kind = "ferplus"

    def __init__(
        self,
        ferplus_csv: str | Path,
        fer2013_csv: str | Path,
        usage: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        skip_corrupt: bool = True,
    ):
        _check_usage(usage)
        super().__init__(f"{ferplus_csv},{fer2013_csv}", transform, skip_corrupt)
        path = Path(ferplus_csv)
        reader, fh = open_csv_with_header(path, FERPLUS_COLUMNS)
        names, votes, usages = [], [], []
        with fh:
            for line, row in csv_rows(reader, path, len(FERPLUS_COLUMNS)):
                try:
                    counts = [int(float(v)) for v in row[2:]]
                except ValueError:
                    raise InputFormatError(path, f"vote counts must be numbers, found {row[2:]}", line=line) from None
                if min(counts) < 0:
                    raise InputFormatError(path, f"negative vote count in {row[2:]}", line=line)
                names.append(row[1].strip())
                votes.append(counts)
                usages.append(row[0].strip())
        pixels, _emotions, _ = read_fer2013(fer2013_csv)
        if len(names) != len(pixels):
            raise InputFormatError(
                path, f"{len(names)} rows but {fer2013_csv} has {len(pixels)}; FER+ rows must match FER2013 row by row"
            )
        votes_arr = np.array(votes, dtype=np.int64).reshape(-1, len(FERPLUS_COLUMNS) - 2)
        no_name = np.array([not n for n in names], dtype=bool)
        nf = votes_arr[:, -1]
        nf_majority = (nf > 0) & (nf >= votes_arr[:, :-1].max(axis=1)) & ~no_name
        other_usage = np.array([usage is not None and u != usage for u in usages], dtype=bool)
        keep = ~no_name & ~nf_majority & ~other_usage
        self.votes = votes_arr[keep]
        self._pixels = pixels[keep]
        emo = self.votes[:, : len(FERPLUS_EMOTIONS)]
        best = emo.argmax(axis=1)
        labels = np.array(FERPLUS_TO_EXPR, dtype=np.int64)[best]
        labels[self.votes[:, len(FERPLUS_EMOTIONS)] > emo.max(axis=1)] = -1  # "unknown" has the most votes
        self._labels = labels
        self.summary.update(
            {
                "rows": len(names),
                "empty_image_name": int(no_name.sum()),
                "nf_majority": int(nf_majority.sum()),
                "other_usage": int((other_usage & ~no_name & ~nf_majority).sum()),
                "len": len(self),
            }
        )
        if no_name.any() or nf_majority.any():
            log.info(
                "FER+ %s: dropped %d rows with no image name and %d where NF has the most votes",
                path, int(no_name.sum()), int(nf_majority.sum()),
            )
