"""Grid files of the registry manifest: each cell of a thumbnail grid is cut out as its own photograph, with the
text the demo drew over it removed. Synthetic grids with known cells; no fetched file needed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from affectmae.datasets.registry_cells import cell_boxes, cells_folder, clean_cell, grid_cell_photos, text_mask
from affectmae.datasets.registry_manifest import SOURCES, GridCells
from affectmae.errors import AffectMAEError

# 4 columns x 3 rows of 30x20 cells, 31.5 px apart across (no gap, the half pixel rounds), 26 px down (6-px gaps)
GRID = GridCells("shot.png", origin=(5.0, 12.0), pitch=(31.5, 26.0), size=(30, 20), count=(4, 3))


def _grid_image() -> np.ndarray:
    """A 96x140 BGR image whose cell (r, c) is filled with the value 40 + 10 * (4r + c), the gaps with 0."""
    img = np.zeros((96, 140, 3), np.uint8)
    for r in range(3):
        for c in range(4):
            x0, y0 = int(round(5 + 31.5 * c)), 12 + 26 * r
            img[y0:y0 + 20, x0:x0 + 30] = 40 + 10 * (4 * r + c)
    return img


def test_cell_boxes_are_the_origin_plus_the_pitch_rounded_row_by_row():
    boxes = cell_boxes(GRID)
    assert len(boxes) == 12
    assert boxes[:5] == [(0, 0, 5, 12, 35, 32), (0, 1, 36, 12, 66, 32), (0, 2, 68, 12, 98, 32),
                         (0, 3, 100, 12, 130, 32), (1, 0, 5, 38, 35, 58)]
    assert boxes[-1] == (2, 3, 100, 64, 130, 84)


def test_each_cell_becomes_its_own_png_with_exactly_its_pixels_written_once(tmp_path):
    cv2.imwrite(str(tmp_path / "shot.png"), _grid_image())
    cells = grid_cell_photos(GRID, tmp_path / "shot.png", tmp_path)
    assert [cell for cell, _ in cells] == [(r, c) for r in range(3) for c in range(4)]
    assert cells[5][1] == cells_folder(GRID, tmp_path) / "r1c01.png"
    for (r, c), path in cells:
        img = cv2.imread(str(path))
        assert img.shape == (20, 30, 3) and np.all(img == 40 + 10 * (4 * r + c)), (r, c)  # no gap, no neighbour
    stamp = cells[0][1].stat().st_mtime_ns
    assert grid_cell_photos(GRID, tmp_path / "shot.png", tmp_path) == cells
    assert cells[0][1].stat().st_mtime_ns == stamp  # cached: not written again
    moved = GridCells("shot.png", origin=(6.0, 12.0), pitch=(31.5, 26.0), size=(30, 20), count=(4, 3))
    assert cells_folder(moved, tmp_path) != cells_folder(GRID, tmp_path)  # another grid, other cells


def test_a_grid_larger_than_its_image_is_an_error_naming_the_cell(tmp_path):
    cv2.imwrite(str(tmp_path / "shot.png"), _grid_image()[:80])
    with pytest.raises(AffectMAEError, match=r"shot\.png: grid cell r2c00 \(5, 64\)-\(35, 84\) lies outside the "
                                             r"140x80 image; the manifest's grid does not match the file"):
        grid_cell_photos(GRID, tmp_path / "shot.png", tmp_path)


def test_drawn_text_in_the_bands_is_found_and_inpainted_and_the_middle_is_untouched():
    yy, xx = np.mgrid[0:105, 0:104]
    cell = np.stack([60 + xx * 0.8, 50 + yy * 0.6, 40 + 0 * xx], axis=2).astype(np.uint8)  # smooth, no strokes
    written = cell.copy()
    cv2.putText(written, "71.2%", (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
    cv2.putText(written, "38.7y MALE", (2, 101), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (235, 235, 235), 1, cv2.LINE_AA)
    drawn = np.abs(written.astype(int) - cell.astype(int)).max(axis=2) > 40
    mask = text_mask(written, (17, 15))
    assert mask[drawn].mean() > 0.95  # the strokes
    assert not mask[17:90].any() and mask.mean() < 0.12  # only in the bands, and not the whole bands
    assert not text_mask(cell, (17, 15)).any()
    cleaned, fraction = clean_cell(written, (17, 15))
    assert fraction == pytest.approx(mask.mean())
    assert np.abs(cleaned.astype(int) - cell.astype(int))[drawn].mean() < 12  # was about 150 on the strokes
    assert np.array_equal(cleaned[17:90], written[17:90])


def test_the_human_grid_has_108_cells_inside_its_1920x954_screenshot_and_named_cells_exist():
    human = next(s for s in SOURCES if s.name == "human")
    (grid,) = human.cells
    boxes = cell_boxes(grid)
    assert len(boxes) == 108 == human.photo_count
    assert min(b[2] for b in boxes) >= 0 and max(b[4] for b in boxes) <= 1920
    assert min(b[3] for b in boxes) >= 0 and max(b[5] for b in boxes) <= 954
    named = [f.cell for f in human.faces]
    assert len(named) == len(set(named)) and set(named) <= {b[:2] for b in boxes}  # each cell one person at most
    assert {f.identity for f in human.faces if f.cell[0] == 0} == {"vladmandic-selected-man"}
