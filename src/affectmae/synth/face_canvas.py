"""The canonical canvas every photographed face is aligned to once, before it is animated.

A face is warped with its 5 landmarks onto a :data:`CANVAS`-px square, the 112-px five-point template of
:mod:`affectmae.face.align` zoomed out by :data:`CANVAS_MARGIN` (room for pose and the jaw). Frames are cut
from the canvas with the template at :data:`OUTPUT_MARGIN` (forehead to chin, like Aff-Wild2's crops).

Where the canvas reaches past the photograph (tight crops, faces at the image edge), plain reflection would
paint mirrored eyes and mouths around the face. Instead, as in the FFHQ alignment, the reflected image is
blurred more with distance from the photo's edge and fades to the photo's mean colour
(:data:`FILL_BLUR`, :data:`FILL_FADE`). ``coverage`` says how much of the written crop is photograph.

    canvas, coverage = align_to_canvas(rgb, det.landmarks)   # (CANVAS, CANVAS, 3) float32, float in [0, 1]
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from affectmae.face.align import face_template, similarity_transform

CANVAS = 224  # side of the canonical canvas in pixels
CANVAS_MARGIN = 1.5  # the 112-px template zoomed out by this factor: room for pose and the jaw
OUTPUT_MARGIN = 1.15  # the written crop: forehead to chin, like Aff-Wild2's cropped_aligned frames
FILL_BLUR = (4.0, 16.0, 12.0)  # Gaussian sigmas at the photo's edge and beyond, canvas px, and the ramp between
FILL_FADE = 30.0  # canvas px outside the photo over which the fill fades to the photo's mean colour


def canvas_template() -> np.ndarray:
    """(5, 2) landmark positions on the canonical canvas."""
    return face_template(CANVAS, CANVAS_MARGIN)


@functools.lru_cache(maxsize=8)
def crop_matrix(size: int) -> np.ndarray:
    """(3, 3) canvas -> the ``size`` crop with the template at OUTPUT_MARGIN (the same for every frame)."""
    return np.vstack([similarity_transform(canvas_template(), face_template(size, OUTPUT_MARGIN)), [0, 0, 1]])


def align_to_canvas(rgb: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """``rgb (H, W, 3) uint8`` with the face's ``landmarks (5, 2)`` -> (canvas (CANVAS, CANVAS, 3) float32,
    coverage: the fraction of the 112-px output crop that lies inside the photograph)."""
    matrix = similarity_transform(landmarks, canvas_template())
    canvas = cv2.warpAffine(rgb, matrix, (CANVAS, CANVAS), flags=cv2.INTER_CUBIC,
                            borderMode=cv2.BORDER_REFLECT101).astype(np.float32)
    inside = cv2.warpAffine(np.ones(rgb.shape[:2], np.float32), matrix, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    coverage = float(cv2.warpAffine(inside, crop_matrix(112)[:2], (112, 112), flags=cv2.INTER_AREA).mean())
    if inside.min() < 1.0:
        canvas = _fill_outside(canvas, inside)
    return canvas, min(coverage, 1.0)


def _fill_outside(canvas: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Replace the reflected pixels outside the photograph (``inside`` < 1) by a blur that grows with the
    distance from the photo and fades to the photo's mean colour."""
    distance = cv2.distanceTransform((inside < 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    near, far, ramp = FILL_BLUR
    t_blur = np.clip(distance / ramp, 0.0, 1.0)[..., None]
    t_fade = np.clip(distance / FILL_FADE, 0.0, 1.0)[..., None]
    fill = cv2.GaussianBlur(canvas, (0, 0), near) * (1.0 - t_blur) + cv2.GaussianBlur(canvas, (0, 0), far) * t_blur
    core = inside > 0.99
    mean = canvas[core].mean(axis=0) if core.any() else canvas.reshape(-1, 3).mean(axis=0)
    fill = fill * (1.0 - t_fade) + mean * t_fade
    alpha = inside[..., None]
    return (canvas * alpha + fill * (1.0 - alpha)).astype(np.float32)
