"""Face detection on key frames only: a full-frame detection every ``every`` analysed frames, and in between
a detection on a small patch around each known face (the face's box from the previous frame, enlarged).

A patch around a face costs the detector a small fraction of a full frame (docs/analyze.md, "Key frames"),
so with few faces this costs much less than detecting every frame. Faces are followed forward from the
previous chunk, and a face that the key frame finds but the forward pass did not (it entered during the
chunk) is followed *backward* through the chunk's frames, so it is found from the frame it entered, as with
full detection. That needs the chunk's frames: at most ``every`` decoded frames are held. A frame with no
face to follow (the start, after a cut, after every face left) gets a full detection, so a video without
faces costs what detecting every frame costs, and a face is missed only when it enters after the chunk's
first frames and leaves before its key frame while another face is being followed. A face not found on its
patch (it left, or moved more than the patch between analysed frames, as at large strides) makes that
frame a full detection too.

    detector = KeyframeDetector(get_detector("auto"), every=5)
    per_frame = detector.detect_chunk(rgbs, cuts)   # rgbs: [(H, W, 3) uint8] x n <= every; cuts: [bool] x n
    # -> [list[Detection]] x n, each sorted by score; the last frame is the key frame

A shot cut (``cuts[i]``: frame i starts a new shot) stops following faces across it.
"""

from __future__ import annotations

import cv2
import numpy as np

from affectmae.face.detect import Detection
from affectmae.face.tracking import box_iou

PATCH_SIDE = 160  # patches are downscaled to at most this many pixels per side
CONTEXT = 2.0  # patch side / face box side
MATCH_IOU = 0.3  # a patch detection continues a face when its box overlaps the face's previous box this much


def _overlaps(det: Detection, others: list[Detection]) -> bool:
    return bool(others) and box_iou(det.box[None], np.stack([d.box for d in others])).max() >= MATCH_IOU


class KeyframeDetector:
    """Wraps any detector (``detect(rgb) -> list[Detection]``); see the module docstring."""

    def __init__(self, detector, every: int = 5, patch_side: int = PATCH_SIDE, context: float = CONTEXT,
                 min_face: float = 0.0):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.detector = detector
        self.name = detector.name
        self.every = int(every)
        self.patch_side = int(patch_side)
        self.context = float(context)
        self.min_face = float(min_face)
        self.previous: list[Detection] = []  # faces of the last frame of the previous chunk
        self.calls = {"full": 0, "patch": 0}
        self._since_key = 0  # frames since the last key frame (detect_frame)

    def reset(self) -> None:
        """A new video: no faces to follow, call counts from 0."""
        self.previous = []
        self.calls = {"full": 0, "patch": 0}
        self._since_key = 0  # frames since the last key frame (detect_frame)

    def redetect(self, rgb: np.ndarray, box: np.ndarray) -> Detection | None:
        """The face near ``box (4,)`` in ``rgb``, detected on a patch around it; None when not found."""
        height, width = rgb.shape[:2]
        side = self.context * float(max(box[2] - box[0], box[3] - box[1]))
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0, y0 = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
        x1, y1 = int(min(cx + side / 2, width)), int(min(cy + side / 2, height))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return None
        patch = rgb[y0:y1, x0:x1]
        scale = min(1.0, self.patch_side / max(x1 - x0, y1 - y0))
        if scale < 1.0:
            patch = cv2.resize(patch, (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))),
                               interpolation=cv2.INTER_AREA)
        self.calls["patch"] += 1
        found = self.detector.detect(np.ascontiguousarray(patch))
        if not found:
            return None
        offset = np.array([x0, y0], dtype=np.float32)
        dets = [Detection((d.box.reshape(2, 2) / scale + offset).ravel().astype(np.float32), d.score,
                          (d.landmarks / scale + offset).astype(np.float32)) for d in found]
        iou = box_iou(box[None], np.stack([d.box for d in dets]))[0]
        best = int(iou.argmax())
        if iou[best] < MATCH_IOU or dets[best].size < self.min_face:
            return None
        return dets[best]

    def _follow(self, rgb: np.ndarray, faces: list[Detection], taken: list[Detection]) -> list[Detection]:
        """Patch detections of ``faces`` in ``rgb``, skipping any that overlap ``taken`` or each other. When a
        face is not on its patch (it left, or moved further than the patch: large strides), the whole frame
        is searched instead, so no face is lost that a full detection would find."""
        out: list[Detection] = []
        for face in faces:
            det = self.redetect(rgb, face.box)
            if det is None:
                self.calls["full"] += 1
                return [d for d in self.detector.detect(rgb) if not _overlaps(d, taken)]
            if _overlaps(det, taken + out):
                continue
            out.append(det)
        return out

    def detect_frame(self, rgb: np.ndarray, cut: bool) -> list[Detection]:
        """One frame at a time, nothing held (a live stream): a full detection on every ``every``-th call, on a
        cut and when there is no face to follow; in between the previous frame's faces followed on patches.
        A face that enters between key frames is found at the next key frame (no backward pass)."""
        key = self._since_key % self.every == 0
        if cut:
            self.previous = []
        if self.previous and not key:
            found = self._follow(rgb, self.previous, [])
        else:
            self.calls["full"] += 1
            found = self.detector.detect(rgb)
        self._since_key = 1 if key or not self.previous else self._since_key + 1
        self.previous = found
        return sorted(found, key=lambda d: -d.score)

    def detect_chunk(self, rgbs: list[np.ndarray], cuts: list[bool]) -> list[list[Detection]]:
        """Detections for each of ``rgbs`` (consecutive analysed frames; the last one is the key frame)."""
        if not rgbs or len(rgbs) != len(cuts):
            raise ValueError(f"need as many cut flags as frames, got {len(rgbs)} and {len(cuts)}")
        key = len(rgbs) - 1
        out: list[list[Detection]] = [[] for _ in rgbs]
        current = self.previous
        for i in range(key):  # forward: faces of the previous frame, followed on patches
            if cuts[i]:
                current = []
            if current:
                out[i] = current = self._follow(rgbs[i], current, [])
            else:  # nothing to follow (start, after a cut, all faces gone): look at the whole frame
                self.calls["full"] += 1
                out[i] = current = self.detector.detect(rgbs[i])
        self.calls["full"] += 1
        out[key] = self.detector.detect(rgbs[key])
        if key > 0 and not cuts[key]:  # backward: faces the key frame found that were not followed into it
            new = [d for d in out[key] if not _overlaps(d, out[key - 1])]
            for i in range(key - 1, -1, -1):
                if not new:
                    break
                new = self._follow(rgbs[i], new, out[i])
                out[i] = out[i] + new
                if cuts[i]:  # frame i starts this shot: the frames before it show another one
                    break
        self.previous = out[key]
        return [sorted(dets, key=lambda d: -d.score) for dets in out]
