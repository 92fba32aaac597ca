"""Face detection behind a small interface, with backends whose weights ship inside a registry package.

    detector = get_detector("auto", min_face=40)
    for det in detector.detect(rgb):          # rgb: (H, W, 3) uint8
        det.box        # (4,) float32 x1, y1, x2, y2 in pixels
        det.score      # float in [0, 1]
        det.landmarks  # (5, 2) float32: eye left-in-image, eye right-in-image, nose tip, mouth left, mouth right

Backends, in the order ``"auto"`` tries them:
- ``yuface`` (PyPI ``yuface``, BSD-3, libfacedetection compiled in; wheels for Python 3.10/3.11). Its
  OpenMP pool is pinned to one thread when the detector is built: with the default spinning pool it
  competes with PyTorch's threads and runs many times slower.
- ``mtcnn`` (:mod:`affectmae.face.mtcnn`: the networks in PyTorch, weights from PyPI ``mtcnn``, MIT, pure
  Python, so every Python 3.10-3.13): the installed default where yuface has no wheel.

``get_detector("auto")`` picks the first available backend and otherwise raises an
:class:`~affectmae.errors.AffectMAEError` that says what to install.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from affectmae.errors import AffectMAEError

log = logging.getLogger(__name__)

# yuface warns (and loses accuracy) above this size; larger frames are downscaled for detection only.
YUFACE_MAX_SIDE = 960


@dataclass(frozen=True)
class Detection:
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2) float32 (x, y)

    @property
    def size(self) -> float:
        """Shorter side of the box in pixels."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def centre(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2], dtype=np.float32)


class FaceDetector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """``rgb: (H, W, 3) uint8`` -> detections sorted by score, highest first."""
        ...


def check_frame(rgb: np.ndarray) -> None:
    """Every detector's input rule: an RGB frame (H, W, 3) uint8."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise AffectMAEError(f"detector input must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")


def _pin_openmp_to_one_thread(module_file: str) -> bool:
    """Limit the OpenMP runtime bundled next to ``module_file`` to one thread; True when done."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return False
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(module_file)))
    done = False
    for lib in ThreadpoolController().select(internal_api="openmp").lib_controllers:
        if lib.filepath and os.path.abspath(lib.filepath).startswith(package_dir) and "yuface" in lib.filepath:
            lib.set_num_threads(1)
            done = True
    return done


class YuFaceDetector:
    """libfacedetection (YuNet family) CNN via the ``yuface`` package: box, 5 landmarks, score."""

    name = "yuface"

    def __init__(self, min_score: float = 0.5, min_face: int = 0, max_side: int = YUFACE_MAX_SIDE):
        if "yuface" not in sys.modules:
            # A passive wait policy is the fallback when threadpoolctl cannot reach the pool below; it must be
            # set before the OpenMP runtime loads. Only set when the user has not chosen one.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import yuface
        except ImportError as err:
            raise AffectMAEError(_install_hint(f"cannot import yuface ({err})")) from None
        self._detect = yuface.c_detect
        self.pinned = _pin_openmp_to_one_thread(yuface.__file__)
        if not self.pinned:
            log.debug("threadpoolctl could not pin yuface's OpenMP pool; relying on OMP_WAIT_POLICY")
        if "torch" in sys.modules and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
            log.warning("PyTorch was loaded before OMP_WAIT_POLICY=PASSIVE was set: its idle OpenMP threads "
                        "busy-wait and slow face detection 5-40x on few cores. Set OMP_WAIT_POLICY=PASSIVE in the "
                        "environment (`affectmae analyze` does this itself)")
        self.min_score = float(min_score)
        self.min_face = int(min_face)
        self.max_side = int(max_side)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        check_frame(rgb)
        height, width = rgb.shape[:2]
        scale = 1.0
        image = rgb
        if max(height, width) > self.max_side:
            import cv2

            scale = self.max_side / max(height, width)
            image = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(image[..., ::-1])
        raw = np.asarray(self._detect(bgr), dtype=np.float32)  # (N, 16): score %, x, y, w, h, 10 landmarks, pad
        out = []
        for row in raw.reshape(-1, raw.shape[-1] if raw.size else 16):
            score = row[0] / 100.0
            if score < self.min_score:
                continue
            x, y, w, h = row[1:5] / scale
            if min(w, h) < self.min_face:
                continue
            box = np.array([x, y, x + w, y + h], dtype=np.float32)
            landmarks = (row[5:15] / scale).reshape(5, 2).astype(np.float32)
            out.append(Detection(box, float(score), landmarks))
        out.sort(key=lambda d: -d.score)
        return out


def _mtcnn(**kwargs) -> FaceDetector:
    from affectmae.face.mtcnn import MTCNNDetector

    return MTCNNDetector(**kwargs)


DETECTORS = {"yuface": YuFaceDetector, "mtcnn": _mtcnn}


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken or blocked package counts as missing
        return False


def available_detectors() -> list[str]:
    """Backends whose package is installed here, in order of preference."""
    return [name for name in DETECTORS if _installed(name)]


def _install_hint(reason: str) -> str:
    return (
        f"no face detector available: {reason}. Install one with `pip install mtcnn` (any Python 3.10-3.13; "
        "affectmae depends on it) or `pip install yuface` (Python 3.10 and 3.11 only)"
    )


def get_detector(name: str = "auto", min_score: float = 0.5, min_face: int = 0,
                 max_side: int = YUFACE_MAX_SIDE) -> FaceDetector:
    """Build the detector ``name`` (``"auto"``: the first available of :data:`DETECTORS`).

    ``min_face`` drops faces whose shorter box side is below that many pixels. Frames whose longer side
    exceeds ``max_side`` are downscaled for detection (boxes and landmarks come back in full-frame
    pixels): a smaller ``max_side`` is faster but misses small faces.
    """
    name = resolve_detector(name, max_side)
    return DETECTORS[name](min_score=min_score, min_face=min_face, max_side=max_side)


def resolve_detector(name: str = "auto", max_side: int = YUFACE_MAX_SIDE) -> str:
    """The concrete detector name for ``name`` (``"auto"``: the first installed), checked without loading it."""
    name = name.lower()
    if name == "auto":
        found = available_detectors()
        if not found:
            raise AffectMAEError(_install_hint(f"none of {', '.join(DETECTORS)} is installed"))
        name = found[0]
    if name not in DETECTORS:
        raise AffectMAEError(f"unknown face detector {name!r}; choose one of auto, {', '.join(DETECTORS)}")
    if max_side < 64:
        raise AffectMAEError(f"detector max_side must be >= 64 pixels, got {max_side}")
    return name
