"""Raw video -> per-frame affect table (``affectmae analyze``).

    with Analyzer("runs/model", batch_size=32, stride=1, device="auto") as analyzer:   # loads once
        for video in videos:
            df = analyzer.analyze(video, out_dir="out")
    df = analyze_video("clip.mp4", "runs/model", out_dir="out")   # one video: the same, in one call

Stages, all streaming (frames are never accumulated, so memory stays flat for hour-long videos):

1. decode (:class:`affectmae.media.video.VideoReader`; rotation applied; every ``stride``-th frame analysed)
2. detect faces (:func:`affectmae.face.detect.get_detector`): the whole frame every ``detect_every``-th
   analysed frame, patches around known faces in between (:mod:`.keyframes`; holds <= detect_every frames),
3. align each face to a 112x112 crop and describe its appearance (:mod:`.reid`), 4. cut detection +
   tracking into tracks, 5. encode crops with the ViT encoder, in a background thread with ``overlap``;
   only the (D,) float16 feature of each face is kept,
6. after the stream ends, run the temporal model over each track (``AffectModel.predict_sequence``, which
   merges overlapping windows), link tracks into people (one ``face_id`` per person across cuts, with
   ``reid``), then expand to every frame (linear interpolation between analysed frames).

The table has one row per (frame, face); a frame without any face gets one row with ``face_detected=False``,
``face_id=-1`` and NaN predictions. Its columns are described in :mod:`affectmae.inference.table`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from affectmae.config import save_config
from affectmae.device import select_device
from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.face.align import CROP_SIZE, align_face
from affectmae.face.detect import get_detector
from affectmae.face.keyframes import KeyframeDetector
from affectmae.face.reid import DESCRIPTOR_DIM, co_occurring_pairs, face_descriptor, link_tracks
from affectmae.face.tracking import FaceTracker, ShotCutDetector
from affectmae.face.worker import WorkerDetector
from affectmae.inference.table import (  # noqa: F401 (re-exported)
    AU_PROB_COLUMNS,
    BOX_COLUMNS,
    EXPR_COLUMNS,
    LANDMARK_COLUMNS,
    TABLE_COLUMNS,
    build_table,
    write_table,
)
from affectmae.io import atomic_path, atomic_write_text
from affectmae.media.video import VideoReader

log = logging.getLogger(__name__)

HANDOFF = 8  # crops per hand-over to the encoder thread (CPU throughput per crop is the same at 8 and 32)
STAGES = ("decode", "detect", "track", "align", "encode", "temporal", "write")


@dataclass
class AnalyzeConfig:
    batch_size: int = 32  # crops per encoder forward pass (the only frames-sized buffer)
    stride: int = 1  # analyse every k-th frame, interpolate the rest
    device: str = "auto"  # cpu | cuda | auto
    detector: str = "auto"
    min_face: int = 32  # pixels, shorter box side
    min_score: float = 0.5
    detect_max_side: int = 960  # frames are downscaled to this longer side for detection (speed vs small faces)
    detect_every: int = 5  # full-frame detection every k-th analysed frame; patches around known faces between
    max_faces: int = 0  # keep the N most confident faces per frame (0: all)
    max_age: int = 25  # frames a face may be missed and keep its id
    cut_threshold: float = 0.5  # histogram distance that counts as a shot cut
    reid: bool = True  # link tracks of one person (across cuts and long gaps) into one face_id by appearance
    reid_threshold: float = 0.82  # cosine similarity of mean track descriptors needed to link (inference/reid.py)
    reid_min_appearance: float = 0.6  # with reid: a detection less similar than this to a track never continues it
    align_margin: float | None = None  # > 1 zooms the crop out; None: MODEL_DIR's "align_margin", else 1.0
    plots: bool = True
    overlap: bool = True  # encode in a background thread while the next frames are decoded and detected
    detector_worker: bool = True  # detect in a child process, replaced every detector_recycle_frames (yuface leaks)
    detector_recycle_frames: int = 2000
    column_names: str = "affectmae"  # CSV column names: affectmae | openface (AU12_c, confidence, success, ...)


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


class _Encoder:
    """Bounded crop buffer + batched encoder; features go to one growing list of (B, D) float16 blocks.

    With ``overlap`` a background thread runs the forward passes, so the frame loop decodes, detects and
    aligns the next frames meanwhile (PyTorch releases the GIL in its ops, and the detector works in its own
    process). The loop hands over every ``HANDOFF`` crops; the thread encodes whatever is queued, up to
    ``batch_size`` crops per forward pass (at most 2 batches wait, so memory stays bounded).
    ``timings["encode"]`` is then the thread's busy time, overlapping the other stages.
    """

    def __init__(self, encoder: torch.nn.Module, device: torch.device, batch_size: int, timings: dict,
                 overlap: bool = False):
        from affectmae.models.vit import preprocess_frames

        self.encoder = encoder.to(device).eval()
        self.device = device
        self.img_size = int(getattr(encoder, "arch", {}).get("img_size", CROP_SIZE))
        self.preprocess = preprocess_frames
        self.batch_size = batch_size
        self.overlap = overlap
        self.crops: list[np.ndarray] = []
        self.blocks: list[np.ndarray] = []
        self.timings = timings
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def reset(self, timings: dict) -> None:
        """Start a new video: no crops or features pending, times go to ``timings``."""
        self._stop()
        self.crops, self.blocks, self.timings, self._error = [], [], timings, None

    def add(self, crop: np.ndarray) -> None:
        self.crops.append(crop)
        if len(self.crops) >= (min(self.batch_size, HANDOFF) if self.overlap else self.batch_size):
            self.flush()

    def flush(self) -> None:
        if not self.crops:
            return
        batch, self.crops = np.stack(self.crops), []  # (B, S, S, 3) uint8
        if not self.overlap:
            self._encode(batch)
            return
        if self._thread is None:
            self._queue = queue.Queue(maxsize=max(2, 2 * self.batch_size // HANDOFF))
            self._thread = threading.Thread(target=self._work, name="affectmae-encoder", daemon=True)
            self._thread.start()
        self._raise()
        self._queue.put(batch)

    @torch.inference_mode()
    def _encode(self, batch: np.ndarray) -> None:
        start = time.perf_counter()
        x = self.preprocess(batch, self.img_size).to(self.device)  # (B, 3, S, S)
        pooled = self.encoder.forward_features(x)["pooled"]  # (B, D)
        self.blocks.append(pooled.to(torch.float16).cpu().numpy())
        self.timings["encode"] += time.perf_counter() - start

    def _work(self) -> None:
        done = False
        while not done:
            blocks = [self._queue.get()]  # wait for work, then take what is queued, up to batch_size crops
            while blocks[-1] is not None and sum(len(b) for b in blocks) < self.batch_size:
                try:
                    blocks.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = blocks[-1] is None
            blocks = [b for b in blocks if b is not None]
            if blocks and self._error is None:  # after an error, keep draining so the frame loop never blocks
                try:
                    self._encode(np.concatenate(blocks))
                except BaseException as err:  # re-raised in the frame loop's thread
                    self._error = err

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread, self._queue = None, None

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def features(self) -> np.ndarray:
        """(N_crops, D) float16 in the order crops were added."""
        self.flush()
        self._stop()
        self._raise()
        if not self.blocks:
            return np.zeros((0, 0), dtype=np.float16)
        return np.concatenate(self.blocks)


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


def model_align_margin(model_dir: str | Path) -> float:
    """The crop margin a MODEL_DIR was trained with (optional ``"align_margin"`` in affectmae_model.json).

    Models trained on Aff-Wild2 ``cropped_aligned`` frames use the template as is (1.0); a model trained on
    differently framed crops (e.g. the synthetic renderer's) records the margin that reproduces them.
    """
    meta = json.loads((Path(model_dir) / "affectmae_model.json").read_text())
    margin = meta.get("align_margin", 1.0)
    if not isinstance(margin, (int, float)) or not 0.2 <= margin <= 5:
        raise AffectMAEError(f"{model_dir}/affectmae_model.json: align_margin must be a number in [0.2, 5], got {margin!r}")
    return float(margin)


class Analyzer:
    """A loaded MODEL_DIR and a running face detector, reused for many videos.

    ``Analyzer(model_dir, config=None, **settings)``: ``settings`` are :class:`AnalyzeConfig` fields and
    override ``config``. :meth:`analyze` runs one video; :meth:`close` (or ``with``) stops the detector
    worker. Loading costs 2-3.4 s for ViT-B and starting the worker about 0.3 s; both happen once here.
    """

    def __init__(self, model_dir: str | Path, config: AnalyzeConfig | None = None, **settings):
        from affectmae.inference.model import load_model_dir

        cfg = config or AnalyzeConfig()
        settings = {k: v for k, v in settings.items() if v is not None}
        unknown = set(settings) - {f.name for f in dataclasses.fields(AnalyzeConfig)}
        if unknown:
            raise AffectMAEError(f"unknown analyze settings: {', '.join(sorted(unknown))}")
        cfg = dataclasses.replace(cfg, **settings)
        if cfg.stride < 1 or cfg.batch_size < 1 or cfg.detect_every < 1:
            raise AffectMAEError(f"stride, batch_size and detect_every must be >= 1, got {cfg.stride}, "
                                 f"{cfg.batch_size} and {cfg.detect_every}")
        if cfg.column_names not in ("affectmae", "openface"):
            raise AffectMAEError(f"column_names must be 'affectmae' or 'openface', got {cfg.column_names!r}")
        self.device = select_device(cfg.device)
        self.model_dir = Path(model_dir)
        self.model = load_model_dir(model_dir)
        if cfg.align_margin is None:
            cfg = dataclasses.replace(cfg, align_margin=model_align_margin(model_dir))
        self.config = cfg
        det_args = dict(min_score=cfg.min_score, min_face=cfg.min_face, max_side=cfg.detect_max_side)
        if cfg.detector_worker:
            self.detector = WorkerDetector(cfg.detector, recycle_every=cfg.detector_recycle_frames, **det_args)
        else:
            self.detector = get_detector(cfg.detector, **det_args)
        self._keyframes = KeyframeDetector(self.detector, every=cfg.detect_every, min_face=cfg.min_face)
        self._encoder = _Encoder(self.model.encoder, self.device, cfg.batch_size, dict.fromkeys(STAGES, 0.0),
                                 overlap=cfg.overlap)

    def analyze(self, video: str | Path, out_dir: str | Path | None = None, video_out: str | Path | None = None,
                stem: str | None = None, progress=None) -> pd.DataFrame:
        """Analyse ``video``; returns the per-(frame, face) table (run summary in ``df.attrs["summary"]``).

        With ``out_dir``: writes ``predictions.csv``, ``summary.json``, ``config.yaml`` and the PNG plots,
        or ``<stem>.csv``, ``<stem>.summary.json``, ``<stem>.config.yaml``, ``<stem>.<plot>.png`` when ``stem``
        is given (the batch layout). ``video_out``: an annotated MP4. ``progress``: a tqdm-like object whose
        ``update(1)`` is called per decoded frame (default: a bar for this video).
        """
        return _analyze(video, self, out_dir, video_out, stem, progress)

    def close(self) -> None:
        self._encoder.reset(self._encoder.timings)  # stops the encoder thread
        if isinstance(self.detector, WorkerDetector):
            self.detector.close()

    def __enter__(self) -> "Analyzer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def analyze_video(video: str | Path, model_dir: str | Path, out_dir: str | Path | None = None,
                  batch_size: int | None = None, stride: int | None = None, device: str | None = None,
                  config: AnalyzeConfig | None = None, video_out: str | Path | None = None,
                  **overrides) -> pd.DataFrame:
    """Analyse one ``video`` with the model in ``model_dir`` (an :class:`Analyzer` used once).

    With ``out_dir``: writes ``predictions.csv`` (and ``.parquet`` if pyarrow is installed),
    ``summary.json``, ``config.yaml`` and, unless ``plots=False``, PNG plots. ``video_out``: an annotated
    MP4 (boxes, ids, labels). Keyword ``overrides`` set any :class:`AnalyzeConfig` field. The run summary
    (frame counts, faces, cuts, per-stage seconds) is in ``df.attrs["summary"]``.
    """
    with Analyzer(model_dir, config, batch_size=batch_size, stride=stride, device=device, **overrides) as analyzer:
        return analyzer.analyze(video, out_dir, video_out)


def _analyze(video, analyzer: Analyzer, out_dir, video_out, stem, progress) -> pd.DataFrame:
    """The frame loop and outputs of :meth:`Analyzer.analyze`."""
    cfg, model, detector = analyzer.config, analyzer.model, analyzer.detector
    tracker = FaceTracker(max_age=cfg.max_age, min_appearance=cfg.reid_min_appearance)
    cuts = ShotCutDetector(cfg.cut_threshold)
    timings = dict.fromkeys(STAGES, 0.0)
    encoder = analyzer._encoder
    encoder.reset(timings)
    det_frames, det_ids, det_boxes, det_scores, det_landmarks, frame_times = [], [], [], [], [], []
    desc_sums: dict[int, np.ndarray] = {}  # track id -> sum of its crops' appearance descriptors (re-id)
    started = time.perf_counter()
    keyframes = analyzer._keyframes
    keyframes.reset()
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
                if len(chunk) < keyframes.every:
                    continue
            if not chunk:
                break
            t1 = time.perf_counter()
            per_frame = keyframes.detect_chunk([f.rgb for f in chunk], chunk_cuts)
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
                    for fid, desc in zip(ids, descs, strict=True):
                        if fid not in desc_sums:
                            desc_sums[fid] = np.zeros(DESCRIPTOR_DIM, dtype=np.float32)  # 6 KB per track
                        desc_sums[fid] += desc
                timings["align"] += t3 - t2
                timings["track"] += time.perf_counter() - t3
                for det, fid, crop in zip(dets, ids, crops, strict=True):
                    det_frames.append(frame.index)
                    det_ids.append(fid)
                    det_boxes.append(det.box)
                    det_scores.append(det.score)
                    det_landmarks.append(det.landmarks)
                    encoder.add(crop)
            chunk, chunk_cuts = [], []
            if ended:
                break
        if progress is None:
            bar.close()
        feats = encoder.features()
        summary = {"video": str(video), **reader.summary(), "fps": reader.info.fps,
                   "rotation": reader.info.rotation, "size": [reader.info.width, reader.info.height]}
    if not frame_times:
        raise InputFormatError(video, "no frame could be decoded (the file is truncated or damaged)")
    det_frames_a = np.asarray(det_frames, dtype=np.int64)
    det_ids_a = np.asarray(det_ids, dtype=np.int64)
    boxes_a = np.asarray(det_boxes, dtype=np.float32).reshape(-1, 4)
    scores_a = np.asarray(det_scores, dtype=np.float32)
    landmarks_a = np.asarray(det_landmarks, dtype=np.float32).reshape(-1, 5, 2)
    t5 = time.perf_counter()
    with torch.inference_mode():
        predictions = _predict_tracks(model, det_ids_a, det_frames_a, feats, cfg.stride) if len(det_ids_a) else {}
    timings["temporal"] += time.perf_counter() - t5
    t_link = time.perf_counter()
    if cfg.reid:  # tracks -> people: one face_id per person across cuts and long occlusions
        person = link_tracks(desc_sums, co_occurring_pairs(det_ids_a, det_frames_a), cfg.reid_threshold)
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
        "detector_calls": dict(keyframes.calls),  # full frames and patches around known faces
    })
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
    log.info("%s: %d frames, %d analysed, %d faces, %d frames without a face, %d shot cuts",
             video, len(frame_times), summary["frames_analyzed"], summary["faces"],
             summary["frames_without_face"], summary["shot_cuts"])
    df.attrs["summary"] = summary
    return df


def write_outputs(df: pd.DataFrame, out_dir: Path, cfg: AnalyzeConfig, summary: dict, stem: str | None = None) -> None:
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
