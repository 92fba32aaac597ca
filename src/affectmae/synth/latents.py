"""Latent affect trajectories for synthetic data, and the labels derived from them.

A synthetic person's state at frame ``t`` is a 14-vector (``LATENT_NAMES``): valence and arousal in
[-1, 1], then the intensities of the 12 Aff-Wild2 action units in [0, 1]. It is smooth in time: a hidden
"emotion drive" (episodes of ~15-75 frames, in shuffled rounds over the 8 expressions) picks a prototype
latent per episode, the prototypes are low-pass filtered (Gaussian, sigma 5 frames) and slow Gaussian-filtered
noise is added on top.

Labels are a deterministic function of the latent (``labels_from_latents``):

- VA = (valence, arousal), AU = intensity > 0.5,
- EXPR = ``expression_from_latent``: FACS-like rules over the active AUs and the sign of valence/arousal
  (fear = AU1+AU4+AU25/26 with arousal; sadness = AU1+AU4+AU15; anger = AU4+AU7+AU23/24; disgust = AU10;
  happiness = AU6+AU12; surprise = AU1+AU2+AU25/26 without AU4; neutral = nothing active; else Other).

Public API (also used for scene videos)::

    sample_trajectory(n_frames: int, rng: np.random.Generator, *, obs_noise: float = 0.06,
                      occlusion_rate: float = 0.01, blur_rate: float = 0.008) -> Trajectory
    labels_from_latents(latent: (T, 14)) -> (va (T, 2) float32, expr (T,) int64, au (T, 12) int64)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from affectmae.tasks import ACTION_UNITS, EXPRESSIONS

LATENT_NAMES = ("valence", "arousal") + ACTION_UNITS
N_LATENT = len(LATENT_NAMES)
AU_THRESHOLD = 0.5
_AU = {name: i for i, name in enumerate(ACTION_UNITS)}

# Region of the face each latent is drawn in: 0 = upper (brows/eyes), 1 = lower (nose/mouth).
# An occluder over one region hides the latents of that region (used by the oracle).
LATENT_REGION = np.array([1, 0] + [0 if au in ("AU1", "AU2", "AU4", "AU6", "AU7") else 1 for au in ACTION_UNITS])

# Occlusion codes stored per frame in Trajectory.occlusion.
OCCLUSION_NONE, OCCLUSION_UPPER, OCCLUSION_LOWER = 0, 1, 2


def _prototype(valence: float, arousal: float, **aus: float) -> np.ndarray:
    vec = np.full(N_LATENT, 0.1, dtype=np.float64)
    vec[0], vec[1] = valence, arousal
    for name, value in aus.items():
        vec[2 + _AU[name]] = value
    return vec


# One prototype latent per expression (the emotion drive pulls the latent toward it).
PROTOTYPES = np.stack(
    [
        _prototype(0.05, -0.15),  # Neutral
        _prototype(-0.6, 0.55, AU4=0.9, AU7=0.85, AU23=0.85, AU24=0.8, AU10=0.3),  # Anger
        _prototype(-0.55, 0.15, AU10=0.85, AU4=0.6, AU15=0.55, AU25=0.4),  # Disgust
        _prototype(-0.6, 0.75, AU1=0.9, AU2=0.75, AU4=0.85, AU7=0.6, AU25=0.9, AU26=0.6),  # Fear
        _prototype(0.7, 0.35, AU6=0.85, AU12=0.9, AU25=0.6, AU7=0.3),  # Happiness
        _prototype(-0.6, -0.35, AU1=0.9, AU4=0.85, AU15=0.9, AU24=0.3),  # Sadness
        _prototype(0.25, 0.7, AU1=0.85, AU2=0.85, AU25=0.8, AU26=0.8),  # Surprise
        _prototype(0.0, 0.1, AU4=0.7, AU12=0.75, AU24=0.65),  # Other (a mixture no rule names)
    ]
)
# Relative episode length per driving expression; tuned so every label class is >= ~5 % of frames
# (transitions and weak episodes add Neutral and Other frames on top of their own episodes).
DRIVE_LENGTH = np.array([0.8, 1.1, 1.0, 1.0, 1.0, 1.1, 1.0, 0.6])


@dataclass
class Trajectory:
    """Everything needed to render ``T`` frames of one synthetic person.

    latent: (T, 14) float32, the ground truth (valence, arousal, 12 AU intensities); labels derive from it.
    observed: (T, 14) float32, what is drawn: latent + per-frame observation noise.
    pose: (T, 4) float32, (roll degrees, dx, dy as fractions of the image size, scale).
    light: (T, 2) float32, (gain, left-right shading in [-1, 1]).
    occlusion: (T,) int8, OCCLUSION_NONE / OCCLUSION_UPPER / OCCLUSION_LOWER (short runs).
    blur: (T,) float32, Gaussian blur sigma in output pixels (0 = sharp; short runs).
    drive: (T,) int8, the hidden emotion episode (index into EXPRESSIONS), not a label.
    """

    latent: np.ndarray
    observed: np.ndarray
    pose: np.ndarray
    light: np.ndarray
    occlusion: np.ndarray
    blur: np.ndarray
    drive: np.ndarray

    def __len__(self) -> int:
        return len(self.latent)


def gaussian_kernel(sigma: float) -> tuple[np.ndarray, int]:
    """Gaussian taps ``exp(-k^2 / (2 sigma^2))`` for ``k = -radius..radius``, ``radius = ceil(3 sigma)``; not
    normalised (each caller scales them). Returns (kernel (2 radius + 1,), radius)."""
    radius = int(np.ceil(3 * sigma))
    return np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2), radius


def convolve_time(x: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """Convolve every column of ``x`` (T, C) with ``kernel`` along T (``np.convolve`` ``mode``)."""
    return np.stack([np.convolve(x[:, c], kernel, mode=mode) for c in range(x.shape[1])], axis=1)


def smooth_noise(n: int, channels: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """White noise low-pass filtered with a Gaussian of ``sigma`` frames, rescaled to unit std: (n, channels)."""
    kernel, radius = gaussian_kernel(sigma)
    kernel /= np.sqrt((kernel**2).sum())  # unit variance for unit-variance input
    white = rng.standard_normal((n + 2 * radius, channels))
    return convolve_time(white, kernel, "valid")[:n]


def _gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth (T, C) along T with edge padding, so the ends are not pulled toward zero."""
    kernel, radius = gaussian_kernel(sigma)
    kernel /= kernel.sum()
    padded = np.pad(x, ((radius, radius), (0, 0)), mode="edge")
    return convolve_time(padded, kernel, "valid")


def _episodes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Hidden emotion drive per frame: (n,) int. Episodes of ~15-75 frames visit the 8 expressions in
    shuffled rounds (each round is a permutation), so every video of a few hundred frames shows most of them."""
    drive = np.empty(n, dtype=np.int64)
    t, last = 0, -1
    while t < n:
        order = rng.permutation(len(EXPRESSIONS))
        if order[0] == last:
            order = np.roll(order, -1)
        for k in order.tolist():
            length = int(round(rng.integers(15, 76) * DRIVE_LENGTH[k]))
            drive[t : t + length] = k
            t += length
            last = k
            if t >= n:
                break
    return drive


def _runs(n: int, rate: float, min_len: int, max_len: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Random non-overlapping runs [start, stop) covering about ``rate`` of ``n`` frames."""
    runs: list[tuple[int, int]] = []
    count = rng.poisson(rate * n / ((min_len + max_len) / 2))
    for _ in range(count):
        length = int(rng.integers(min_len, max_len + 1))
        if length >= n:
            continue
        start = int(rng.integers(0, n - length))
        if all(stop <= start or start + length <= begin for begin, stop in runs):
            runs.append((start, start + length))
    return sorted(runs)


def sample_trajectory(
    n_frames: int,
    rng: np.random.Generator,
    *,
    obs_noise: float = 0.06,
    occlusion_rate: float = 0.01,
    blur_rate: float = 0.008,
) -> Trajectory:
    """Sample ``n_frames`` of smooth latent affect plus rendering nuisances (pose, light, occlusion, blur).

    ``obs_noise`` is the std of the per-frame noise between the latent and what is drawn; ``occlusion_rate``
    and ``blur_rate`` are the expected fractions of frames in occluded / blurred runs (4-15 frames each).
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    n = n_frames
    drive = _episodes(n, rng)
    strength = np.empty(n)  # per episode, so weak episodes fall below the AU threshold
    boundaries = np.flatnonzero(np.diff(drive)) + 1
    for start, stop in zip(np.r_[0, boundaries], np.r_[boundaries, n], strict=True):
        strength[start:stop] = rng.uniform(0.7, 1.2)
    neutral = PROTOTYPES[0]
    target = neutral + strength[:, None] * (PROTOTYPES[drive] - neutral)
    latent = _gaussian_smooth(target, sigma=5.0)
    latent[:, :2] += 0.12 * smooth_noise(n, 2, 12.0, rng)
    latent[:, 2:] += 0.12 * smooth_noise(n, N_LATENT - 2, 8.0, rng)
    latent[:, :2] = np.clip(latent[:, :2], -1.0, 1.0)
    latent[:, 2:] = np.clip(latent[:, 2:], 0.0, 1.0)
    observed = latent + obs_noise * rng.standard_normal(latent.shape)

    pose = np.empty((n, 4))
    pose[:, 0] = 4.0 * smooth_noise(n, 1, 20.0, rng)[:, 0]  # roll, degrees
    pose[:, 1:3] = 0.015 * smooth_noise(n, 2, 20.0, rng)  # dx, dy
    pose[:, 3] = 1.0 + 0.04 * smooth_noise(n, 1, 30.0, rng)[:, 0]  # scale
    light = np.empty((n, 2))
    light[:, 0] = np.clip(1.0 + 0.12 * smooth_noise(n, 1, 40.0, rng)[:, 0], 0.6, 1.4)
    light[:, 1] = np.clip(0.35 * smooth_noise(n, 1, 40.0, rng)[:, 0], -1.0, 1.0)

    occlusion = np.zeros(n, dtype=np.int8)
    for start, stop in _runs(n, occlusion_rate, 4, 15, rng):
        occlusion[start:stop] = rng.choice([OCCLUSION_UPPER, OCCLUSION_LOWER])
    blur = np.zeros(n, dtype=np.float32)
    for start, stop in _runs(n, blur_rate, 4, 15, rng):
        blur[start:stop] = rng.uniform(1.0, 2.0)
    return Trajectory(
        latent=latent.astype(np.float32),
        observed=observed.astype(np.float32),
        pose=pose.astype(np.float32),
        light=light.astype(np.float32),
        occlusion=occlusion,
        blur=blur,
        drive=drive.astype(np.int8),
    )


def expression_from_latent(latent: np.ndarray) -> np.ndarray:
    """EXPR class index (into ``EXPRESSIONS``) per frame. latent: (T, 14) -> (T,) int64.

    The first matching rule wins: fear, sadness, anger, disgust, happiness, surprise, neutral, else Other.
    """
    latent = np.atleast_2d(latent)
    valence, arousal = latent[:, 0], latent[:, 1]
    on = {name: latent[:, 2 + i] > AU_THRESHOLD for name, i in _AU.items()}
    n_active = (latent[:, 2:] > AU_THRESHOLD).sum(axis=1)
    mouth_open = on["AU25"] | on["AU26"]
    rules = [
        ("Fear", on["AU1"] & on["AU4"] & mouth_open & (arousal > 0.2)),
        ("Sadness", on["AU1"] & on["AU4"] & on["AU15"] & (valence < 0)),
        ("Anger", on["AU4"] & on["AU7"] & (on["AU23"] | on["AU24"])),
        ("Disgust", on["AU10"] & (valence < 0.2) & ~on["AU12"]),
        ("Happiness", on["AU6"] & on["AU12"] & (valence > 0)),
        ("Surprise", on["AU1"] & on["AU2"] & mouth_open & ~on["AU4"]),
        ("Neutral", (n_active == 0) | ((n_active == 1) & (np.abs(valence) < 0.3) & (np.abs(arousal) < 0.3))),
    ]
    expr = np.full(len(latent), EXPRESSIONS.index("Other"), dtype=np.int64)
    for name, hit in reversed(rules):  # reversed, so the earliest rule is written last and wins
        expr[hit] = EXPRESSIONS.index(name)
    return expr


def labels_from_latents(latent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """latent: (T, 14) -> (va (T, 2) float32 in [-1, 1], expr (T,) int64 in 0..7, au (T, 12) int64 0/1)."""
    latent = np.atleast_2d(np.asarray(latent, dtype=np.float64))
    va = np.clip(latent[:, :2], -1.0, 1.0).astype(np.float32)
    au = (latent[:, 2:] > AU_THRESHOLD).astype(np.int64)
    return va, expression_from_latent(latent), au
