"""A synthetic scene video for tests, the demo and benchmarks: rendered faces moving over a background.

Faces come from :func:`affectmae.synth.cartoon.render_face`, driven by smooth latent trajectories
(:func:`affectmae.synth.latents.sample_trajectory`), so their expressions change over time like the
synthetic training data. Each face drifts smoothly around the frame and changes size (``face_size``).
Optionally a shot cut (new background, faces jump to new places) and a range of frames with no face.

    truth = make_synthetic_video("clip.mp4", n_frames=60, n_faces=2, size=(320, 180))
    truth.boxes   # (T, F, 4) float32 x1, y1, x2, y2 of each face's square; NaN where not drawn
    truth.latent  # (T, F, 14) float32 valence, arousal, 12 AU intensities (the ground truth)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from affectmae.media.video import VideoWriter
from affectmae.synth.cartoon import render_face, sample_identity
from affectmae.synth.latents import sample_trajectory

log = logging.getLogger(__name__)


@dataclass
class SyntheticVideo:
    path: Path
    fps: float
    size: tuple[int, int]  # (width, height)
    boxes: np.ndarray  # (T, F, 4) float32, NaN where the face is not drawn
    latent: np.ndarray  # (T, F, 14) float32
    cut_at: int | None  # first frame of the second shot
    codec: str

    @property
    def n_frames(self) -> int:
        return len(self.boxes)

    def face_visible(self) -> np.ndarray:
        """(T, F) bool."""
        return ~np.isnan(self.boxes[..., 0])


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A soft two-colour gradient with a few blurred blobs: (H, W, 3) uint8."""
    a, b = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    img = np.broadcast_to(a + ramp * (b - a), (height, width, 3)).astype(np.float32).copy()
    for _ in range(6):
        centre = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        axes = (int(rng.uniform(0.05, 0.2) * width), int(rng.uniform(0.05, 0.2) * height))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, tuple(float(v) for v in rng.uniform(0, 255, 3)), -1)
    img = cv2.GaussianBlur(img, (0, 0), max(width, height) / 60)
    return np.clip(img, 0, 255).astype(np.uint8)


def _paths(n_frames: int, n_faces: int, width: int, height: int, face_size: tuple[int, int],
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth centre paths (T, F, 2) and sizes (T, F); faces start in separate columns of the frame."""
    t = np.arange(n_frames, dtype=np.float64)[:, None]
    lo, hi = face_size
    sizes = (lo + hi) / 2 + (hi - lo) / 2 * np.sin(2 * np.pi * t / rng.uniform(80, 160, n_faces) + rng.uniform(0, 6.3, n_faces))
    column = (np.arange(n_faces) + 0.5) / n_faces * width
    margin_x = max(width / n_faces / 2 - hi / 2, 0.0)
    cx = column + 0.8 * margin_x * np.sin(2 * np.pi * t / rng.uniform(90, 200, n_faces) + rng.uniform(0, 6.3, n_faces))
    margin_y = max(height / 2 - hi / 2, 0.0)
    cy = height / 2 + 0.8 * margin_y * np.sin(2 * np.pi * t / rng.uniform(70, 150, n_faces) + rng.uniform(0, 6.3, n_faces))
    return np.stack([cx, cy], axis=-1), sizes


def make_synthetic_video(
    path: str | Path,
    n_frames: int,
    n_faces: int = 1,
    size: tuple[int, int] = (640, 360),
    fps: float = 25.0,
    seed: int = 0,
    face_size: tuple[int, int] | None = None,
    cut_at: int | None = None,
    no_face: tuple[int, int] | None = None,
    rotation: int = 0,
    faststart: bool = False,
    codec: str | None = None,
) -> SyntheticVideo:
    """Render ``n_frames`` of ``n_faces`` moving, expressive faces to an MP4 at ``path``.

    face_size: (min, max) side of each face square in pixels (default 120-180 at 640x360, scaled with the
    frame height otherwise). cut_at: frame where a new shot starts. no_face: frames ``[start, stop)`` where
    no face is drawn. rotation: stores the frames rotated by ``-rotation`` with a display matrix of
    ``rotation`` degrees, so a correct reader shows them upright (a phone video). Returns the ground truth.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    if face_size is None:
        face_size = (round(120 * height / 360), round(180 * height / 360))
    if face_size[1] * n_faces > width or face_size[1] > height:
        log.warning("%d faces of up to %d px do not fit side by side in %dx%d; they will overlap",
                    n_faces, face_size[1], width, height)
    identities = [sample_identity(rng) for _ in range(n_faces)]
    trajectories = [sample_trajectory(n_frames, rng, occlusion_rate=0.0, blur_rate=0.0) for _ in range(n_faces)]
    shots = [_background(width, height, rng)]
    centres, sizes = _paths(n_frames, n_faces, width, height, face_size, rng)
    if cut_at is not None and 0 < cut_at < n_frames:
        shots.append(_background(width, height, rng))
        second, _ = _paths(n_frames, n_faces, width, height, face_size, rng)
        centres[cut_at:] = second[cut_at:][:, ::-1]  # faces swap sides at the cut
    else:
        cut_at = None
    boxes = np.full((n_frames, n_faces, 4), np.nan, dtype=np.float32)
    latent = np.stack([tr.latent for tr in trajectories], axis=1).astype(np.float32)
    stored_size = (height, width) if rotation % 180 == 90 else (width, height)
    with VideoWriter(path, stored_size, fps=fps, codec=codec, rotation=rotation, faststart=faststart) as writer:
        for k in range(n_frames):
            frame = shots[1 if cut_at is not None and k >= cut_at else 0].copy()
            if no_face is None or not (no_face[0] <= k < no_face[1]):
                for f in range(n_faces):
                    side = int(round(sizes[k, f])) // 2 * 2
                    x1 = int(round(centres[k, f, 0])) - side // 2
                    y1 = int(round(centres[k, f, 1])) - side // 2
                    tr = trajectories[f]
                    roll, dx, dy, scale = (float(v) for v in tr.pose[k])
                    face = render_face(tr.observed[k], rng, size=side, identity=identities[f],
                                       pose=(roll, dx, dy, scale), light=tuple(tr.light[k]), noise=2.0)
                    fx1, fy1 = max(x1, 0), max(y1, 0)
                    fx2, fy2 = min(x1 + side, width), min(y1 + side, height)
                    if fx2 <= fx1 or fy2 <= fy1:
                        continue
                    frame[fy1:fy2, fx1:fx2] = face[fy1 - y1:fy2 - y1, fx1 - x1:fx2 - x1]
                    boxes[k, f] = (x1, y1, x1 + side, y1 + side)
            writer.write(np.ascontiguousarray(np.rot90(frame, k=-(rotation // 90))) if rotation else frame)
        used_codec = writer.codec
    return SyntheticVideo(Path(path), float(fps), (width, height), boxes, latent, cut_at, used_codec)


@dataclass
class PhotoSceneVideo:
    path: Path
    fps: float
    size: tuple[int, int]  # (width, height)
    boxes: np.ndarray  # (T, P, 4) float32 per person, NaN where that person is not in the frame
    cuts: list[int]  # first frame of every shot after the first

    def face_visible(self) -> np.ndarray:
        """(T, P) bool."""
        return ~np.isnan(self.boxes[..., 0])


def make_photo_scene_video(path: str | Path, people: list, shots: list[tuple[int, tuple[int, ...]]],
                           size: tuple[int, int] = (640, 360), fps: float = 25.0, seed: int = 0,
                           face_size: tuple[int, int] = (120, 160), codec: str | None = None) -> PhotoSceneVideo:
    """A multi-shot video of real people: faces of :func:`affectmae.synth.photos.render_photo_face`
    (``people``: ``PhotoPerson`` list) with changing expressions, pose and light, pasted over a new
    background in every shot.

    shots: ``[(n_frames, (person index, ...)), ...]``; the people of a shot stand left to right in the order
    given (so listing them in another order makes them swap sides at the cut). Returns the ground truth:
    ``boxes (T, P, 4)`` per person of ``people``.
    """
    from affectmae.synth.photos import render_photo_face

    width, height = size
    rng = np.random.default_rng(seed)
    n_total = sum(n for n, _ in shots)
    trajectories = [sample_trajectory(n_total, rng, occlusion_rate=0.0, blur_rate=0.0) for _ in people]
    boxes = np.full((n_total, len(people), 4), np.nan, dtype=np.float32)
    cuts, k = [], 0
    with VideoWriter(path, size, fps=fps, codec=codec) as writer:
        for s, (n, who) in enumerate(shots):
            if s:
                cuts.append(k)
            background = _background(width, height, rng)
            centres, sizes = _paths(n, max(len(who), 1), width, height, face_size, rng)
            for t in range(n):
                frame = background.copy()
                for slot, p in enumerate(who):
                    side = int(round(sizes[t, slot])) // 2 * 2
                    x1 = int(np.clip(round(centres[t, slot, 0]) - side // 2, 0, width - side))
                    y1 = int(np.clip(round(centres[t, slot, 1]) - side // 2, 0, height - side))
                    tr = trajectories[p]
                    roll, dx, dy, scale = (float(v) for v in tr.pose[k])
                    frame[y1:y1 + side, x1:x1 + side] = render_photo_face(
                        people[p], tr.observed[k], rng, side, pose=(roll, dx, dy, scale), light=tuple(tr.light[k]))
                    boxes[k, p] = (x1, y1, x1 + side, y1 + side)
                writer.write(frame)
                k += 1
        used = writer.codec
    log.debug("wrote %s (%s, %d frames, %d shots)", path, used, n_total, len(shots))
    return PhotoSceneVideo(Path(path), float(fps), (width, height), boxes, cuts)
