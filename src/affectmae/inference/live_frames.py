"""The per-frame analysis of ``affectmae live`` and ``analyze --causal``, in two stages that can run on two cores.

    frames = FrameAnalyzer(analyzer, "camera")   # encoder_split="auto" or a number of blocks
    faces = frames.prepare(frame)     # stage 1: cut check, detection, alignment, tracking, the encoder's first
                                      # k blocks (frame t + 1 ...)
    rows = frames.finish(faces)       # stage 2: the other blocks, one temporal step per track, rows (... frame t)
    rows = frames.rows(frame)         # both, one after the other

Stage 1 only touches the detector, the tracker and the cut detector; stage 2 only the tracks' temporal
states; the encoder's weights are only read, by both (:mod:`.encoder_split` chooses k; the features do not
depend on it). Each stage keeps frame order, so running stage 1 of frame t + 1 beside stage 2 of frame t
gives the rows of running them one after the other (:class:`~affectmae.inference.live.LiveStream` does).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from affectmae.face.align import CROP_SIZE, align_face
from affectmae.face.reid import face_descriptor
from affectmae.face.tracking import FaceTracker, ShotCutDetector
from affectmae.inference.encoder_split import EncoderSplit
from affectmae.inference.table import (
    ACTION_UNITS,
    AU_PROB_COLUMNS,
    EXPR_COLUMNS,
    LANDMARK_COLUMNS,
    TABLE_COLUMNS,
    pose_roll,
)
from affectmae.tasks import EXPRESSIONS

STAGE_ONE = ("detect", "align", "track")
STAGE_TWO = ("encode", "temporal")


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


@dataclass
class Faces:
    """Stage 1's result for one frame: its detections, aligned crops and track ids, the tracks alive after it
    (the others have ended: a cut, or missed too long), and the crops' tokens after the encoder's block ``k``."""

    frame: object
    dets: list
    crops: list
    ids: list
    alive: frozenset
    tokens: object = None
    k: int = 0


class FrameAnalyzer:
    """Per-frame causal analysis of one source with an :class:`~affectmae.inference.pipeline.Analyzer`'s model,
    detector and settings: ``rows(frame) -> [row dict]`` (one per face, or one without a face); see the module
    docstring for the two stages. ``timings``: seconds per step, summed over frames (``encode``: both stages'
    parts). ``encoder_split``: ``"auto"`` or the number of blocks stage 1 runs (:class:`EncoderSplit`)."""

    def __init__(self, analyzer, name: str, encoder_split: str | int = "auto"):
        cfg = analyzer.config
        self.cfg, self.model, self.name = cfg, analyzer.model, name
        self.keyframes = analyzer._keyframes
        self.keyframes.reset()
        self.split = EncoderSplit(analyzer._encoder, encoder_split)  # its module, preprocessing, normalisation
        self.tracker = FaceTracker(max_age=cfg.max_age, min_appearance=cfg.reid_min_appearance)
        self.cuts = ShotCutDetector(cfg.cut_threshold)
        self.tracks: dict[int, _TrackState] = {}
        self.thresholds = np.asarray(self.model.au_thresholds, dtype=np.float64)
        self._seconds = dict.fromkeys(STAGE_ONE + STAGE_TWO + ("encode_head",), 0.0)  # each key: one stage's
        self.detections = 0

    @property
    def timings(self) -> dict[str, float]:
        out = {k: v for k, v in self._seconds.items() if k != "encode_head"}
        out["encode"] += self._seconds["encode_head"]
        return out

    def rows(self, frame) -> list[dict]:
        return self.finish(self.prepare(frame))

    def prepare(self, frame) -> Faces:
        """Stage 1: cut check, detection, alignment (and appearance descriptors), tracking, then the encoder's
        patch embedding and first k blocks on the crops (k from the time spent on the frame so far)."""
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
        alive = frozenset(t.face_id for t in self.tracker.tracks)
        t3 = time.perf_counter()
        k, tokens = 0, None
        if crops:
            k = self.split.choose(t3 - t0, len(crops))
            tokens = self.split.head(crops, k)
        for key, seconds in zip(STAGE_ONE + ("encode_head",), (t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3),
                                strict=True):
            self._seconds[key] += seconds
        self.detections += len(dets)
        return Faces(frame, dets, crops, list(ids), alive, tokens, k)

    def finish(self, faces: Faces) -> list[dict]:
        """Stage 2: the encoder's other blocks, norm and pooling, one temporal step per track, the rows."""
        t0, frame = time.perf_counter(), faces.frame
        for fid in [f for f in self.tracks if f not in faces.alive]:  # ended tracks (cut, or missed too long)
            del self.tracks[fid]
        feats = self.split.tail(faces.tokens, faces.k) if faces.crops else None
        t1 = time.perf_counter()
        out = []
        for j in np.argsort(np.asarray(faces.ids, dtype=np.int64), kind="stable"):
            det, fid = faces.dets[j], int(faces.ids[j])
            if fid not in self.tracks:
                self.tracks[fid] = _TrackState(self.model.stream())
            out.append(self._face_row(frame, fid, det, self.tracks[fid].step(frame.index, feats[j])))
        t2 = time.perf_counter()
        self._seconds["encode"] += t1 - t0
        self._seconds["temporal"] += t2 - t1
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
