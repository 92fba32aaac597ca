"""Per-face predictions beside an ``analyze`` table: each analysed face re-aligned from the video exactly as
``analyze`` aligned it (:func:`affectmae.face.align.align_face` on the table's 5 landmarks), then read by the
FER2013 teacher and, optionally, by a per-frame expression model of our own (:class:`FrameExpressionModel`).

    teacher_probs, frame_probs, rows = predict_table_faces(table, "clip.mp4", teacher, frame_model)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from affectmae.errors import AffectMAEError, CheckpointError, InputFormatError
from affectmae.face.align import CROP_SIZE, align_face
from affectmae.inference.table import LANDMARK_COLUMNS
from affectmae.media.video import VideoReader
from affectmae.models.fer_teacher import TEACHER_MARGIN, FERTeacher
from affectmae.tasks import EXPRESSIONS

log = logging.getLogger(__name__)

FRAME_HEAD_FILE = "head_expr.safetensors"  # the EXPR head `affectmae finetune` writes beside its encoder


class FrameExpressionModel:
    """Our EXPR probabilities from one frame alone, no temporal context: ``predict(crops (N, S, S, 3) uint8)
    -> (N, 8)`` on crops aligned at ``margin`` (the MODEL_DIR's, as ``analyze`` uses).

    With ``head`` (``head_expr.safetensors`` of the fine-tuning run whose encoder the MODEL_DIR holds): that
    linear head on the encoder's pooled feature, softmax. Without it: the MODEL_DIR's temporal EXPR heads run
    on each frame alone (a window of one frame), which they were not trained for.
    """

    def __init__(self, model, margin: float, head: str | Path | None = None):
        from affectmae.models.preprocess import encoder_normalisation

        self.model, self.margin = model, float(margin)
        self.encoder = model.encoder.eval()
        self.img_size = int(self.encoder.arch["img_size"])
        self.normalisation = encoder_normalisation(self.encoder)
        self.head = None if head is None else _load_head(head, self.encoder.embed_dim)
        self.name = (f"per-frame: the fine-tuned encoder's linear EXPR head ({Path(head).name})" if head else
                     "per-frame: the temporal EXPR heads on one frame at a time")
        if self.head is None and "expr" not in model.tasks:
            raise AffectMAEError("the MODEL_DIR has no EXPR head and no per-frame head was given")

    @torch.inference_mode()
    def features(self, crops: np.ndarray) -> np.ndarray:
        """``crops (N, S, S, 3)`` uint8 -> pooled encoder features ``(N, D)`` float32."""
        from affectmae.models.preprocess import preprocess_frames

        x = preprocess_frames(crops, self.img_size, *self.normalisation)
        return self.encoder.forward_features(x)["pooled"].float().numpy()

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """``features (N, D)`` (all faces of a video, in order) -> EXPR probabilities ``(N, 8)``."""
        if self.head is not None:
            weight, bias = self.head
            logits = torch.from_numpy(features) @ weight.T + bias
            return torch.softmax(logits, dim=1).numpy().astype(np.float32)
        return self.model.predict_sequence(features, None, window=1)["expr"]


def _load_head(path: str | Path, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    from affectmae.checkpoint import load_weights

    tensors, meta = load_weights(path)
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if meta.get("kind") != "linear_head" or meta.get("task") != "expr" or weight is None or bias is None:
        raise CheckpointError(f"{path}: not an EXPR head written by `affectmae finetune` "
                              f"(kind {meta.get('kind')!r}, task {meta.get('task')!r})")
    if tuple(weight.shape) != (len(EXPRESSIONS), dim):
        raise CheckpointError(f"{path}: head of shape {tuple(weight.shape)}; the encoder needs ({len(EXPRESSIONS)}, {dim})")
    return weight.float(), bias.float()


def analysed_faces(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``table`` where a face was detected on an analysed frame, by frame then face_id."""
    rows = table[table["face_detected"].astype(bool) & table["analyzed"].astype(bool)]
    return rows.sort_values(["frame", "face_id"], kind="stable")


def _aligned_batches(video: str | Path, rows: pd.DataFrame, margins: tuple[float, ...], batch: int):
    """Yield lists (one per margin) of up to ``batch`` aligned crops ``(n, 112, 112, 3)``, in row order."""
    frames = rows["frame"].to_numpy()
    landmarks = rows[LANDMARK_COLUMNS].to_numpy(np.float64).reshape(-1, 5, 2)
    pending: list[list[np.ndarray]] = [[] for _ in margins]
    done = 0
    with VideoReader(video) as reader:
        for frame in reader.frames(1):
            while done < len(frames) and frames[done] == frame.index:
                for crops, margin in zip(pending, margins, strict=True):
                    crops.append(align_face(frame.rgb, landmarks[done], CROP_SIZE, margin))
                done += 1
            if len(pending[0]) >= batch or (done == len(frames) and pending[0]):
                yield [np.stack(c) for c in pending]
                pending = [[] for _ in margins]
            if done == len(frames):
                return
    raise InputFormatError(video, f"the video ends before frame {frames[done]} of the table; "
                           "is the table from another video?")


def predict_table_faces(table: pd.DataFrame, video: str | Path, teacher: FERTeacher,
                        frame_model: FrameExpressionModel | None = None,
                        batch: int = 64) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame]:
    """Teacher probabilities ``(N, 7)`` and the per-frame model's EXPR probabilities ``(N, 8)`` (or None) for the
    N rows of :func:`analysed_faces` (returned as the third value, in the same order)."""
    rows = analysed_faces(table)
    if rows.empty:
        raise AffectMAEError(f"{video}: the table has no analysed frame with a face")
    margins = (TEACHER_MARGIN,) if frame_model is None else (TEACHER_MARGIN, frame_model.margin)
    teacher_parts, feature_parts = [], []
    for crops in _aligned_batches(video, rows, margins, batch):
        teacher_parts.append(teacher.predict_crops(crops[0]))
        if frame_model is not None:
            feature_parts.append(frame_model.features(crops[1]))
    frame_probs = None if frame_model is None else frame_model.probabilities(np.concatenate(feature_parts))
    log.info("%s: %d faces re-aligned and read by the teacher", video, len(rows))
    return np.concatenate(teacher_parts), frame_probs, rows
