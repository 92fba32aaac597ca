"""Registry images that are grids of face thumbnails: each cell becomes its own photograph.

A screenshot of a face-matching demo holds ~100 thumbnails side by side. Aligning a face inside the whole
screenshot would fill the canvas around the face with its neighbours; so each cell of the grid described by a
:class:`~affectmae.datasets.registry_manifest.GridCells` is cut out, the text the demo drew over it (a
similarity % at the top, age and gender at the bottom) is removed by inpainting, and the result is written once
as a PNG next to the fetched file (``<source folder>/.cells-<digest>/r0c00.png``; the digest covers the grid
description and :data:`CELL_FORMAT`, so a changed grid writes new cells)::

    cell_boxes(grid)                       -> [(row, col, x0, y0, x1, y1)] in image pixels, row by row
    text_mask(cell, grid.text_bands)       -> bool mask of the drawn text pixels
    grid_cell_photos(grid, image, folder)  -> [((row, col), path of the cell's PNG)]
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np

from affectmae.datasets.registry_manifest import GridCells
from affectmae.errors import AffectMAEError
from affectmae.io import atomic_write_bytes

CELL_FORMAT = 2  # bump when the cutting or the text removal changes: the cached cells are then rewritten
TEXT_MIN_CONTRAST = 12  # a text pixel's excess over the grey opening (5x5) of its band: thin light strokes
TEXT_MAX_SATURATION = 80  # the demo's text is light grey: coloured pixels are not text


def cell_boxes(grid: GridCells) -> list[tuple[int, int, int, int, int, int]]:
    """(row, col, x0, y0, x1, y1) of every cell, half-open pixel boxes, row by row: cell (r, c) starts at
    ``origin + (c, r) * pitch`` rounded to the nearest pixel and is ``size`` pixels."""
    (ox, oy), (px, py), (w, h), (cols, rows) = grid.origin, grid.pitch, grid.size, grid.count
    out = []
    for r in range(rows):
        for c in range(cols):
            x0, y0 = int(round(ox + c * px)), int(round(oy + r * py))
            out.append((r, c, x0, y0, x0 + w, y0 + h))
    return out


def cell_name(row: int, col: int) -> str:
    return f"r{row}c{col:02d}"


def text_mask(cell: np.ndarray, bands: tuple[int, int]) -> np.ndarray:
    """Pixels of light, thin, grey strokes within the top ``bands[0]`` and bottom ``bands[1]`` rows of ``cell``
    (RGB uint8), grown by one pixel for the anti-aliased edges; (h, w) bool."""
    grey = cv2.cvtColor(cell, cv2.COLOR_RGB2GRAY)
    sat = cv2.cvtColor(cell, cv2.COLOR_RGB2HSV)[..., 1]
    excess = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    strokes = (excess >= TEXT_MIN_CONTRAST) & (sat <= TEXT_MAX_SATURATION)
    band = np.zeros_like(strokes)
    top, bottom = bands
    band[:top] = True
    if bottom:
        band[-bottom:] = True
    mask = (strokes & band).astype(np.uint8)
    return cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool) & band


def clean_cell(cell: np.ndarray, bands: tuple[int, int]) -> tuple[np.ndarray, float]:
    """``cell`` with the drawn text inpainted (Telea, radius 3), and the fraction of its pixels that were text."""
    mask = text_mask(cell, bands)
    if not mask.any():
        return cell.copy(), 0.0
    return cv2.inpaint(cell, mask.astype(np.uint8), 3, cv2.INPAINT_TELEA), float(mask.mean())


def cells_folder(grid: GridCells, source_folder: Path) -> Path:
    key = json.dumps([CELL_FORMAT, grid.file, grid.origin, grid.pitch, grid.size, grid.count, grid.text_bands])
    return source_folder / f".cells-{Path(grid.file).stem}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def grid_cell_photos(grid: GridCells, image: Path, source_folder: Path) -> list[tuple[tuple[int, int], Path]]:
    """The cells of ``image`` as PNG files (written on first use), ``[((row, col), path)]`` row by row."""
    folder = cells_folder(grid, source_folder)
    boxes = cell_boxes(grid)
    paths = [((r, c), folder / f"{cell_name(r, c)}.png") for r, c, *_ in boxes]
    if all(p.is_file() for _, p in paths):
        return paths
    bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise AffectMAEError(f"{image}: not a readable image")
    height, width = bgr.shape[:2]
    folder.mkdir(exist_ok=True)
    for (r, c, x0, y0, x1, y1), (_, path) in zip(boxes, paths, strict=True):
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise AffectMAEError(f"{image}: grid cell {cell_name(r, c)} ({x0}, {y0})-({x1}, {y1}) lies outside the "
                                 f"{width}x{height} image; the manifest's grid does not match the file")
        cell, _ = clean_cell(np.ascontiguousarray(bgr[y0:y1, x0:x1, ::-1]), grid.text_bands)
        ok, png = cv2.imencode(".png", cell[..., ::-1])
        if not ok:
            raise AffectMAEError(f"{path}: could not encode the cell as PNG")
        atomic_write_bytes(path, png.tobytes())
    return paths
