"""Live analysis: frames from a camera, a stream or a file in, one row per (frame, face) out as each frame is
analysed, with a temporal model that only looks back.

    with Analyzer("MODEL_DIR") as analyzer:                  # a streaming model (`train causal=true`)
        live = analyzer.stream("/dev/video0")                # or a URL, "-" (stdin), a file (realtime=True)
        for row in live:                                     # dicts with the columns of analyze's table
            ...
        live.summary()                                       # frames, drops, latency p50/p95/max (ms)

Two threads. The reader takes frames from the source as they come and stamps their arrival; it hands them to
the analysis through a queue of at most ``queue`` frames. When the queue is full the **oldest** waiting frame
is dropped, so work never piles up and the newest frame is analysed next (``drop=False`` makes the reader wait
instead, for files analysed as fast as possible: ``analyze --causal``). The analysis (this thread) takes one
frame at a time: cut check, face detection (a full frame every ``detect_every``-th frame, patches around the
previous frame's faces in between, nothing held back), alignment, tracking, the encoder, and one step of
each track's :class:`~affectmae.inference.model.EnsembleStream`. Rows come out in frame order; a dropped frame
is one row with ``analyzed=False``, ``face_detected=False``, ``face_id=-1`` and no values. Latency is the time
from a frame's arrival to the moment its last row has been taken by the consumer (written, in the CLI).

What differs from ``analyze``: ``face_id`` is the track id (linking tracks into people needs the whole
video); a face entering between key frames is found at the next key frame; every frame is analysed
(no ``stride``). ``analyze --causal`` runs this same loop over a file without dropping, so its table equals
what ``live`` writes for that file when nothing was dropped.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from affectmae.errors import AffectMAEError
from affectmae.face.align import CROP_SIZE, align_face
from affectmae.face.reid import face_descriptor
from affectmae.face.tracking import FaceTracker, ShotCutDetector
from affectmae.inference.table import (
    ACTION_UNITS,
    AU_PROB_COLUMNS,
    EXPR_COLUMNS,
    LANDMARK_COLUMNS,
    TABLE_COLUMNS,
    pose_roll,
)
from affectmae.tasks import EXPRESSIONS


class StreamStalled(AffectMAEError):
    """The source delivered no frame for ``timeout`` seconds."""


def require_streaming(model, model_dir) -> None:
    """A one-line error unless every temporal head of ``model`` only looks back."""
    if not model.streaming:
        raise AffectMAEError(f"{model_dir}: {', '.join(model.two_way_heads())} looks both ways (or counts window "
                             "positions); live and analyze --causal need a model trained with "
                             "`affectmae train ... causal=true`")


class _FrameQueue:
    """At most ``size`` frames between the reader and the analysis. ``drop``: a new frame pushes out the
    oldest waiting one (kept in ``dropped`` for its row); else the reader waits for room."""

    def __init__(self, size: int, drop: bool):
        self.size, self.drop = max(1, int(size)), drop
        self.items: deque = deque()
        self.dropped: list = []
        self.ended = False
        self.error: BaseException | None = None
        self.stop = False
        self.cond = threading.Condition()

    def put(self, item) -> bool:
        """False when the consumer has stopped (the reader should end)."""
        with self.cond:
            while not self.drop and len(self.items) >= self.size and not self.stop:
                self.cond.wait()
            if self.stop:
                return False
            while len(self.items) >= self.size:
                self.dropped.append(self.items.popleft())
            self.items.append(item)
            self.cond.notify_all()
            return True

    def finish(self, error: BaseException | None = None) -> None:
        with self.cond:
            self.ended, self.error = True, error
            self.cond.notify_all()

    def get(self, timeout: float) -> tuple[list, object | None]:
        """(frames dropped since the last call, the next frame or None at the end). Raises StreamStalled."""
        deadline = time.monotonic() + timeout if timeout > 0 else None
        with self.cond:
            while not self.items and not self.ended:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise StreamStalled(f"no frame for {timeout:g} s")
                self.cond.wait(left)
            dropped, self.dropped = self.dropped, []
            item = self.items.popleft() if self.items else None
            self.cond.notify_all()
            return dropped, item

    def close(self) -> None:
        with self.cond:
            self.stop = True
            self.cond.notify_all()


def _empty_row(name: str, frame, analyzed: bool) -> dict:
    row = dict.fromkeys(TABLE_COLUMNS, float("nan"))
    row.update({"input": name, "frame": frame.index, "time_s": frame.time_s, "face_id": -1, "face_detected": False,
                "analyzed": analyzed, "expression": "", **dict.fromkeys(ACTION_UNITS)})
    return row


class _TrackState:
    """One track's temporal state: positions are frames since its first detection; a frame where the face was
    missed gets the feature interpolated between its neighbours and present=False, as ``analyze`` fills them."""

    def __init__(self, stream):
        self.stream = stream
        self.last_frame: int | None = None
        self.last_feature: np.ndarray | None = None

    def step(self, frame_index: int, feature: np.ndarray) -> dict[str, np.ndarray]:
        gap = 0 if self.last_frame is None else frame_index - self.last_frame - 1
        if gap > 0:
            w = (np.arange(1, gap + 1) / (gap + 1))[:, None]
            filled = (self.last_feature[None] * (1 - w) + feature[None] * w).astype(np.float32)
            x = np.concatenate([filled, feature[None]])
        else:
            x = feature[None]
        present = np.r_[np.zeros(gap, bool), True]
        out = self.stream.step(x, present)
        self.last_frame, self.last_feature = frame_index, feature
        return {task: values[-1] for task, values in out.items()}


class FrameAnalyzer:
    """Per-frame causal analysis of one source with an :class:`~affectmae.inference.pipeline.Analyzer`'s model,
    detector and settings: ``rows(frame) -> [row dict]`` (one per face, or one without a face)."""

    def __init__(self, analyzer, name: str):
        cfg = analyzer.config
        self.cfg, self.model, self.name = cfg, analyzer.model, name
        self.keyframes = analyzer._keyframes
        self.keyframes.reset()
        self.encoder = analyzer._encoder  # its module, preprocessing and normalisation; called here directly
        self.tracker = FaceTracker(max_age=cfg.max_age, min_appearance=cfg.reid_min_appearance)
        self.cuts = ShotCutDetector(cfg.cut_threshold)
        self.tracks: dict[int, _TrackState] = {}
        self.thresholds = np.asarray(self.model.au_thresholds, dtype=np.float64)
        self.timings = {"detect": 0.0, "align": 0.0, "track": 0.0, "encode": 0.0, "temporal": 0.0}
        self.detections = 0

    @torch.inference_mode()
    def _encode(self, crops: list[np.ndarray]) -> np.ndarray:
        enc = self.encoder
        x = enc.preprocess(np.stack(crops), enc.img_size, *enc.normalisation).to(enc.device)  # (N, 3, S, S)
        pooled = enc.encoder.forward_features(x)["pooled"]  # (N, D)
        return pooled.to(torch.float16).float().cpu().numpy()  # rounded as analyze's stored features are

    def rows(self, frame) -> list[dict]:
        cfg, t0 = self.cfg, time.perf_counter()
        cut = self.cuts.is_cut(frame.rgb)
        dets = self.keyframes.detect_frame(frame.rgb, cut)
        if cfg.max_faces:
            dets = dets[: cfg.max_faces]
        t1 = time.perf_counter()
        crops = [align_face(frame.rgb, d.landmarks, CROP_SIZE, cfg.align_margin) for d in dets]
        descs = np.stack([face_descriptor(c) for c in crops]) if cfg.reid and crops else None
        t2 = time.perf_counter()
        ids = self.tracker.update(frame.index, dets, cut=cut, descriptors=descs)
        alive = {t.face_id for t in self.tracker.tracks}
        for fid in [f for f in self.tracks if f not in alive]:  # ended tracks (cut, or missed too long)
            del self.tracks[fid]
        t3 = time.perf_counter()
        feats = self._encode(crops) if crops else None
        t4 = time.perf_counter()
        out = []
        for j in np.argsort(np.asarray(ids, dtype=np.int64), kind="stable"):
            det, fid = dets[j], int(ids[j])
            if fid not in self.tracks:
                self.tracks[fid] = _TrackState(self.model.stream())
            out.append(self._face_row(frame, fid, det, self.tracks[fid].step(frame.index, feats[j])))
        t5 = time.perf_counter()
        for key, seconds in zip(self.timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            self.timings[key] += seconds
        self.detections += len(dets)
        return out or [_empty_row(self.name, frame, analyzed=True)]

    def _face_row(self, frame, fid: int, det, preds: dict[str, np.ndarray]) -> dict:
        row = _empty_row(self.name, frame, analyzed=True)
        row.update({"face_id": fid, "face_detected": True, "det_score": float(np.float32(det.score))})
        row.update(zip(("x1", "y1", "x2", "y2"), np.asarray(det.box, np.float32).tolist(), strict=True))
        landmarks = np.asarray(det.landmarks, np.float32)
        row.update(zip(LANDMARK_COLUMNS, landmarks.reshape(10).tolist(), strict=True))
        row["pose_roll"] = float(pose_roll(landmarks[None])[0])
        if "va" in preds:
            row["valence"], row["arousal"] = np.asarray(preds["va"], np.float32).tolist()
        if "expr" in preds:
            probs = np.asarray(preds["expr"], np.float32)
            row.update(zip(EXPR_COLUMNS, probs.tolist(), strict=True))
            row["expression"] = EXPRESSIONS[int(np.asarray(preds["expr"]).argmax())]
        if "au" in preds:
            probs = np.asarray(preds["au"])
            row.update(zip(AU_PROB_COLUMNS, probs.astype(np.float32).tolist(), strict=True))
            row.update(zip(ACTION_UNITS, (probs >= self.thresholds).astype(int).tolist(), strict=True))
        return row


@dataclass
class LiveStats:
    """What a live run counts; :meth:`summary` is the dict written at the end."""

    source: str
    started: float = field(default_factory=time.perf_counter)
    frames_received: int = 0
    frames_analyzed: int = 0
    frames_dropped: int = 0
    rows: int = 0
    latencies: list = field(default_factory=list)  # seconds, per analysed frame
    faces: set = field(default_factory=set)
    ended: str = "running"
    first_time: float | None = None
    last_time: float | None = None

    def summary(self) -> dict:
        lat = np.asarray(self.latencies) * 1000.0
        seconds = time.perf_counter() - self.started
        received = self.frames_analyzed + self.frames_dropped

        def pct(q):
            return round(float(np.percentile(lat, q)), 1) if len(lat) else None

        return {
            "source": self.source, "ended": self.ended, "frames": received,
            "frames_analyzed": self.frames_analyzed, "frames_dropped": self.frames_dropped,
            "dropped_share": round(self.frames_dropped / received, 4) if received else 0.0,
            "rows": self.rows, "faces": len(self.faces),
            "latency_ms": {"p50": pct(50), "p95": pct(95), "max": round(float(lat.max()), 1) if len(lat) else None,
                           "mean": round(float(lat.mean()), 1) if len(lat) else None},
            "seconds": round(seconds, 3),
            "frames_per_s": round(received / seconds, 2) if seconds > 0 else None,
            "stream_seconds": round(self.last_time - self.first_time, 3) if self.first_time is not None else 0.0,
        }


class LiveStream:
    """Rows of one source as they are analysed (iterate once); see the module docstring.

    ``source``: a SOURCE string (:func:`~affectmae.inference.sources.open_source`, with ``source_options``)
    or an opened source object. ``timeout``: seconds without a frame after which the stream counts as
    stalled (:class:`StreamStalled`). ``on_frame(frame, rows)``: called after each analysed frame's rows
    (the overlay video). :meth:`summary` says what happened.
    """

    def __init__(self, analyzer, source, drop: bool = True, queue: int = 2, timeout: float = 10.0,
                 max_frames: int = 0, on_frame=None, **source_options):
        from affectmae.inference.sources import open_source

        require_streaming(analyzer.model, analyzer.model_dir)
        self.analyzer = analyzer
        if isinstance(source, (str, os.PathLike)):
            self.source = open_source(str(source), timeout=timeout, **source_options)
        else:
            self.source = source
        self.stats = LiveStats(self.source.name)
        self.drop, self.queue_size, self.timeout = drop, queue, timeout
        self.max_frames, self.on_frame = max_frames, on_frame
        self.frames = FrameAnalyzer(analyzer, self.source.name)
        self._queue = _FrameQueue(queue, drop)
        self._reader: threading.Thread | None = None

    def _read(self) -> None:
        error = None
        try:
            for frame in self.source.frames():
                if not self._queue.put((frame, time.perf_counter())):
                    break
                if self.max_frames and frame.index + 1 >= self.max_frames:
                    break
            if self.source.error:
                error = AffectMAEError(self.source.error)
        except AffectMAEError as err:
            error = err
        except Exception as err:  # reported in the analysis thread, as one line
            error = AffectMAEError(f"{self.source.name}: reading stopped: {err}")
        self._queue.finish(error)

    def __iter__(self) -> Iterator[dict]:
        stats = self.stats
        self._reader = threading.Thread(target=self._read, name="affectmae-live-reader", daemon=True)
        self._reader.start()
        try:
            while True:
                try:
                    dropped, item = self._queue.get(self.timeout)
                except StreamStalled:
                    stats.ended = "stalled"
                    raise StreamStalled(f"{self.source.name}: no frame for {self.timeout:g} s; the stream stopped "
                                        "delivering") from None
                for frame, _ in dropped:
                    stats.frames_dropped += 1
                    self._seen(frame)
                    stats.rows += 1
                    yield _empty_row(self.source.name, frame, analyzed=False)
                if item is None:
                    break
                frame, arrival = item
                self._seen(frame)
                rows = self.frames.rows(frame)
                stats.frames_analyzed += 1
                for row in rows:
                    if row["face_detected"]:
                        stats.faces.add(row["face_id"])
                    stats.rows += 1
                    yield row
                if self.on_frame is not None:
                    self.on_frame(frame, rows)
                stats.latencies.append(time.perf_counter() - arrival)
            if self._queue.error is not None:
                stats.ended = "error"
                raise self._queue.error
            stats.ended = "end of stream"
        except KeyboardInterrupt:
            stats.ended = "interrupted"
            raise
        except GeneratorExit:
            stats.ended = "stopped"
            raise
        except BaseException:
            if stats.ended == "running":
                stats.ended = "error"
            raise
        finally:
            self.close()

    def _seen(self, frame) -> None:
        if self.stats.first_time is None:
            self.stats.first_time = frame.time_s
        self.stats.last_time = frame.time_s

    def summary(self) -> dict:
        out = self.stats.summary()
        out.update({"queue": self.queue_size, "drop": self.drop, "detections": self.frames.detections,
                    "tracks": self.frames.tracker.next_id, "detector": self.analyzer.detector.name,
                    "detector_calls": dict(self.frames.keyframes.calls),
                    "seconds_per_stage": {k: round(v, 4) for k, v in self.frames.timings.items()}})
        source_summary = getattr(self.source, "summary", None)
        if source_summary is not None:
            out["source_summary"] = source_summary()
        return out

    def close(self) -> None:
        self._queue.close()
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        if self._reader is None or not self._reader.is_alive():
            self.source.close()  # a reader stuck in a blocking read (a pipe) is left to end with the process
