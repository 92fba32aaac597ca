"""MTCNN face detection (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", 2016) in PyTorch: box, score and the same 5 landmarks as the alignment template.

The three networks (P-Net 12 px proposals, R-Net 24 px refinement, O-Net 48 px boxes + landmarks) are
written here; their trained weights are read from the ``mtcnn`` package on PyPI (MIT, pure-Python wheel,
weights inside it as lz4-compressed joblib lists of Keras arrays; it needs only ``joblib`` and ``lz4``, not
TensorFlow). That makes it a detector for every Python from 3.10 to 3.13.

    detector = MTCNNDetector(min_face=32)
    detector.detect(rgb)   # rgb: (H, W, 3) uint8 -> [Detection], highest score first
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.ops import nms

from affectmae.errors import AffectMAEError
from affectmae.face.detect import Detection, check_frame

THRESHOLDS = (0.6, 0.7, 0.7)  # P-Net, R-Net, O-Net face probability
SCALE_STEP = 0.709  # image pyramid factor (area halves every two levels)


class _PNet(nn.Module):
    """(B, 3, H, W) -> box offsets (B, 4, H', W'), face probability (B, H', W'); H' = (H - 10) // 2 roughly."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 10, 3), nn.PReLU(10), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(10, 16, 3), nn.PReLU(16), nn.Conv2d(16, 32, 3), nn.PReLU(32))
        self.box = nn.Conv2d(32, 4, 1)
        self.cls = nn.Conv2d(32, 2, 1)

    def forward(self, x):
        h = self.body(x)
        return self.box(h), torch.softmax(self.cls(h), dim=1)[:, 1]


class _RNet(nn.Module):
    """(B, 3, 24, 24) -> box offsets (B, 4), face probability (B,)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 28, 3), nn.PReLU(28), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(28, 48, 3), nn.PReLU(48), nn.MaxPool2d(3, 2),
            nn.Conv2d(48, 64, 2), nn.PReLU(64))
        self.fc = nn.Sequential(nn.Linear(576, 128), nn.PReLU(128))
        self.box = nn.Linear(128, 4)
        self.cls = nn.Linear(128, 2)

    def forward(self, x):
        h = self.fc(self.body(x).permute(0, 3, 2, 1).flatten(1))  # Keras flattens (W, H, C)
        return self.box(h), torch.softmax(self.cls(h), dim=1)[:, 1]


class _ONet(nn.Module):
    """(B, 3, 48, 48) -> box offsets (B, 4), landmarks (B, 10) as x1..x5, y1..y5 in box units, probability (B,)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.PReLU(32), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(32, 64, 3), nn.PReLU(64), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 64, 3), nn.PReLU(64), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(64, 128, 2), nn.PReLU(128))
        self.fc = nn.Sequential(nn.Linear(1152, 256), nn.PReLU(256))
        self.box = nn.Linear(256, 4)
        self.landmarks = nn.Linear(256, 10)
        self.cls = nn.Linear(256, 2)

    def forward(self, x):
        h = self.fc(self.body(x).permute(0, 3, 2, 1).flatten(1))
        return self.box(h), self.landmarks(h), torch.softmax(self.cls(h), dim=1)[:, 1]


def _load_keras(net: nn.Module, arrays: list[np.ndarray]) -> nn.Module:
    """Copy a Keras weight list (conv HWIO, PReLU alphas, dense (in, out)) into ``net`` in definition order."""
    params = [p for p in net.parameters()]
    if len(params) != len(arrays):
        raise AffectMAEError(f"MTCNN weights: expected {len(params)} arrays for {type(net).__name__}, got {len(arrays)}")
    with torch.no_grad():
        for p, a in zip(params, arrays, strict=True):
            a = np.asarray(a, dtype=np.float32)
            if a.ndim == 4:
                a = a.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            elif a.ndim == 2:
                a = a.T  # (in, out) -> (out, in)
            else:
                a = a.reshape(-1)
            if tuple(a.shape) != tuple(p.shape):
                raise AffectMAEError(f"MTCNN weights: shape {a.shape} does not fit {tuple(p.shape)} in {type(net).__name__}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(a)))
    return net.eval()


def weights_dir() -> Path:
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise AffectMAEError("the mtcnn detector needs the `mtcnn` package: pip install mtcnn")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / "weights"


def _square(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 -> squares with the same centre and the longer side."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Resize each box of the normalised ``image (H, W, 3) float32`` (zero outside) to ``(N, 3, size, size)``."""
    out = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        # affine map from the box to the output square; pixels outside the image read 0 (= mid grey)
        sx, sy = size / max(x2 - x1, 1e-3), size / max(y2 - y1, 1e-3)
        m = np.array([[sx, 0, -x1 * sx], [0, sy, -y1 * sy]], dtype=np.float64)
        out[i] = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


class MTCNNDetector:
    """MTCNN on CPU (see the module docstring). ``min_face`` also sets the pyramid's largest scale, so a
    larger ``min_face`` is faster; frames above ``max_side`` are downscaled for detection."""

    name = "mtcnn"

    def __init__(self, min_score: float = 0.5, min_face: int = 0, max_side: int = 960):
        import joblib

        root = weights_dir()
        self.pnet = _load_keras(_PNet(), joblib.load(root / "pnet.lz4"))
        self.rnet = _load_keras(_RNet(), joblib.load(root / "rnet.lz4"))
        self.onet = _load_keras(_ONet(), joblib.load(root / "onet.lz4"))
        self.min_score = float(min_score)
        self.min_face = int(min_face)
        self.max_side = int(max_side)

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        check_frame(rgb)
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1:
            rgb = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        image = (rgb.astype(np.float32) - 127.5) / 128.0
        min_face = max(self.min_face * scale, 20.0)  # smallest face in the detection image (px)
        boxes = self._propose(image, min_face)
        if len(boxes):
            boxes = self._refine(image, boxes)
        if not len(boxes):
            return []
        boxes, landmarks, scores = self._output(image, boxes)
        out = []
        for box, lm, score in zip(boxes / scale, landmarks / scale, scores, strict=True):
            if score < self.min_score or min(box[2] - box[0], box[3] - box[1]) < self.min_face:
                continue
            out.append(Detection(box.astype(np.float32), float(score), lm.astype(np.float32)))
        out.sort(key=lambda d: -d.score)
        return out

    def _propose(self, image: np.ndarray, min_face: float) -> np.ndarray:
        """P-Net over the image pyramid -> square candidate boxes (N, 4) in image pixels."""
        height, width = image.shape[:2]
        found = []
        s = 12.0 / min_face
        while min(height, width) * s >= 12:
            scaled = cv2.resize(image, (max(int(np.ceil(width * s)), 12), max(int(np.ceil(height * s)), 12)),
                                interpolation=cv2.INTER_AREA)
            reg, prob = self.pnet(torch.from_numpy(scaled).permute(2, 0, 1)[None])
            prob, reg = prob[0].numpy(), reg[0].numpy()
            ys, xs = np.nonzero(prob > THRESHOLDS[0])
            if len(ys):
                cells = np.stack([xs * 2, ys * 2, xs * 2 + 12, ys * 2 + 12], axis=1) / s  # (n, 4) in image px
                side = 12 / s
                boxes = cells + reg[:, ys, xs].T * side
                scores = prob[ys, xs]
                keep = nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(), 0.5).numpy()
                found.append(np.concatenate([boxes[keep], scores[keep, None]], axis=1))
            s *= SCALE_STEP
        if not found:
            return np.zeros((0, 4))
        cand = np.concatenate(found)
        keep = nms(torch.from_numpy(cand[:, :4]).float(), torch.from_numpy(cand[:, 4]).float(), 0.7).numpy()
        return _square(cand[keep, :4])

    def _refine(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        reg, prob = self.rnet(_crops(image, boxes, 24))
        keep = (prob > THRESHOLDS[1]).numpy()
        boxes, reg, prob = boxes[keep], reg.numpy()[keep], prob.numpy()[keep]
        if not len(boxes):
            return boxes
        side = (boxes[:, 2:] - boxes[:, :2])
        boxes = boxes + reg * np.concatenate([side, side], axis=1)
        keep = nms(torch.from_numpy(boxes).float(), torch.from_numpy(prob).float(), 0.7).numpy()
        return _square(boxes[keep])

    def _output(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        reg, lm, prob = self.onet(_crops(image, boxes, 48))
        reg, lm, prob = reg.numpy(), lm.numpy(), prob.numpy()
        keep = prob > THRESHOLDS[2]
        boxes, reg, lm, prob = boxes[keep], reg[keep], lm[keep], prob[keep]
        side = boxes[:, 2:] - boxes[:, :2]  # (n, 2) w, h
        landmarks = np.stack([boxes[:, None, 0] + lm[:, :5] * side[:, None, 0],
                              boxes[:, None, 1] + lm[:, 5:] * side[:, None, 1]], axis=-1)  # (n, 5, 2)
        boxes = boxes + reg * np.concatenate([side, side], axis=1)
        # "min" overlap: a box mostly inside a higher-scoring one is the same face
        order = np.argsort(-prob)
        kept = []
        for i in order:
            if all(_overlap_min(boxes[i], boxes[j]) <= 0.7 for j in kept):
                kept.append(i)
        kept = np.array(kept, dtype=int)
        return boxes[kept], landmarks[kept], prob[kept]


def _overlap_min(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(w * h / smaller) if smaller > 0 else 0.0
