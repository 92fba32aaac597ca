"""Give each face a stable identity (``face_id``) across frames.

Detections of a new frame are matched to the live tracks by the Hungarian algorithm on a cost mixing
box overlap (1 - IoU) and the distance between the detection's centre and the track's predicted centre
(constant velocity, so two faces that cross keep their ids). A track that is not matched survives
``max_age`` frames (short occlusions, missed detections); after a longer gap the face gets a new id.
A shot cut (large change of the colour histogram between analysed frames) ends every track. When the
detections come with appearance descriptors (:func:`.reid.face_descriptor`), a detection whose descriptor
has cosine similarity below ``min_appearance`` with a track's running mean is never matched to it, so a
cut the histogram misses (two people swapping places) does not hand one person's id to the other.

The tracker only sees detections, so it is tested with scripted boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from affectmae.face.detect import Detection

_FORBIDDEN = 1e6


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a (N, 4)`` and ``b (M, 4)`` (x1, y1, x2, y2) -> ``(N, M)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass
class Track:
    face_id: int
    box: np.ndarray  # (4,) last matched box
    last_frame: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # centre pixels per frame
    hits: int = 1
    appearance: np.ndarray | None = None  # (D,) unit-length running mean of the descriptors, if given

    def predicted_box(self, frame_index: int) -> np.ndarray:
        shift = self.velocity * (frame_index - self.last_frame)
        return self.box + np.array([shift[0], shift[1], shift[0], shift[1]])


class FaceTracker:
    """Online tracker. Call :meth:`update` once per analysed frame, in increasing frame order.

    ``max_age``: frames a track may go unmatched and still resume. ``min_iou``/``max_distance`` gate a
    match: IoU with the predicted box at least ``min_iou``, or centre distance at most ``max_distance``
    face sizes. ``min_appearance``: the least cosine similarity between a detection's descriptor and the
    track's running mean descriptor for a match (only when :meth:`update` gets descriptors).
    """

    def __init__(self, max_age: int = 25, min_iou: float = 0.1, max_distance: float = 0.75,
                 min_appearance: float = 0.6):
        self.max_age = int(max_age)
        self.min_appearance = float(min_appearance)
        self.min_iou = float(min_iou)
        self.max_distance = float(max_distance)
        self.tracks: list[Track] = []
        self.next_id = 0
        self.n_cuts = 0

    def reset(self) -> None:
        """End every track (a shot cut): faces after this get new ids."""
        self.tracks = []

    def _cost(self, tracks: list[Track], detections: list[Detection], frame_index: int,
              descriptors: np.ndarray | None = None) -> np.ndarray:
        predicted = np.stack([t.predicted_box(frame_index) for t in tracks])
        boxes = np.stack([d.box for d in detections]).astype(np.float64)
        iou = box_iou(predicted, boxes)
        centres_t = (predicted[:, :2] + predicted[:, 2:]) / 2
        centres_d = (boxes[:, :2] + boxes[:, 2:]) / 2
        size = np.sqrt(
            np.maximum((predicted[:, None, 2] - predicted[:, None, 0]) * (boxes[None, :, 2] - boxes[None, :, 0]), 1.0)
        )
        distance = np.linalg.norm(centres_t[:, None, :] - centres_d[None, :, :], axis=-1) / size
        cost = (1.0 - iou) + np.minimum(distance, 2.0)
        allowed = (iou >= self.min_iou) | (distance <= self.max_distance)
        if descriptors is not None:
            for r, track in enumerate(tracks):
                if track.appearance is not None:
                    allowed[r] &= descriptors @ track.appearance >= self.min_appearance
        return np.where(allowed, cost, _FORBIDDEN)

    def update(self, frame_index: int, detections: list[Detection], cut: bool = False,
               descriptors: np.ndarray | None = None) -> list[int]:
        """Assign a ``face_id`` to each detection of frame ``frame_index``; returns ids in input order.

        ``descriptors (N, D)``: unit-length appearance descriptors of the detections (optional).
        """
        if descriptors is not None:
            descriptors = np.asarray(descriptors, dtype=np.float64).reshape(len(detections), -1)
        if cut:
            self.n_cuts += 1
            self.reset()
        self.tracks = [t for t in self.tracks if frame_index - t.last_frame <= self.max_age]
        ids = [-1] * len(detections)
        if self.tracks and detections:
            cost = self._cost(self.tracks, detections, frame_index, descriptors)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if cost[r, c] >= _FORBIDDEN:
                    continue
                track, det = self.tracks[r], detections[c]
                gap = max(frame_index - track.last_frame, 1)
                old_centre = (track.box[:2] + track.box[2:]) / 2
                new_centre = (det.box[:2] + det.box[2:]) / 2
                step = (new_centre - old_centre) / gap
                track.velocity = step if track.hits == 1 else 0.5 * track.velocity + 0.5 * step
                track.box = det.box.astype(np.float64)
                track.last_frame = frame_index
                track.hits += 1
                if descriptors is not None:
                    track.appearance = _running_mean(track.appearance, descriptors[c])
                ids[c] = track.face_id
        for c, det in enumerate(detections):
            if ids[c] == -1:
                track = Track(self.next_id, det.box.astype(np.float64), frame_index,
                              appearance=None if descriptors is None else descriptors[c].copy())
                self.next_id += 1
                self.tracks.append(track)
                ids[c] = track.face_id
        return ids


def _running_mean(mean: np.ndarray | None, x: np.ndarray, rate: float = 0.1) -> np.ndarray:
    """Exponential running mean of unit vectors, kept at unit length."""
    if mean is None:
        return x.copy()
    m = (1 - rate) * mean + rate * x
    return m / max(np.linalg.norm(m), 1e-12)


class ShotCutDetector:
    """Flags a cut when the hue/saturation/value histogram of a frame differs from the previous one by more
    than ``threshold`` (half the L1 distance of normalised histograms, 0 = identical, 1 = disjoint)."""

    def __init__(self, threshold: float = 0.5, bins: tuple[int, int, int] = (8, 4, 8)):
        self.threshold = float(threshold)
        self.bins = bins
        self._previous: np.ndarray | None = None

    def histogram(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb: (H, W, 3) uint8`` -> flattened histogram summing to 1."""
        small = cv2.resize(rgb, (160, max(1, round(160 * rgb.shape[0] / rgb.shape[1]))), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, list(self.bins), [0, 180, 0, 256, 0, 256]).ravel()
        return hist / max(hist.sum(), 1.0)

    def difference(self, rgb: np.ndarray) -> float:
        """Histogram distance to the previous frame given (0.0 for the first); remembers this frame."""
        hist = self.histogram(rgb)
        diff = 0.0 if self._previous is None else 0.5 * float(np.abs(hist - self._previous).sum())
        self._previous = hist
        return diff

    def is_cut(self, rgb: np.ndarray) -> bool:
        return self.difference(rgb) > self.threshold
