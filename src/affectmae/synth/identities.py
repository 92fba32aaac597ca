"""Who is who among the photographed faces: several photos can show one person (one *identity*).

:func:`~affectmae.synth.photos.load_photo_people` gives every detected face a key; two rules then give each face
an identity, and :class:`~affectmae.synth.people.FaceSource` splits identities (never photos) into training and
unseen validation people:

1. **Names.** The registry manifest names the files of one person (eleven stills of franck, Einstein twice, two
   photos each of Audrey Hepburn, Justin Bieber, Nicolas Cage, Sean Connery, Bryan Cranston and Barack Obama in
   two packages, the people of a grid of thumbnails and of the group photos they were cut from):
   :func:`face_names` resolves them to the faces found, a position picking one face of a group photo.
2. **Near-duplicates.** The same photograph met twice (a crop and its full photo, one image shipped in two
   packages or formats) is found on the aligned canvases: :func:`duplicate_score` correlates the band-passed
   (difference of Gaussians, sigma 1 and 3 px) grey faces at 64 px after the best sub-pixel shift (phase
   correlation), which absorbs the landmark jitter of two detections. Measured on the 150 faces of the packaged
   and registry photos (2026-12-07): the same photograph scores 0.70-0.98 (0.70: a 104-px thumbnail of a group
   photo's face), faces of different identities at most 0.63
   (another photo of the same person mostly scores low too, which is why the names exist). Pairs at or above
   :data:`DUPLICATE_MIN_SCORE` join one identity; a cheap correlation of 16-px grey faces picks the candidates.

An identity is the manifest name, or else the key of its first face (``"tracking/faces.jpg#0"``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace

import cv2
import numpy as np

from affectmae.datasets.registry_manifest import AT_TOLERANCE, RegistryFace

log = logging.getLogger(__name__)

DUPLICATE_MIN_SCORE = 0.7  # duplicate_score at or above this: the same photograph
PREFILTER_MIN_CORR = 0.7  # 16-px grey correlation of the inner faces below this: not compared further
_PATCH, _PATCH_BOX = 64, 0.17  # the face patch: 64 px, cut from the canvas minus 17 % on each side
_COARSE, _COARSE_BOX = 16, 0.3  # the candidate test: eyes to mouth at 16 px


def face_names(faces: tuple[RegistryFace, ...], centres: np.ndarray) -> list[tuple[bool, str]]:
    """(keep, manifest name or "") for faces whose box centres are ``centres (N, 2)`` (fractions of the image).

    A manifest entry without a position names every face of the file; with one, the nearest face within
    AT_TOLERANCE; an entry whose identity is None drops that face (not a person)."""
    out = [(True, "")] * len(centres)
    for face in sorted(faces, key=lambda f: f.at is not None):
        if face.at is None:
            targets = list(range(len(centres)))
        elif len(centres):
            distance = np.abs(np.asarray(centres, np.float64) - np.asarray(face.at)).max(axis=1)
            targets = [int(distance.argmin())] if distance.min() <= AT_TOLERANCE else []
        else:
            targets = []
        for j in targets:
            out[j] = (face.identity is not None, face.identity or "")
    return out


def _grey(canvas: np.ndarray, box: float, size: int) -> np.ndarray:
    grey = cv2.cvtColor(np.clip(canvas, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
    cut = int(round(grey.shape[0] * box))
    return cv2.resize(grey[cut:grey.shape[0] - cut, cut:grey.shape[1] - cut], (size, size), interpolation=cv2.INTER_AREA)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.ravel() - x.mean()
    return x / (np.linalg.norm(x) + 1e-6)


@functools.lru_cache(maxsize=1)
def _window() -> np.ndarray:
    return cv2.createHanningWindow((_PATCH, _PATCH), cv2.CV_32F)


def _band(patch: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(patch, (0, 0), 1.0) - cv2.GaussianBlur(patch, (0, 0), 3.0)


def _patch_score(a: np.ndarray, b: np.ndarray) -> float:
    (dx, dy), _ = cv2.phaseCorrelate(a, b, _window())
    shifted = cv2.warpAffine(a, np.float32([[1, 0, dx], [0, 1, dy]]), (_PATCH, _PATCH), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)
    inner = slice(_PATCH // 10, _PATCH - _PATCH // 10)
    return float(_unit(_band(shifted)[inner, inner]) @ _unit(_band(b)[inner, inner]))


def duplicate_score(a: np.ndarray, b: np.ndarray) -> float:
    """How surely two canvases ``(CANVAS, CANVAS, 3)`` show the same photograph of a face, in [-1, 1]."""
    return _patch_score(_grey(a, _PATCH_BOX, _PATCH), _grey(b, _PATCH_BOX, _PATCH))


def near_duplicate_pairs(canvases: list[np.ndarray]) -> list[tuple[int, int, float]]:
    """(i, j, score) with i < j for every pair of canvases that shows the same photograph."""
    if len(canvases) < 2:
        return []
    coarse = np.stack([_unit(_grey(c, _COARSE_BOX, _COARSE)) for c in canvases])
    corr = coarse @ coarse.T
    patches = {}
    pairs = []
    for i, j in zip(*np.nonzero(np.triu(corr >= PREFILTER_MIN_CORR, k=1)), strict=True):
        for k in (i, j):
            if k not in patches:
                patches[k] = _grey(canvases[k], _PATCH_BOX, _PATCH)
        score = _patch_score(patches[i], patches[j])
        if score >= DUPLICATE_MIN_SCORE:
            pairs.append((int(i), int(j), score))
    return pairs


def assign_identities(people: list) -> list:
    """``people`` (PhotoPerson, ``identity`` = the manifest name or "") with every identity filled in: faces with
    one name, and near-duplicate photographs, share one; a group without a name takes its first face's key.
    Near-duplicates that the manifest names as two different people stay apart (with a warning)."""
    parent = list(range(len(people)))
    names = {i: p.identity for i, p in enumerate(people) if p.identity}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> bool:
        a, b = root(i), root(j)
        if a != b and names.get(a) and names.get(b) and names[a] != names[b]:
            return False
        if a != b:
            parent[max(a, b)] = min(a, b)
            names[min(a, b)] = names.get(a) or names.get(b) or ""
        return True

    first: dict[str, int] = {}
    for i, p in enumerate(people):
        if p.identity:
            join(first.setdefault(p.identity, i), i)
    for i, j, score in near_duplicate_pairs([p.canvas for p in people]):
        if not join(i, j):
            log.warning("%s and %s look like one photograph (score %.2f) but the manifest names two people; kept "
                        "apart", people[i].key, people[j].key, score)
        else:
            log.debug("%s and %s: one photograph (score %.2f), one identity", people[i].key, people[j].key, score)
    return [replace(p, identity=names.get(root(i)) or people[root(i)].key) for i, p in enumerate(people)]


def identity_groups(people: list) -> dict[str, list]:
    """identity -> its people (in the given order), identities sorted by name."""
    groups: dict[str, list] = {}
    for p in people:
        groups.setdefault(p.identity or p.key, []).append(p)
    return dict(sorted(groups.items()))


def people_summary(people: list, photos: int) -> dict:
    """Counts for logs and synth_info.json: photos searched, faces kept, identities, identities per origin."""
    groups = identity_groups(people)
    origins = sorted({p.origin or "photos" for p in people})
    return {"photos": photos, "faces": len(people), "identities": len(groups),
            "identities_by_origin": {o: sum(any((p.origin or "photos") == o for p in g) for g in groups.values())
                                     for o in origins}}
