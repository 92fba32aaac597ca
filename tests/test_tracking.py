"""Face tracking on scripted detections: crossing faces, occlusions, long gaps, shot cuts, five faces;
and shot-cut detection on frame histograms."""

from __future__ import annotations

import numpy as np

from affectmae.face.detect import Detection
from affectmae.face.tracking import FaceTracker, ShotCutDetector, box_iou


def _det(cx, cy, side=60.0, score=0.9):
    box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dtype=np.float32)
    return Detection(box, score, np.tile(np.array([[cx, cy]], np.float32), (5, 1)))


def test_box_iou_hand_computed():
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]])
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30]])
    expected = np.array([[25 / 175, 1.0, 0.0], [0.0, 4 / 100, 0.0]])
    np.testing.assert_allclose(box_iou(a, b), expected)


def test_crossing_faces_keep_their_ids():
    tracker = FaceTracker(max_age=5)
    history = {0: [], 1: []}
    for t in range(40):  # A moves right, B moves left, same height: they overlap fully at t = 20
        a, b = _det(100 + 10 * t, 150), _det(500 - 10 * t, 150)
        order = [a, b] if t % 2 else [b, a]  # the detector's order carries no identity
        ids = tracker.update(t, order)
        id_a, id_b = (ids[0], ids[1]) if t % 2 else (ids[1], ids[0])
        history[0].append(id_a)
        history[1].append(id_b)
    assert set(history[0]) == {history[0][0]} and set(history[1]) == {history[1][0]}
    assert history[0][0] != history[1][0]


def test_short_occlusion_keeps_id_long_gap_gets_new_id():
    tracker = FaceTracker(max_age=10)
    ids = [tracker.update(t, [_det(200 + 2 * t, 100)])[0] for t in range(10)]
    for t in range(10, 18):  # 8 frames without the face
        assert tracker.update(t, []) == []
    ids.append(tracker.update(18, [_det(236, 100)])[0])
    assert set(ids) == {0}
    for t in range(19, 40):
        tracker.update(t, [])
    assert tracker.update(40, [_det(240, 100)]) == [1]  # 22 frames missing > max_age


def test_shot_cut_ends_all_tracks():
    tracker = FaceTracker()
    assert tracker.update(0, [_det(100, 100), _det(300, 100)]) == [0, 1]
    assert tracker.update(1, [_det(102, 100), _det(302, 100)]) == [0, 1]
    assert tracker.update(2, [_det(102, 100), _det(302, 100)], cut=True) == [2, 3]
    assert tracker.n_cuts == 1


def test_five_jittering_faces_get_five_stable_ids():
    rng = np.random.default_rng(0)
    centres = np.array([[70, 180], [190, 180], [310, 180], [430, 180], [550, 180]], dtype=float)
    tracker = FaceTracker()
    seen = []
    for t in range(30):
        dets = [_det(*(c + rng.normal(0, 4, 2)), side=90 + rng.normal(0, 3)) for c in centres]
        present = [i for i in range(5) if not (t in (7, 8) and i == 2)]  # face 2 missed for two frames
        perm = rng.permutation(present)
        ids = tracker.update(t, [dets[i] for i in perm])
        by_face = np.full(5, -1)
        by_face[perm] = ids
        seen.append(by_face)
    seen = np.array(seen)
    assert (seen[:, [0, 1, 3, 4]] == seen[0, [0, 1, 3, 4]]).all()
    assert set(seen[:, 2]) == {seen[0, 2], -1} and (seen[7:9, 2] == -1).all()
    assert sorted(seen[0]) == [0, 1, 2, 3, 4] and tracker.next_id == 5


def test_far_jump_is_a_new_face():
    tracker = FaceTracker(max_distance=0.75)
    assert tracker.update(0, [_det(100, 100)]) == [0]
    assert tracker.update(1, [_det(400, 100)]) == [1]  # 5 face sizes away, no overlap


def test_shot_cut_detector_histograms():
    rng = np.random.default_rng(0)
    scene_a = np.zeros((90, 160, 3), np.uint8)
    scene_a[:] = (40, 120, 200)
    scene_b = np.zeros((90, 160, 3), np.uint8)
    scene_b[:] = (220, 180, 30)
    cuts = ShotCutDetector(threshold=0.5)
    assert cuts.difference(scene_a) == 0.0
    moved = scene_a.copy()
    moved[10:30, 10:30] = (250, 250, 250)  # a small object appears: ~4 % of the pixels
    assert 0.0 < cuts.difference(moved) < 0.1
    assert cuts.is_cut(scene_b) is True
    noisy = np.clip(scene_b.astype(int) + rng.integers(-3, 4, scene_b.shape), 0, 255).astype(np.uint8)
    assert cuts.is_cut(noisy) is False
    hist = cuts.histogram(scene_a)
    assert hist.shape == (8 * 4 * 8,) and abs(hist.sum() - 1.0) < 1e-6 and hist.max() == 1.0
