"""Face detection (yuface backend, errors) and 5-point alignment to the 112x112 template."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from affectmae.errors import AffectMAEError
from affectmae.face import detect as faces
from affectmae.face.align import TEMPLATE_112, align_face, apply_transform, face_template, similarity_transform
from affectmae.face.detect import get_detector
from affectmae.face.tracking import box_iou
from affectmae.media.video import VideoReader
from affectmae.synth.video import make_synthetic_video

pytest.importorskip("yuface")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("faces") / "scene.mp4"
    truth = make_synthetic_video(path, n_frames=8, n_faces=2, size=(320, 180), seed=5)
    with VideoReader(path) as reader:
        frames = [f.rgb for f in reader.frames()]
    return truth, frames


@pytest.fixture(scope="module")
def detector():
    return get_detector("auto")


def test_yuface_finds_every_rendered_face(scene, detector):
    truth, frames = scene
    found = 0
    for k, rgb in enumerate(frames):
        dets = detector.detect(rgb)
        assert len(dets) == 2
        iou = box_iou(truth.boxes[k], np.stack([d.box for d in dets]))
        found += int((iou.max(axis=1) > 0.3).sum())
        assert all(0.5 <= d.score <= 1.0 for d in dets)
        assert dets[0].score >= dets[1].score
    assert found == 16


def test_landmarks_are_in_template_order(scene, detector):
    _, frames = scene
    for det in detector.detect(frames[0]):
        eye_l, eye_r, nose, mouth_l, mouth_r = det.landmarks
        assert det.landmarks.shape == (5, 2) and det.landmarks.dtype == np.float32
        assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0]
        assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
        x1, y1, x2, y2 = det.box
        assert np.all((det.landmarks[:, 0] > x1) & (det.landmarks[:, 0] < x2))
        assert np.all((det.landmarks[:, 1] > y1) & (det.landmarks[:, 1] < y2))


def test_min_face_blank_frame_and_large_frames(scene, detector):
    truth, frames = scene
    assert get_detector("yuface", min_face=200).detect(frames[0]) == []
    assert detector.detect(np.zeros((180, 320, 3), np.uint8)) == []
    # a frame above 960 px is detected on a downscaled copy and boxes come back in full-size pixels
    big = cv2.resize(frames[0], (1280, 720), interpolation=cv2.INTER_LINEAR)
    small_boxes = sorted((d.box for d in detector.detect(frames[0])), key=lambda b: b[0])
    big_boxes = sorted((d.box for d in detector.detect(big)), key=lambda b: b[0])
    assert len(big_boxes) == 2
    np.testing.assert_allclose(np.stack(big_boxes) / 4, np.stack(small_boxes), atol=4)


def test_detect_max_side_trades_resolution_for_speed(scene):
    truth, frames = scene
    full = sorted((d.box for d in get_detector("yuface").detect(frames[0])), key=lambda b: b[0])
    half = sorted((d.box for d in get_detector("yuface", max_side=160).detect(frames[0])), key=lambda b: b[0])
    assert len(half) == 2  # 60-90 px faces are still 30-45 px at half size
    np.testing.assert_allclose(np.stack(half), np.stack(full), atol=6)
    with pytest.raises(AffectMAEError, match="max_side must be >= 64"):
        get_detector("yuface", max_side=10)


def test_openmp_pool_is_pinned_to_one_thread(detector):
    from threadpoolctl import threadpool_info

    yu = [i for i in threadpool_info() if "yuface" in (i.get("filepath") or "")]
    assert detector.pinned is True
    assert yu and all(i["num_threads"] == 1 for i in yu)


def test_detector_errors(monkeypatch):
    with pytest.raises(AffectMAEError, match="unknown face detector 'nope'; choose one of auto, yuface"):
        get_detector("nope")
    monkeypatch.setattr(faces, "available_detectors", lambda: [])
    with pytest.raises(AffectMAEError, match=r"no face detector available.*pip install yuface"):
        get_detector("auto")
    with pytest.raises(AffectMAEError, match=r"must be \(H, W, 3\) uint8"):
        get_detector("yuface").detect(np.zeros((10, 10), np.uint8))


def _similarity(scale, degrees, tx, ty):
    t = np.deg2rad(degrees)
    return np.array([[scale * np.cos(t), -scale * np.sin(t), tx], [scale * np.sin(t), scale * np.cos(t), ty]])


def test_similarity_transform_recovers_known_transform_and_matches_opencv():
    m = _similarity(1.7, 20.0, 31.0, -12.0)
    src = TEMPLATE_112
    dst = apply_transform(m, src)
    np.testing.assert_allclose(similarity_transform(src, dst), m, atol=1e-9)
    rng = np.random.default_rng(0)
    noisy = dst + rng.normal(0, 1.5, dst.shape)
    ours = similarity_transform(src, noisy)
    reference, _ = cv2.estimateAffinePartial2D(src, noisy, method=cv2.LMEDS)
    # LMEDS fits an exact subset, ours is least squares: both must land close to the truth
    np.testing.assert_allclose(ours[:, :2], m[:, :2], atol=0.05)
    np.testing.assert_allclose(ours[:, :2], reference[:, :2], atol=0.1)
    with pytest.raises(ValueError, match="identical"):
        similarity_transform(np.ones((5, 2)), dst)


def test_template_scaling_and_identity_alignment():
    np.testing.assert_allclose(face_template(112, 1.0), TEMPLATE_112)
    np.testing.assert_allclose(face_template(224, 1.0), TEMPLATE_112 * 2)
    zoomed = face_template(112, 2.0)
    np.testing.assert_allclose(zoomed - 56.0, (TEMPLATE_112 - 56.0) / 2)
    np.testing.assert_allclose(similarity_transform(TEMPLATE_112, TEMPLATE_112), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_align_face_undoes_a_known_warp():
    rng = np.random.default_rng(1)
    crop = cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), (0, 0), 2.0)
    m = _similarity(2.2, -25.0, 150.0, 60.0)  # crop -> a 400x300 frame, bigger and rotated
    frame = cv2.warpAffine(crop, m, (400, 300), flags=cv2.INTER_CUBIC)
    landmarks = apply_transform(m, TEMPLATE_112)
    back = align_face(frame, landmarks)
    assert back.shape == (112, 112, 3) and back.dtype == np.uint8
    inner = (slice(8, 104), slice(8, 104))
    error = np.abs(back[inner].astype(float) - crop[inner].astype(float)).mean()
    assert error < 3.0
    # the landmarks land exactly on the template
    np.testing.assert_allclose(apply_transform(similarity_transform(landmarks, TEMPLATE_112), landmarks), TEMPLATE_112, atol=1e-9)


def test_worker_detector_matches_in_process_and_recycles(scene, detector):
    from affectmae.face.worker import WorkerDetector

    _, frames = scene
    with WorkerDetector("auto", recycle_every=3) as worker:
        pids = []
        for rgb in frames:
            got, want = worker.detect(rgb), detector.detect(rgb)
            pids.append(worker._proc.pid)
            assert len(got) == len(want) == 2
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g.box, w.box)
                np.testing.assert_array_equal(g.landmarks, w.landmarks)
                assert g.score == pytest.approx(w.score, abs=1e-6)
        assert worker.name == "yuface"
        assert worker.restarts == 2 and len(set(pids)) == 3  # 8 frames: a fresh process every 3 calls
        assert worker.detect(np.zeros((40, 60, 3), np.uint8)) == []


def test_worker_detector_errors():
    from affectmae.face.worker import WorkerDetector

    with pytest.raises(AffectMAEError, match="unknown face detector 'nope'"):
        WorkerDetector("nope")
    worker = WorkerDetector("auto")
    with pytest.raises(AffectMAEError, match=r"detector input must be \(H, W, 3\) uint8"):
        worker.detect(np.zeros((4, 4), np.uint8))
    worker.detect(np.zeros((40, 60, 3), np.uint8))
    worker._proc.kill()
    worker._proc.wait()
    with pytest.raises(AffectMAEError, match="the face-detector worker process failed"):
        worker.detect(np.zeros((40, 60, 3), np.uint8))
    assert worker.detect(np.zeros((40, 60, 3), np.uint8)) == []  # a new worker starts after a failure
    worker.close()


def test_worker_detector_never_loads_the_leaky_library_in_this_process():
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from affectmae.face.worker import WorkerDetector\n"
            "with WorkerDetector('auto') as w:\n"
            "    assert w.detect(np.zeros((40, 60, 3), np.uint8)) == []\n"
            "print('yuface' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip() == "False"
