"""A fast cartoon-but-plausible frontal face renderer (numpy + OpenCV drawing) driven by affect latents.

The face is drawn on a canvas twice the output size with anti-aliased primitives and shrunk with area
averaging. What each latent (see ``affectmae.synth.latents.LATENT_NAMES``) moves:

- brows: AU1 raises the inner ends, AU2 the outer ends, AU4 lowers them, pulls them together, adds furrows;
- eyes: arousal opens them, AU7 narrows them (lower lid up), AU6 raises the lower lid and the cheeks (blush);
- nose: AU10 raises the upper lip and the nostrils and wrinkles the nose;
- mouth: AU12 pulls the corners up and out, AU15 down; AU25 parts the lips, AU26 drops the jaw;
  AU23 tightens (narrows, thins) and AU24 presses (thins) the lips; valence curves the mouth slightly;
- arousal also flushes the cheeks.

On top: identity (skin, hair, iris, background colours, face proportions), pose (roll, shift, scale),
lighting (gain and left-right shading), an occluder over the upper or lower face, blur and pixel noise.

Public API (scene videos paste these renders)::

    sample_identity(rng: np.random.Generator) -> FaceIdentity
    render_face(params: (14,) array, rng: np.random.Generator, size: int = 112, *, identity=None,
                pose=(0, 0, 0, 1), light=(1, 0), occlusion=0, blur=0.0, noise=3.0)
        -> np.ndarray (size, size, 3) uint8 RGB
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from affectmae.synth.latents import LATENT_NAMES, N_LATENT, OCCLUSION_LOWER, OCCLUSION_UPPER

_SS = 2  # supersampling factor
_SHIFT = 4  # cv2 sub-pixel bits for drawing coordinates
# The face is drawn in unit coordinates (head oval about 0.58 x 0.74 of the image), then zoomed about the
# pivot so that, like an Aff-Wild2 aligned crop, the face fills most of the image (forehead to chin).
_ZOOM = 1.25
_PIVOT = (0.5, 0.55)
# How much larger a 5-point-aligned crop must be taken (``affectmae analyze`` ``align_margin``) to frame a
# detected rendered face the way these renders frame it: the mean scale from yuface's landmarks on renders to
# the standard 112-px template (how it was measured: docs/analyze.md). The demo stores it in its MODEL_DIR.
ALIGN_MARGIN = 1.36


@dataclass(frozen=True)
class FaceIdentity:
    """Per-person appearance. Colours are RGB in 0..255; sizes are fractions of the image."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    lips: tuple[float, float, float]
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    face_width: float  # half-width of the head oval
    face_height: float  # half-height of the head oval
    eye_spacing: float  # distance of each eye from the midline
    hair_style: int  # 0 short, 1 long (hair falls beside the face)


def sample_identity(rng: np.random.Generator) -> FaceIdentity:
    """A random person: skin tones from light to dark, natural hair and iris colours, a random background."""
    tone = rng.uniform(0.0, 1.0)
    light_skin, dark_skin = np.array([238, 200, 175]), np.array([120, 80, 58])
    skin = light_skin + tone * (dark_skin - light_skin) + rng.normal(0, 6, 3)
    hair = np.array([[30, 22, 18], [70, 45, 25], [120, 85, 50], [190, 160, 110], [60, 58, 56]])[rng.integers(5)]
    iris = np.array([[70, 45, 30], [60, 90, 130], [70, 110, 70], [40, 30, 25]])[rng.integers(4)]
    lips = skin * np.array([0.85, 0.55, 0.55]) + np.array([30, 0, 5])
    bg_a = rng.uniform(30, 230, 3)
    bg_b = np.clip(bg_a + rng.normal(0, 40, 3), 0, 255)
    return FaceIdentity(
        skin=tuple(np.clip(skin, 0, 255)),
        hair=tuple(np.clip(hair + rng.normal(0, 8, 3), 0, 255)),
        iris=tuple(np.clip(iris + rng.normal(0, 8, 3), 0, 255)),
        lips=tuple(np.clip(lips, 0, 255)),
        background=(tuple(bg_a), tuple(bg_b)),
        face_width=float(rng.uniform(0.27, 0.31)),
        face_height=float(rng.uniform(0.35, 0.39)),
        eye_spacing=float(rng.uniform(0.115, 0.13)),
        hair_style=int(rng.integers(2)),
    )


DEFAULT_IDENTITY = FaceIdentity(
    skin=(215, 170, 140), hair=(60, 40, 25), iris=(70, 50, 35), lips=(190, 95, 90),
    background=((120, 140, 160), (90, 100, 120)), face_width=0.29, face_height=0.37, eye_spacing=0.12,
    hair_style=0,
)


class _Canvas:
    """Draws in unit face coordinates (0..1) on an (S, S, 3) uint8 RGB canvas, through the head pose.

    The pose (roll degrees, dx, dy, scale) is applied to every coordinate before drawing, so the head moves
    and the background does not, and no image warp is needed.
    """

    def __init__(self, size: int, background: np.ndarray, pose=(0.0, 0.0, 0.0, 1.0)):
        roll, dx, dy, scale = (float(v) for v in pose)
        self.size = size
        self.img = background
        unit = size * (1 << _SHIFT)  # fixed-point pixels per unit
        scale *= _ZOOM
        cos, sin = np.cos(np.deg2rad(roll)) * scale, np.sin(np.deg2rad(roll)) * scale
        # zoom and counter-clockwise roll on screen (y points down) about the pivot, then shift
        m = np.array([[cos, sin], [-sin, cos]])
        self._m = unit * m
        self._t = unit * (np.array([_PIVOT[0] + dx, _PIVOT[1] + dy]) - m @ np.array(_PIVOT))
        (self._a, self._b), (self._c, self._d) = self._m.tolist()
        self._tx, self._ty = self._t.tolist()
        self._angle = -roll
        self._len = size * scale
        self._unit_len = unit * scale

    def poly(self, xy) -> np.ndarray:
        pts = np.asarray(xy, dtype=np.float64) @ self._m.T + self._t
        return np.rint(pts).astype(np.int32).reshape(-1, 1, 2)

    def px(self, length: float) -> int:
        return max(1, int(round(length * self._len)))

    def ellipse(self, cx, cy, ax, ay, color, start=0, end=360):
        center = (round(self._a * cx + self._b * cy + self._tx), round(self._c * cx + self._d * cy + self._ty))
        axes = (round(ax * self._unit_len), round(ay * self._unit_len))
        cv2.ellipse(self.img, center, axes, self._angle, start, end, color, -1, cv2.LINE_AA, _SHIFT)

    def fill(self, xy, color):
        cv2.fillPoly(self.img, [self.poly(xy)], color, cv2.LINE_AA, _SHIFT)

    def line(self, xy, color, thickness):
        cv2.polylines(self.img, [self.poly(xy)], False, color, self.px(thickness), cv2.LINE_AA, _SHIFT)


def _shade(color, factor: float) -> tuple[float, float, float]:
    return tuple(min(255.0, max(0.0, c * factor)) for c in color)


_S12 = np.linspace(0.0, 1.0, 12)
_B12 = 4 * _S12 * (1 - _S12)


def _curve(x0, y0, x1, y1, bulge, n=12) -> np.ndarray:
    """Points of a parabola from (x0, y0) to (x1, y1) whose middle is displaced by ``bulge`` in y: (n, 2)."""
    s, b = (_S12, _B12) if n == 12 else (np.linspace(0.0, 1.0, n), 4 * np.linspace(0.0, 1.0, n) * (1 - np.linspace(0.0, 1.0, n)))
    out = np.empty((len(s), 2))
    out[:, 0] = x0 + (x1 - x0) * s
    out[:, 1] = y0 + (y1 - y0) * s + bulge * b
    return out


def _draw_eye(c: _Canvas, cx, cy, side, a: dict, ident: FaceIdentity) -> None:
    openness = min(max(1.0 + 0.35 * a["arousal"] + 0.25 * a["AU2"] - 0.5 * a["AU7"] - 0.35 * a["AU6"], 0.2), 1.6)
    w = 0.06
    up = 0.026 * openness
    low = 0.017 * openness * (1.0 - 0.45 * a["AU6"] - 0.35 * a["AU7"])
    socket = _shade(ident.skin, 0.86)
    c.ellipse(cx, cy - 0.005, w * 1.25, 0.045, socket)  # eye socket shadow
    upper = _curve(cx - w, cy, cx + w, cy, -up)
    lower = _curve(cx + w, cy, cx - w, cy, low)
    c.fill(np.concatenate([upper, lower]), (245, 245, 240))  # sclera
    gaze = 0.008 * np.sin(ident.eye_spacing * 300.0 + side)  # fixed per person, a little asymmetry
    c.ellipse(cx + gaze, cy - 0.002, 0.022, 0.022, ident.iris)
    c.ellipse(cx + gaze, cy - 0.002, 0.01, 0.01, (15, 12, 12))
    c.ellipse(cx + gaze + 0.007, cy - 0.009, 0.0035, 0.0035, (250, 250, 250))
    # lids: cover the iris outside the almond with socket skin
    c.fill(np.concatenate([upper, [[cx + w, cy - 0.03], [cx - w, cy - 0.03]]]), socket)
    c.fill(np.concatenate([lower, [[cx - w, cy + 0.03], [cx + w, cy + 0.03]]]), socket)
    c.line(upper, (30, 22, 20), 0.009)  # lashes / upper lid
    c.line(lower, _shade(ident.skin, 0.65), 0.004)
    c.line(_curve(cx - w * 0.9, cy - 0.006, cx + w * 0.9, cy - 0.006, -up - 0.012), _shade(ident.skin, 0.75), 0.004)


def _draw_brow(c: _Canvas, cx, cy, side, a: dict, ident: FaceIdentity) -> None:
    a1, a2, a4 = a["AU1"], a["AU2"], a["AU4"]
    inner_x = cx - side * (0.055 - 0.015 * a4)
    outer_x = cx + side * 0.07
    inner_y = cy - 0.05 * a1 + 0.04 * a4
    outer_y = cy + 0.012 - 0.05 * a2 + 0.01 * a4
    mid_y = cy - 0.012 - 0.03 * (a1 + a2) / 2 + 0.02 * a4
    t = np.linspace(0, 1, 10)
    # quadratic through (0, inner_y), (0.5, mid_y), (1, outer_y)
    ys = inner_y * (1 - t) * (1 - 2 * t) + mid_y * 4 * t * (1 - t) + outer_y * t * (2 * t - 1)
    pts = np.stack([inner_x + (outer_x - inner_x) * t, ys], axis=1)
    c.line(pts, _shade(ident.hair, 0.7), 0.024)
    if a4 > 0.3:  # glabella furrows
        shade = _shade(ident.skin, 1.0 - 0.35 * a4)
        c.line(np.array([[0.5 - 0.012, cy - 0.005], [0.5 - 0.008, cy + 0.035]]), shade, 0.005)
        c.line(np.array([[0.5 + 0.012, cy - 0.005], [0.5 + 0.008, cy + 0.035]]), shade, 0.005)


def _draw_mouth(c: _Canvas, a: dict, ident: FaceIdentity, cy: float) -> None:
    au = a.__getitem__
    half_w = 0.09 * (1.0 + 0.35 * au("AU12") - 0.3 * au("AU23") - 0.1 * au("AU24") + 0.05 * au("AU26"))
    corner_dy = -0.05 * au("AU12") + 0.045 * au("AU15") - 0.01 * a["valence"]
    gap = 0.016 * au("AU25") + 0.075 * au("AU26")
    lip = 0.022 * (1.0 - 0.45 * au("AU23") - 0.55 * au("AU24"))
    raise_up = 0.02 * au("AU10")
    x0, x1 = 0.5 - half_w, 0.5 + half_w
    yc = cy + corner_dy  # the corners; the lip centres stay near cy, so the mouth curves
    top_in = _curve(x0, yc, x1, yc, -corner_dy - gap / 2 - raise_up)
    bottom_in = _curve(x1, yc, x0, yc, -corner_dy + gap / 2)
    top_out = _curve(x0, yc, x1, yc, -corner_dy - gap / 2 - raise_up - lip)
    bottom_out = _curve(x1, yc, x0, yc, -corner_dy + gap / 2 + 1.3 * lip)
    c.fill(np.concatenate([top_out, bottom_out]), ident.lips)
    if gap > 0.006:
        c.fill(np.concatenate([top_in, bottom_in]), (60, 20, 25))
        teeth_h = min(gap * 0.5, 0.022) * (0.4 + 0.6 * max(au("AU12"), au("AU10")))
        edge = top_in[2:-2]
        teeth = np.concatenate([edge, edge[::-1] + (0.0, teeth_h)])  # upper teeth follow the upper lip
        c.fill(teeth, (235, 232, 222))
    c.line(np.concatenate([top_in, bottom_in[::-1]])[: len(top_in)], _shade(ident.lips, 0.5), 0.006)
    # nasolabial folds deepen with smiling and upper-lip raising
    fold = max(au("AU12"), au("AU10"), au("AU6"))
    if fold > 0.3:
        shade = _shade(ident.skin, 1.0 - 0.25 * fold)
        for side in (-1, 1):
            c.line(_curve(0.5 + side * 0.06, 0.62, 0.5 + side * (half_w + 0.025), yc + 0.01, 0.0, 6), shade, 0.006)


def _background(ident: FaceIdentity, size: int) -> np.ndarray:
    """A vertical two-colour gradient: (size, size, 3) uint8, a fresh copy."""
    return _gradient(ident.background, size).copy()


@functools.lru_cache(maxsize=16)
def _gradient(colors, size: int) -> np.ndarray:
    a, b = np.array(colors, dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    column = np.round(a + ramp * (b - a)).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(column, (size, size, 3)))


def render_face(
    params: np.ndarray,
    rng: np.random.Generator,
    size: int = 112,
    *,
    identity: FaceIdentity | None = None,
    pose=(0.0, 0.0, 0.0, 1.0),
    light=(1.0, 0.0),
    occlusion: int = 0,
    blur: float = 0.0,
    noise: float = 3.0,
) -> np.ndarray:
    """Draw one face. params: (14,) valence, arousal, 12 AU intensities -> (size, size, 3) uint8 RGB.

    pose: (roll degrees, dx, dy, scale), dx/dy as fractions of ``size``; light: (gain, left-right shading);
    occlusion: 0 none, 1 upper face, 2 lower face (a random rectangle); blur: Gaussian sigma in output
    pixels; noise: std of the Gaussian pixel noise. ``rng`` is used for noise and the occluder only.
    """
    p = np.asarray(params, dtype=np.float64)
    if p.shape != (N_LATENT,):
        raise ValueError(f"params must have shape ({N_LATENT},), got {p.shape}")
    a = dict(zip(LATENT_NAMES, np.concatenate([np.clip(p[:2], -1, 1), np.clip(p[2:], 0, 1)]).tolist(), strict=True))
    ident = identity or DEFAULT_IDENTITY
    S = size * _SS
    c = _Canvas(S, _background(ident, S), pose)
    fw, fh = ident.face_width, ident.face_height
    skin = ident.skin
    jaw = 0.03 * a["AU26"]
    # hair behind the head, neck, ears, head, jaw (drops with AU26), fringe
    c.ellipse(0.5, 0.45, fw + 0.05, fh + 0.02, ident.hair, start=180, end=360)
    if ident.hair_style == 1:
        c.fill(np.array([[0.5 - fw - 0.05, 0.45], [0.5 + fw + 0.05, 0.45], [0.5 + fw + 0.08, 0.95], [0.5 - fw - 0.08, 0.95]]), ident.hair)
    c.fill(np.array([[0.5 - fw * 0.55, 0.7], [0.5 + fw * 0.55, 0.7], [0.5 + fw * 0.6, 1.05], [0.5 - fw * 0.6, 1.05]]), _shade(skin, 0.8))
    for side in (-1, 1):
        c.ellipse(0.5 + side * fw, 0.52, 0.035, 0.06, _shade(skin, 0.9))
    c.ellipse(0.5, 0.52, fw, fh, skin)
    c.ellipse(0.5, 0.6 + jaw / 2, fw * 0.8, fh * 0.72 + jaw / 2, skin, start=0, end=180)
    c.ellipse(0.5, 0.52 - fh * 0.62, fw * 0.98, fh * 0.42, ident.hair, start=180, end=360)
    c.ellipse(0.5, 0.52 - fh * 0.62, fw * 0.9, fh * 0.16, ident.hair)
    # cheeks: AU6 raises and reddens them, arousal flushes them
    flush = 0.15 * max(0.0, a["arousal"]) + 0.25 * a["AU6"]
    cheek = (min(255.0, skin[0] * (1 + flush * 0.3)), skin[1] * (1 - flush * 0.25), skin[2] * (1 - flush * 0.2))
    for side in (-1, 1):
        c.ellipse(0.5 + side * (ident.eye_spacing + 0.01), 0.6 - 0.02 * a["AU6"], 0.05, 0.035, cheek)
    eye_y = 0.47
    for side in (-1, 1):
        cx = 0.5 + side * ident.eye_spacing
        _draw_eye(c, cx, eye_y, side, a, ident)
        _draw_brow(c, cx, eye_y - 0.065, side, a, ident)
    # nose: bridge shading, tip, nostrils (raised and flared by AU10), wrinkles
    a10 = a["AU10"]
    c.line(np.array([[0.485, 0.48], [0.478, 0.6]]), _shade(skin, 0.85), 0.012)
    c.ellipse(0.5, 0.615 - 0.01 * a10, 0.03, 0.022, _shade(skin, 0.93))
    for side in (-1, 1):
        c.ellipse(0.5 + side * (0.022 + 0.006 * a10), 0.628 - 0.012 * a10, 0.011, 0.006, _shade(skin, 0.45))
        if a10 > 0.3:
            c.line(np.array([[0.5 + side * 0.018, 0.52], [0.5 + side * 0.035, 0.545]]), _shade(skin, 1 - 0.3 * a10), 0.004)
    _draw_mouth(c, a, ident, 0.715 + jaw * 0.6)
    # occluder: a random rectangle over the upper (eyes, brows) or lower (nose, mouth) face
    if occlusion in (OCCLUSION_UPPER, OCCLUSION_LOWER):
        y0, y1 = (0.33, 0.56) if occlusion == OCCLUSION_UPPER else (0.58, 0.86)
        x0, x1 = rng.uniform(0.15, 0.3), rng.uniform(0.7, 0.85)
        color = tuple(float(v) for v in rng.uniform(40, 200, 3))
        c.fill(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), color)

    img = cv2.resize(c.img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    return finish_image(img, rng, light=light, blur=blur, noise=noise)


def finish_image(img: np.ndarray, rng: np.random.Generator, *, light=(1.0, 0.0), blur: float = 0.0,
                 noise: float = 3.0) -> np.ndarray:
    """Lighting, blur and pixel noise at the output size. img: (S, S, 3) float32 RGB -> (S, S, 3) uint8.

    light: (gain, left-right shading in [-1, 1]); blur: Gaussian sigma in pixels; noise: Gaussian pixel std.
    """
    img = np.asarray(img, dtype=np.float32)
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), float(blur))
    gain, shading = float(light[0]), float(light[1])
    img = img * (gain * (1.0 + 0.25 * shading * np.linspace(-1.0, 1.0, img.shape[1], dtype=np.float32)))[None, :, None]
    if noise > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
