"""One real video (or image folder) -> the aligned crops of its main face and the teacher's label per frame.

1. The face pass of ``affectmae analyze`` (:func:`affectmae.inference.video_pass.face_pass`: decode every
   ``stride``-th frame, key-frame detection, tracking, re-id of tracks into people) finds every face; no
   encoder runs (:class:`NoCrops` takes the crops).
2. The main face is the person (after re-id) with the most detections.
3. A second decode aligns that person's face on each analysed frame twice: at ``margin`` (the crop written,
   as the model will see faces in ``analyze``) and at the teacher's own framing
   (:data:`~affectmae.models.fer_teacher.TEACHER_MARGIN`), which the FER2013 teacher reads.

Output frame ``k`` (1-based, ``%05d.jpg``) is analysed frame ``k``, i.e. decoded frame ``(k - 1) * stride``.

    result = label_faces("clip.mp4", faces, teacher, margin=1.0, folder=Path("tmp/clip"))
    result.probs        # (N, 7) teacher probabilities, N analysed frames; NaN rows where the main face is absent
    result.present      # (N,) bool: the main face was found (an image was written)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affectmae.errors import InputFormatError
from affectmae.face.align import CROP_SIZE, align_face
from affectmae.inference.video_pass import STAGES, FacePass, face_pass, track_people
from affectmae.models.fer_teacher import FER_CLASSES, TEACHER_MARGIN, FERTeacher

log = logging.getLogger(__name__)

TEACHER_BATCH = 128  # crops per teacher forward pass


class NoCrops:
    """Where :func:`face_pass` hands its crops when only the detections are wanted: nowhere."""

    def reset(self, timings: dict) -> None:
        pass

    def add(self, crop: np.ndarray) -> None:
        pass

    def feature_rows(self) -> None:
        return None


@dataclass
class FaceLabels:
    """The main face of one source, per analysed frame."""

    frames: int  # analysed frames (the annotation's length)
    decoded: int  # decoded frames
    probs: np.ndarray  # (frames, 7) teacher probabilities in FER_CLASSES order; NaN where ``present`` is False
    present: np.ndarray  # (frames,) bool
    detections: int = 0  # every face on every analysed frame
    people: int = 0  # after re-id
    detector: str = ""
    seconds: dict = field(default_factory=dict)


def main_face(faces: FacePass, found) -> tuple[dict[int, np.ndarray], int]:
    """(decoded frame index -> 5 landmarks ``(5, 2)`` of the person with the most detections (ties: the first
    person), number of people)."""
    frames, ids, _, _, landmarks = found.arrays()
    if not len(ids):
        return {}, 0
    person_of = track_people(found, faces.config)
    people = np.array([person_of[int(t)] for t in ids])
    counts = np.bincount(people)
    keep = np.flatnonzero(people == int(counts.argmax()))
    return {int(frames[i]): landmarks[i] for i in keep}, int(np.count_nonzero(counts))


def _write_jpeg(path: Path, crop: np.ndarray) -> None:
    from affectmae.synth.dataset import encode_jpeg

    path.write_bytes(encode_jpeg(crop))


def _crop_pass(source, faces: FacePass, landmarks: dict[int, np.ndarray], teacher: FERTeacher, margin: float,
               folder: Path) -> dict[int, np.ndarray]:
    """Decode ``source`` again; for each frame in ``landmarks`` write the crop at ``margin`` into ``folder`` and
    read the crop at TEACHER_MARGIN with the teacher. Returns analysed position -> probabilities (7,)."""
    cfg = faces.config
    out: dict[int, np.ndarray] = {}
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        probs = teacher.predict_crops(np.stack([c for _, c in pending]))
        out.update({pos: p for (pos, _), p in zip(pending, probs, strict=True)})
        pending.clear()

    with faces.open_reader(source) as reader:
        for frame in reader.frames(cfg.stride):
            if cfg.max_frames and frame.index >= cfg.max_frames:
                break
            if frame.rgb is None or frame.index not in landmarks:
                continue
            pos, points = frame.index // cfg.stride, landmarks[frame.index]
            _write_jpeg(folder / f"{pos + 1:05d}.jpg", align_face(frame.rgb, points, CROP_SIZE, margin))
            pending.append((pos, align_face(frame.rgb, points, CROP_SIZE, TEACHER_MARGIN)))
            if len(pending) >= TEACHER_BATCH:
                flush()
    if pending:
        flush()
    return out


def label_faces(source: str | Path, faces: FacePass, teacher: FERTeacher, margin: float, folder: Path) -> FaceLabels:
    """Find the main face of ``source``, write its crops at ``margin`` into ``folder`` (created) and label them
    with ``teacher``; see the module docstring. ``faces.crops`` must be a :class:`NoCrops`."""
    timings = dict.fromkeys(STAGES, 0.0)
    start = time.perf_counter()
    found, frame_times, _, summary, _ = face_pass(source, faces, timings)
    if not frame_times:
        raise InputFormatError(source, "no frame could be decoded (the file is truncated or damaged)")
    stride = faces.config.stride
    n = (len(frame_times) + stride - 1) // stride
    landmarks, people = main_face(faces, found)
    detect_s = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    per_pos = _crop_pass(source, faces, landmarks, teacher, margin, folder) if landmarks else {}
    probs = np.full((n, len(FER_CLASSES)), np.nan, dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    for pos, p in per_pos.items():
        probs[pos], present[pos] = p, True
    return FaceLabels(frames=n, decoded=len(frame_times), probs=probs, present=present, detections=found.count,
                      people=people, detector=faces.keyframes.name,
                      seconds={"faces": round(detect_s, 2), "crops_and_teacher": round(time.perf_counter() - start
                                                                                       - detect_s, 2)})
