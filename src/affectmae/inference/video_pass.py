"""One video through the stages of ``affectmae analyze`` (see :mod:`affectmae.inference.pipeline`).

:func:`analyze_one` streams the frames once: decode, detect (key frames and patches around known faces),
align, describe and track every face, and hand each crop to the encoder. It then runs the temporal model
per track, links tracks into people, builds the per-(frame, face) table and writes the outputs.
``timings`` collects the seconds spent in each of :data:`STAGES`.
"""

from __future__ import annotations

import json
import logging
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from affectmae.config import save_config
from affectmae.errors import InputFormatError
from affectmae.face.align import CROP_SIZE, align_face
from affectmae.face.reid import DESCRIPTOR_DIM, co_occurring_pairs, face_descriptor, link_tracks
from affectmae.face.tracking import FaceTracker, ShotCutDetector
from affectmae.inference.table import build_table, write_table
from affectmae.io import atomic_path, atomic_write_text
from affectmae.media.video import VideoReader
from affectmae.progress import progress_bar

log = logging.getLogger(__name__)

STAGES = ("decode", "detect", "track", "align", "encode", "temporal", "write")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _gap_weights(pos: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For positions ``grid`` between known positions ``pos (n,)``: (left, right) indices into ``pos`` and the
    weight ``(len(grid), 1)`` of the right one."""
    right = np.clip(np.searchsorted(pos, grid), 1, len(pos) - 1) if len(pos) > 1 else np.zeros(len(grid), dtype=int)
    left = right - 1 if len(pos) > 1 else right
    span = np.maximum(pos[right] - pos[left], 1)
    return left, right, np.clip((grid - pos[left]) / span, 0.0, 1.0)[:, None]


def fill_gaps(values: np.ndarray, pos: np.ndarray, length: int) -> np.ndarray:
    """``values (n, D)`` known at increasing positions ``pos (n,)`` -> ``(length, D)``, linearly interpolated
    in between (the temporal model expects a feature on every frame, with a mask saying which are real)."""
    if len(pos) == length:
        return values
    left, right, w = _gap_weights(pos, np.arange(length))
    return (values[left] * (1 - w) + values[right] * w).astype(values.dtype)


class TrackFeatures:
    """The ``(length, D)`` float32 feature sequence of one track as :func:`fill_gaps` makes it, read from the
    feature file slice by slice (``seq[a:b]``, as ``predict_sequence`` reads its windows), so an hour-long
    track never sits in memory whole. ``rows (n,)``: the track's rows in ``store``
    (:class:`.crop_encoder.FeatureRows`), at positions ``pos (n,)`` of the analysed-frame grid."""

    ndim = 2

    def __init__(self, store, rows: np.ndarray, pos: np.ndarray, length: int):
        self.store, self.rows, self.pos = store, rows, pos
        self.shape = (int(length), int(store.dim))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise IndexError("TrackFeatures takes slices only")
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise IndexError("TrackFeatures takes contiguous slices only")
        stop = max(start, stop)
        if len(self.pos) == self.shape[0]:  # no gap: the rows themselves
            return self.store.read(self.rows[start:stop]).astype(np.float32)
        left, right, w = _gap_weights(self.pos, np.arange(start, stop))
        need = np.unique(np.concatenate([left, right]))
        values = self.store.read(self.rows[need]).astype(np.float32)
        at_left, at_right = values[np.searchsorted(need, left)], values[np.searchsorted(need, right)]
        return (at_left * (1 - w) + at_right * w).astype(np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def _predict_tracks(model, track_ids: np.ndarray, frames: np.ndarray, store, stride: int) -> dict[str, np.ndarray]:
    """Temporal model per track over the grid of analysed frames; ``store``: the features of every detection
    (:class:`.crop_encoder.FeatureRows`, row i = detection i). Returns ``{task: (n, C) float32}``, row i for
    detection i: a few large arrays rather than small ones per track, whose interleaving with the model's
    temporaries kept the allocator from reusing memory (RSS grew with the number of tracks)."""
    out: dict[str, np.ndarray] = {}
    order = np.argsort(track_ids, kind="stable")  # detections grouped by track, each group in frame order
    ids_sorted = track_ids[order]
    starts = np.flatnonzero(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]])
    for begin, end in zip(starts, np.r_[starts[1:], len(order)], strict=True):
        rows = order[begin:end]
        pos = (frames[rows] - frames[rows[0]]) // stride  # position on the analysed-frame grid
        length = int(pos[-1]) + 1
        mask = np.zeros(length, dtype=bool)
        mask[pos] = True
        preds = model.predict_sequence(TrackFeatures(store, rows, pos, length), mask)  # {task: (length, C)}
        for task, values in preds.items():
            values = _as_numpy(values)
            if task not in out:
                out[task] = np.full((len(track_ids), values.shape[1]), np.nan, dtype=np.float32)
            out[task][rows] = values[pos]
    return out


_RECORD = np.dtype([("frame", np.int64), ("id", np.int64), ("box", np.float32, (4,)), ("score", np.float32),
                    ("landmarks", np.float32, (5, 2))])  # one detection, 76 bytes
_BLOCK = 4096  # detections per block of _Detections


@dataclass
class _Detections:
    """Every kept detection of a video in order (frame, track id, box, score, landmarks) as 76-byte records in
    blocks of :data:`_BLOCK`, and per track the sum of its crops' appearance descriptors (for re-id)."""

    blocks: list = field(default_factory=list)
    count: int = 0
    desc_sums: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, frame_index: int, fid: int, det) -> None:
        if self.count == len(self.blocks) * _BLOCK:
            self.blocks.append(np.zeros(_BLOCK, dtype=_RECORD))
        record = self.blocks[-1][self.count % _BLOCK]
        record["frame"], record["id"], record["box"] = frame_index, fid, det.box
        record["score"], record["landmarks"] = det.score, det.landmarks
        self.count += 1

    def add_descriptors(self, ids, descs: np.ndarray) -> None:
        for fid, desc in zip(ids, descs, strict=True):
            if fid not in self.desc_sums:
                self.desc_sums[fid] = np.zeros(DESCRIPTOR_DIM, dtype=np.float32)
            self.desc_sums[fid] += desc

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(frames (M,) int64, ids (M,) int64, boxes (M, 4), scores (M,), landmarks (M, 5, 2)) float32."""
        records = np.concatenate(self.blocks)[: self.count] if self.blocks else np.zeros(0, dtype=_RECORD)
        return tuple(np.ascontiguousarray(records[name]) for name in ("frame", "id", "box", "score", "landmarks"))


def _process_chunk(chunk: list, chunk_cuts: list[bool], faces: "FacePass", tracker: FaceTracker,
                   found: _Detections, timings: dict) -> None:
    """Detect faces on a chunk of analysed frames (one key frame, then patches), align, describe and track
    each face and hand its crop to ``faces.crops``."""
    cfg, encoder = faces.config, faces.crops
    t1 = time.perf_counter()
    per_frame = faces.keyframes.detect_chunk([f.rgb for f in chunk], chunk_cuts)
    timings["detect"] += time.perf_counter() - t1
    for frame, dets, cut in zip(chunk, per_frame, chunk_cuts, strict=True):
        if cfg.max_faces:
            dets = dets[: cfg.max_faces]
        t2 = time.perf_counter()
        crops = [align_face(frame.rgb, d.landmarks, CROP_SIZE, cfg.align_margin) for d in dets]
        descs = np.stack([face_descriptor(c) for c in crops]) if cfg.reid and crops else None  # (N, D)
        t3 = time.perf_counter()
        ids = tracker.update(frame.index, dets, cut=cut, descriptors=descs)
        if descs is not None:  # appearance of each track (re-id)
            found.add_descriptors(ids, descs)
        timings["align"] += t3 - t2
        timings["track"] += time.perf_counter() - t3
        for det, fid, crop in zip(dets, ids, crops, strict=True):
            found.add(frame.index, fid, det)
            encoder.add(crop)


@dataclass
class FacePass:
    """What one pass over a video's faces needs: the settings (an ``AnalyzeConfig``: stride, max_frames,
    align_margin, tracking and re-id), the key-frame detector, where the aligned crops go (``crops``:
    ``reset(timings)``, ``add(crop)``, ``feature_rows()``; the encoder for ``analyze``) and how the video is
    opened (``open_reader(path)``: a :class:`~affectmae.media.video.VideoReader` or a reader like it)."""

    config: object
    keyframes: object
    crops: object
    open_reader: object = VideoReader


def face_pass(video, faces: FacePass, timings: dict, progress=None) -> tuple:
    """Stream the frames once: detect, align, describe and track every face, hand each crop to ``faces.crops``.
    Returns (detections, time of every decoded frame, ``faces.crops.feature_rows()``, video summary, tracker);
    ``timings`` gains the seconds of each of :data:`STAGES`."""
    cfg = faces.config
    tracker = FaceTracker(max_age=cfg.max_age, min_appearance=cfg.reid_min_appearance)
    cuts = ShotCutDetector(cfg.cut_threshold)
    faces.crops.reset(timings)
    faces.keyframes.reset()
    found, frame_times = _Detections(), array("d")  # 8 bytes per frame
    with faces.open_reader(video) as reader:
        stream = reader.frames(cfg.stride)
        total = min(filter(None, (reader.info.n_frames, cfg.max_frames)), default=None)
        bar = progress if progress is not None else progress_bar(total=total, unit="frame", desc=Path(video).name)
        chunk, chunk_cuts = [], []  # analysed frames waiting for their key frame (at most detect_every)
        while True:
            t0 = time.perf_counter()
            frame = next(stream, None) if not cfg.max_frames or len(frame_times) < cfg.max_frames else None
            ended = frame is None
            timings["decode"] += time.perf_counter() - t0
            if not ended:
                bar.update(1)
                frame_times.append(frame.time_s)
                if frame.rgb is None:
                    continue
                t1 = time.perf_counter()
                chunk.append(frame)
                chunk_cuts.append(cuts.is_cut(frame.rgb))
                timings["track"] += time.perf_counter() - t1
                if len(chunk) < faces.keyframes.every:
                    continue
            if not chunk:
                break
            _process_chunk(chunk, chunk_cuts, faces, tracker, found, timings)
            chunk, chunk_cuts = [], []
            if ended:
                break
        if progress is None:
            bar.close()
        feats = faces.crops.feature_rows()  # the encoder's: on disk; None without faces
        summary = {"video": str(video), **reader.summary(), "fps": reader.info.fps,
                   "rotation": reader.info.rotation, "size": [reader.info.width, reader.info.height]}
    return found, frame_times, feats, summary, tracker


def track_people(found: _Detections, cfg) -> dict[int, int]:
    """Track id -> person id: with ``cfg.reid`` tracks linked into people by appearance (one id per person
    across cuts and long occlusions), else each track its own person."""
    frames, ids = found.arrays()[:2]
    if cfg.reid:
        return link_tracks(found.desc_sums, co_occurring_pairs(ids, frames), cfg.reid_threshold)
    return {int(t): int(t) for t in np.unique(ids)}


def analyze_one(video, analyzer, out_dir, video_out, stem, progress) -> pd.DataFrame:
    """:meth:`affectmae.inference.pipeline.Analyzer.analyze`: the table of one video (summary in its attrs)."""
    cfg, model, detector = analyzer.config, analyzer.model, analyzer.detector
    timings = dict.fromkeys(STAGES, 0.0)
    started = time.perf_counter()
    faces = FacePass(cfg, analyzer._keyframes, analyzer._encoder)
    found, frame_times, feats, summary, tracker = face_pass(video, faces, timings, progress)
    if not frame_times:
        raise InputFormatError(video, "no frame could be decoded (the file is truncated or damaged)")
    det_frames_a, det_ids_a, boxes_a, scores_a, landmarks_a = found.arrays()
    t5 = time.perf_counter()
    try:
        with torch.inference_mode():
            predictions = _predict_tracks(model, det_ids_a, det_frames_a, feats, cfg.stride) if len(det_ids_a) else {}
    finally:
        if feats is not None:
            feats.close()
    timings["temporal"] += time.perf_counter() - t5
    t_link = time.perf_counter()
    person = track_people(found, cfg)
    timings["track"] += time.perf_counter() - t_link
    df = build_table(det_frames_a, det_ids_a, boxes_a, scores_a, landmarks_a, predictions, frame_times, cfg.stride,
                     getattr(model, "au_thresholds", None), input_name=str(video), face_ids=person)
    summary.update({
        "frames_analyzed": int(sum(1 for i in range(len(frame_times)) if i % cfg.stride == 0)),
        "frames_without_face": int((~df.groupby("frame")["face_detected"].any()).sum()),
        "faces": int(len(set(person.values()))),
        "tracks": int(len(np.unique(det_ids_a))),
        "detections": int(len(det_ids_a)),
        "shot_cuts": tracker.n_cuts,
        "stride": cfg.stride,
        "max_frames": cfg.max_frames,
        "batch_size": cfg.batch_size,
        "device": str(analyzer.device),
        "detector": detector.name,
        "detector_restarts": getattr(detector, "restarts", 0),
        "detect_every": cfg.detect_every,
        "detector_calls": dict(analyzer._keyframes.calls),  # full frames and patches around known faces
    })
    _write_results(video, df, cfg, summary, timings, started, out_dir, video_out, stem)
    log.info("%s: %d frames, %d analysed, %d faces, %d frames without a face, %d shot cuts",
             video, len(frame_times), summary["frames_analyzed"], summary["faces"],
             summary["frames_without_face"], summary["shot_cuts"])
    df.attrs["summary"] = summary
    return df


def _write_results(video, df: pd.DataFrame, cfg, summary: dict, timings: dict, started: float, out_dir, video_out,
                   stem: str | None) -> None:
    """Table, config and plots into ``out_dir``, the annotated video, then the summary (written last)."""
    if out_dir is not None:
        t6 = time.perf_counter()
        write_outputs(df, Path(out_dir), cfg, summary, stem)
        timings["write"] += time.perf_counter() - t6
    if video_out is not None:
        from affectmae.inference.plots import write_annotated_video

        write_annotated_video(video, df, video_out)
    summary["seconds"] = {k: round(v, 4) for k, v in timings.items()}
    summary["seconds_total"] = round(time.perf_counter() - started, 4)
    if out_dir is not None:  # written last: its presence marks a finished video (batch runs skip those)
        name = f"{stem}.summary.json" if stem else "summary.json"
        atomic_write_text(Path(out_dir) / name, json.dumps(summary, indent=2) + "\n")


def write_outputs(df: pd.DataFrame, out_dir: Path, cfg, summary: dict, stem: str | None = None) -> None:
    """The table as CSV (+ .parquet when pyarrow is installed), config.yaml and the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{stem}." if stem else ""
    write_table(df, out_dir / (f"{stem}.csv" if stem else "predictions.csv"), cfg.column_names)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        with atomic_path(out_dir / f"{stem or 'predictions'}.parquet") as tmp:
            df.to_parquet(tmp, index=False)
    save_config(cfg, out_dir / f"{prefix}config.yaml")
    if cfg.plots:
        from affectmae.inference.plots import plot_all

        summary["plots"] = [str(p) for p in plot_all(df, out_dir, prefix)]
