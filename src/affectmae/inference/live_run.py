"""``affectmae live SOURCE``: rows written as frames are analysed, a summary at the end; and
``analyze --causal``, the same analysis over a file into analyze's outputs.

    summary = run_live(None, ["detect_every=5"], source="/dev/video0", model_dir="MODEL_DIR", out="rows.csv")

Rows go to standard output (``out="-"``, JSON lines unless ``format=csv``) or to a ``.csv`` / ``.jsonl`` file,
each row flushed as it is written, so a reader following the file sees whole rows only. Ctrl-C, the end of
the stream, a stalled stream or a broken one all close the files (the overlay video too) and write the
summary (``summary`` path, atomically, and one line on standard error); a stalled or broken stream then ends
with its one-line error. Settings: :class:`LiveConfig` for the source and outputs, :class:`AnalyzeConfig`
``key=value`` settings for detection and tracking.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from affectmae.config import build_config
from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.inference.table import ACTION_UNITS, DTYPES, OPENFACE_NAMES, TABLE_COLUMNS, _quoted
from affectmae.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl")


@dataclass
class LiveConfig:
    """Settings of ``affectmae live`` (what to read, where rows go); detection and tracking settings are
    :class:`~affectmae.inference.pipeline.AnalyzeConfig`'s."""

    source: str = ""  # /dev/videoN or N (camera), a URL (rtsp://, http://, udp://...), - (standard input), a file
    model_dir: str = ""  # MODEL_DIR with a streaming model (`affectmae train ... causal=true`, then export)
    out: str = "-"  # rows: - (standard output), or a .csv / .jsonl file
    format: str = ""  # csv | jsonl; empty: from out's suffix (jsonl on standard output)
    realtime: bool = False  # a file: hand out frames at the video's own rate (else as fast as they decode)
    queue: int = field(default=2, metadata={"min": 1})  # frames waiting for the analysis; a new one pushes out the oldest
    drop: bool = True  # false: never drop a frame, the source waits (files only; a camera would lag behind)
    timeout: float = field(default=10.0, metadata={"min": 0})  # seconds without a frame before the stream counts as stalled (0: wait forever)
    input_format: str | None = None  # container on standard input or of a device (matroska, nut, mpegts, v4l2...); None: probed
    raw_size: str | None = None  # WIDTHxHEIGHT: standard input carries raw rgb24 frames of this size
    fps: float | None = field(default=None, metadata={"min": 0})  # frame rate of raw frames (default 25), or of a stream without timestamps
    max_frames: int = field(default=0, metadata={"min": 0})  # stop after N frames (0: at the end of the stream)
    video_out: str = ""  # an MP4 of the analysed frames with box, id, expression and valence/arousal drawn
    summary: str = ""  # a JSON file for the summary (it is also logged at the end)
    encoder_split: str = "auto"  # encoder blocks run beside the detection (0..depth), or auto: balance the stages


def _format_of(cfg: LiveConfig) -> str:
    fmt = cfg.format or ("csv" if cfg.out.lower().endswith(".csv") else "jsonl")
    if fmt not in FORMATS:
        raise AffectMAEError(f"format must be one of {', '.join(FORMATS)}, got {cfg.format!r}")
    return fmt


class RowWriter:
    """Rows as CSV (the text ``write_table`` writes, in either naming) or JSON lines, flushed per row."""

    def __init__(self, path: str, fmt: str, names: str = "affectmae"):
        self.fmt, self.names = fmt, names
        self.path = path
        if path == "-":
            self.fh, self._own = sys.stdout, False
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fh, self._own = open(path, "w", newline="", encoding="utf-8"), True
        if fmt == "csv":
            header = [OPENFACE_NAMES.get(c, c) if names == "openface" else c for c in TABLE_COLUMNS]
            self._write(",".join(_quoted(c) for c in header) + os.linesep)

    def _write(self, text: str) -> None:
        self.fh.write(text)
        self.fh.flush()

    def write(self, row: dict) -> None:
        self._write(csv_line(row, self.names) if self.fmt == "csv" else json_line(row))

    def close(self) -> None:
        if self._own:
            self.fh.close()
        else:
            self.fh.flush()


def csv_line(row: dict, names: str = "affectmae") -> str:
    """One row as ``write_table`` writes it (``%.5g`` floats, 6-decimal ``time_s``, empty missing values)."""
    fields = []
    for col in TABLE_COLUMNS:
        v = row[col]
        if col == "time_s":
            fields.append(f"{v:.6f}")
        elif names == "openface" and col == "frame":
            fields.append(str(v + 1))
        elif names == "openface" and col == "face_detected":
            fields.append("1" if v else "0")
        elif isinstance(v, bool):
            fields.append("True" if v else "False")
        elif v is None:
            fields.append("")
        elif isinstance(v, int):
            fields.append(str(v))
        elif isinstance(v, float):
            if names == "openface" and col == "pose_roll":
                v = float(np.radians(np.float32(v)))
            fields.append("" if math.isnan(v) else "%.5g" % v)
        else:
            fields.append(_quoted(str(v)))
    return ",".join(fields) + os.linesep


def json_line(row: dict) -> str:
    """One row as a JSON object (affectmae's column names; missing values null)."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def rows_to_table(rows: list[dict]) -> pd.DataFrame:
    """Collected rows -> the table with analyze's dtypes."""
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for au in ACTION_UNITS:  # the Int8 columns
        df[au] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v) for v in df[au]],
                          dtype="Int8")
    return df.astype(DTYPES)


class OverlayWriter:
    """The analysed frames with their faces drawn (:func:`~affectmae.inference.plots.draw_faces`), as an MP4
    at the source's rate, written next to ``path`` and renamed into place when closed."""

    def __init__(self, path: str, fps: float, stack: ExitStack):
        self.path, self.fps, self.stack = Path(path), float(fps or 25.0), stack
        self.writer = None

    def __call__(self, frame, rows: list[dict]) -> None:
        from affectmae.inference.plots import draw_faces
        from affectmae.media.video import VideoWriter

        height, width = frame.rgb.shape[0] // 2 * 2, frame.rgb.shape[1] // 2 * 2
        if self.writer is None:
            tmp = self.stack.enter_context(atomic_path(self.path))
            self.writer = VideoWriter(tmp.with_suffix(".mp4"), (width, height), fps=self.fps)
            self.tmp = tmp
        img = np.array(frame.rgb[:height, :width])
        self.writer.write(draw_faces(img, rows))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            os.replace(self.writer.path, self.tmp)  # then atomic_path renames it into place


def live(cfg: LiveConfig, analyze_cfg) -> dict:
    """The ``affectmae live`` stage: analyse ``cfg.source`` with ``analyze_cfg`` settings, writing rows as they
    come; returns the summary (also written to ``cfg.summary``). Raises the stream's error, after closing."""
    from affectmae.inference.pipeline import Analyzer
    from affectmae.inference.sources import parse_size

    if not cfg.source or not cfg.model_dir:
        raise AffectMAEError("live needs a SOURCE and a MODEL_DIR (--model)")
    fmt = _format_of(cfg)
    source_options = dict(realtime=cfg.realtime, input_format=cfg.input_format, raw_size=parse_size(cfg.raw_size),
                          fps=cfg.fps)
    error: BaseException | None = None
    # the causal loop's settings (detect_max_side 320 unless given) and its model check, as analyze --causal
    analyze_cfg = dataclasses.replace(analyze_cfg, causal=True)
    with Analyzer(cfg.model_dir, analyze_cfg) as analyzer, ExitStack() as stack:
        stream = analyzer.stream(cfg.source, drop=cfg.drop, queue=cfg.queue, timeout=cfg.timeout,
                                 max_frames=cfg.max_frames, encoder_split=cfg.encoder_split, **source_options)
        overlay = OverlayWriter(cfg.video_out, stream.source.fps, stack) if cfg.video_out else None
        stream.on_frame = overlay
        writer = RowWriter(cfg.out, fmt, analyze_cfg.column_names)
        log.info("live: %s -> %s (%s); Ctrl-C stops", stream.source.name, cfg.out, fmt)
        try:
            for row in stream:
                writer.write(row)
        except KeyboardInterrupt:
            pass  # the usual way to stop a camera: close everything as at the end of a stream
        except AffectMAEError as err:
            error = err
        finally:
            writer.close()
            if overlay is not None:
                overlay.close()
        summary = stream.summary()
    summary.update({"model_dir": str(cfg.model_dir), "out": cfg.out, "format": fmt,
                    "error": None if error is None else str(error)})
    if cfg.summary:
        atomic_write_text(cfg.summary, json.dumps(summary, indent=2) + "\n")
    lat = summary["latency_ms"]
    log.info("live: %s: %d frames, %d analysed, %d dropped (%.1f %%), %d rows; latency ms p50 %s p95 %s max %s",
             summary["ended"], summary["frames"], summary["frames_analyzed"], summary["frames_dropped"],
             100 * summary["dropped_share"], summary["rows"], lat["p50"], lat["p95"], lat["max"])
    if error is not None:
        raise error
    return summary


def run_live(config: str | Path | None = None, overrides: list[str] | None = None, **explicit) -> dict:
    """``affectmae live``: ``key=value`` overrides that name :class:`LiveConfig` fields set it, the others
    :class:`~affectmae.inference.pipeline.AnalyzeConfig` (defaults < ``config`` file < overrides < flags)."""
    from affectmae.config import parse_overrides
    from affectmae.inference.pipeline import AnalyzeConfig

    updates = parse_overrides(overrides or [])
    live_keys = {f.name for f in dataclasses.fields(LiveConfig)}
    cfg = build_config(LiveConfig, None, {k: v for k, v in updates.items() if k in live_keys}, **explicit)
    analyze_cfg = build_config(AnalyzeConfig, config, {k: v for k, v in updates.items() if k not in live_keys})
    return live(cfg, analyze_cfg)


def analyze_causal(video, analyzer, out_dir, video_out, stem, progress) -> pd.DataFrame:
    """``analyze --causal``: the live loop over a file without dropping a frame, into analyze's outputs
    (table, summary, config, plots); the table equals ``live``'s rows for that file when nothing was dropped."""
    from affectmae.inference.video_pass import STAGES, _write_results
    from affectmae.progress import progress_bar

    cfg = analyzer.config
    if cfg.stride != 1:
        raise AffectMAEError(f"analyze --causal analyses every frame, as live does (stride 1), got stride={cfg.stride}")
    started = time.perf_counter()
    stream = analyzer.stream(video, drop=False, timeout=0, max_frames=cfg.max_frames)
    bar = progress if progress is not None else progress_bar(total=stream.source.reader.info.n_frames or None,
                                                           unit="frame", desc=Path(video).name)
    rows, last = [], -1
    for row in stream:
        rows.append(row)
        if row["frame"] != last:
            bar.update(1)
            last = row["frame"]
    if progress is None:
        bar.close()
    if not rows:
        raise InputFormatError(video, "no frame could be decoded (the file is truncated or damaged)")
    df = rows_to_table(rows)
    live_summary = stream.summary()
    summary = {"video": str(video), **stream.source.summary(), "fps": stream.source.fps, "causal": True,
               "frames_analyzed": live_summary["frames_analyzed"],
               "frames_without_face": int((~df.groupby("frame")["face_detected"].any()).sum()),
               "faces": live_summary["faces"], "tracks": live_summary["tracks"],
               "detections": live_summary["detections"], "shot_cuts": stream.frames.tracker.n_cuts, "stride": 1,
               "max_frames": cfg.max_frames, "device": str(analyzer.device), "detector": analyzer.detector.name,
               "detect_every": cfg.detect_every, "detector_calls": live_summary["detector_calls"]}
    timings = dict.fromkeys(STAGES, 0.0)
    timings.update(stream.frames.timings)
    _write_results(video, df, cfg, summary, timings, started, out_dir, video_out, stem)
    df.attrs["summary"] = summary
    return df

