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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from affectmae.config import save_config
from affectmae.errors import InputFormatError
from affectmae.face.align import CROP_SIZE, align_face
from affectmae.face.reid import DESCRIPTOR_DIM, co_occurring_pairs, face_descriptor, link_tracks
from affectmae.face.tracking import FaceTracker, ShotCutDetector
from affectmae.inference.table import build_table, write_table
from affectmae.io import atomic_path, atomic_write_text
from affectmae.media.video import VideoReader

log = logging.getLogger(__name__)

STAGES = ("decode", "detect", "track", "align", "encode", "temporal", "write")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def fill_gaps(values: np.ndarray, pos: np.ndarray, length: int) -> np.ndarray:
    """``values (n, D)`` known at increasing positions ``pos (n,)`` -> ``(length, D)``, linearly interpolated
    in between (the temporal model expects a feature on every frame, with a mask saying which are real)."""
    if len(pos) == length:
        return values
    grid = np.arange(length)
    right = np.clip(np.searchsorted(pos, grid), 1, len(pos) - 1) if len(pos) > 1 else np.zeros(length, dtype=int)
    left = right - 1 if len(pos) > 1 else right
    span = np.maximum(pos[right] - pos[left], 1)
    w = np.clip((grid - pos[left]) / span, 0.0, 1.0)[:, None]
    return (values[left] * (1 - w) + values[right] * w).astype(values.dtype)


def _predict_tracks(model, track_ids: np.ndarray, frames: np.ndarray, feats: np.ndarray, stride: int) -> dict[int, dict]:
    """Temporal model per track over the grid of analysed frames; returns {face_id: {"va": (n, 2), ...}}."""
    out = {}
    for fid in np.unique(track_ids):
        rows = np.flatnonzero(track_ids == fid)
        pos = (frames[rows] - frames[rows[0]]) // stride  # position on the analysed-frame grid
        length = int(pos[-1]) + 1
        mask = np.zeros(length, dtype=bool)
        mask[pos] = True
        seq = fill_gaps(feats[rows].astype(np.float32), pos, length)
        preds = model.predict_sequence(seq, mask)  # {task: (length, C)}
        out[int(fid)] = {k: _as_numpy(v)[pos] for k, v in preds.items()}
    return out


@dataclass
class _Detections:
    """Every kept detection of a video in order (frame, track id, box, score, landmarks), and per track the
    sum of its crops' appearance descriptors (for re-id)."""

    frames: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    landmarks: list = field(default_factory=list)
    desc_sums: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, frame_index: int, fid: int, det) -> None:
        self.frames.append(frame_index)
        self.ids.append(fid)
        self.boxes.append(det.box)
        self.scores.append(det.score)
        self.landmarks.append(det.landmarks)

    def add_descriptors(self, ids, descs: np.ndarray) -> None:
        for fid, desc in zip(ids, descs, strict=True):
            if fid not in self.desc_sums:
                self.desc_sums[fid] = np.zeros(DESCRIPTOR_DIM, dtype=np.float32)
            self.desc_sums[fid] += desc

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(frames (M,) int64, ids (M,) int64, boxes (M, 4), scores (M,), landmarks (M, 5, 2)) float32."""
        return (np.asarray(self.frames, dtype=np.int64), np.asarray(self.ids, dtype=np.int64),
                np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4), np.asarray(self.scores, dtype=np.float32),
                np.asarray(self.landmarks, dtype=np.float32).reshape(-1, 5, 2))


def _process_chunk(chunk: list, chunk_cuts: list[bool], analyzer, tracker: FaceTracker, found: _Detections,
                   timings: dict) -> None:
    """Detect faces on a chunk of analysed frames (one key frame, then patches), align, describe and track
    each face and hand its crop to the encoder."""
    cfg, encoder = analyzer.config, analyzer._encoder
    t1 = time.perf_counter()
    per_frame = analyzer._keyframes.detect_chunk([f.rgb for f in chunk], chunk_cuts)
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


def _frame_pass(video, analyzer, timings: dict, progress) -> tuple:
    """Stream the frames once; returns (detections, time of every decoded frame, crop features (M, D) float16,
    video summary, tracker)."""
    cfg = analyzer.config
    tracker = FaceTracker(max_age=cfg.max_age, min_appearance=cfg.reid_min_appearance)
    cuts = ShotCutDetector(cfg.cut_threshold)
    analyzer._encoder.reset(timings)
    analyzer._keyframes.reset()
    found, frame_times = _Detections(), []
    with VideoReader(video) as reader:
        stream = reader.frames(cfg.stride)
        bar = progress if progress is not None else tqdm(total=reader.info.n_frames or None, unit="frame",
                                                          desc=Path(video).name, disable=None)
        chunk, chunk_cuts = [], []  # analysed frames waiting for their key frame (at most detect_every)
        while True:
            t0 = time.perf_counter()
            frame = next(stream, None)
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
                if len(chunk) < analyzer._keyframes.every:
                    continue
            if not chunk:
                break
            _process_chunk(chunk, chunk_cuts, analyzer, tracker, found, timings)
            chunk, chunk_cuts = [], []
            if ended:
                break
        if progress is None:
            bar.close()
        feats = analyzer._encoder.features()
        summary = {"video": str(video), **reader.summary(), "fps": reader.info.fps,
                   "rotation": reader.info.rotation, "size": [reader.info.width, reader.info.height]}
    return found, frame_times, feats, summary, tracker


def analyze_one(video, analyzer, out_dir, video_out, stem, progress) -> pd.DataFrame:
    """:meth:`affectmae.inference.pipeline.Analyzer.analyze`: the table of one video (summary in its attrs)."""
    cfg, model, detector = analyzer.config, analyzer.model, analyzer.detector
    timings = dict.fromkeys(STAGES, 0.0)
    started = time.perf_counter()
    found, frame_times, feats, summary, tracker = _frame_pass(video, analyzer, timings, progress)
    if not frame_times:
        raise InputFormatError(video, "no frame could be decoded (the file is truncated or damaged)")
    det_frames_a, det_ids_a, boxes_a, scores_a, landmarks_a = found.arrays()
    t5 = time.perf_counter()
    with torch.inference_mode():
        predictions = _predict_tracks(model, det_ids_a, det_frames_a, feats, cfg.stride) if len(det_ids_a) else {}
    timings["temporal"] += time.perf_counter() - t5
    t_link = time.perf_counter()
    if cfg.reid:  # tracks -> people: one face_id per person across cuts and long occlusions
        person = link_tracks(found.desc_sums, co_occurring_pairs(det_ids_a, det_frames_a), cfg.reid_threshold)
    else:
        person = {int(t): int(t) for t in np.unique(det_ids_a)}
    timings["track"] += time.perf_counter() - t_link
    df = build_table(det_frames_a, det_ids_a, boxes_a, scores_a, landmarks_a, predictions, frame_times, cfg.stride,
                     getattr(model, "au_thresholds", None), input_name=str(video), face_ids=person)
    summary.update({
        "frames_analyzed": int(sum(1 for i in range(len(frame_times)) if i % cfg.stride == 0)),
        "frames_without_face": int((~df.groupby("frame")["face_detected"].any()).sum()),
        "faces": int(len(set(person.values()))),
        "tracks": int(len(predictions)),
        "detections": int(len(det_ids_a)),
        "shot_cuts": tracker.n_cuts,
        "stride": cfg.stride,
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
