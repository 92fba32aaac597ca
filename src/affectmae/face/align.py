"""Align a detected face to a 112x112 crop with a 5-point similarity transform.

The template is the widely used 112x112 five-point layout (eyes, nose tip, mouth corners) that the
Aff-Wild2 ``cropped_aligned`` frames follow closely: a frontal face filling the crop, eyes at ~46 % of the
height. ``margin`` > 1 zooms out around the template centre (more context), < 1 zooms in.

The similarity (rotation, uniform scale, translation) is fitted by least squares in closed form
(Umeyama 1991, without reflection), so no solver or extra dependency is involved.
"""

from __future__ import annotations

import cv2
import numpy as np

CROP_SIZE = 112

# (5, 2) x, y in a 112x112 crop: eye left-in-image, eye right-in-image, nose tip, mouth left, mouth right.
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def face_template(size: int = CROP_SIZE, margin: float = 1.0) -> np.ndarray:
    """Template landmarks ``(5, 2)`` for a ``size`` x ``size`` crop; ``margin`` scales about the centre."""
    centre = CROP_SIZE / 2.0
    points = (TEMPLATE_112 - centre) / margin + centre
    return points * (size / CROP_SIZE)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity mapping ``src (N, 2)`` onto ``dst (N, 2)``; returns a ``(2, 3)`` matrix.

    ``dst ≈ (M[:, :2] @ src.T).T + M[:, 2]`` with ``M[:, :2] = s * R``, ``R`` a proper rotation.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_s, dst - mu_d
    var_s = (src_c**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("source points are all identical")
    cov = dst_c.T @ src_c / len(src)  # (2, 2)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points (N, 2)`` -> ``(N, 2)`` under a ``(2, 3)`` affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE, margin: float = 1.0) -> np.ndarray:
    """Warp the face with ``landmarks (5, 2)`` in ``rgb (H, W, 3) uint8`` to a ``(size, size, 3)`` uint8 crop.

    Pixels outside the frame are filled by replicating the border, so faces at the edge still give a crop.
    """
    matrix = similarity_transform(landmarks, face_template(size, margin))
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
