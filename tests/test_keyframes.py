"""Key-frame detection (a full detection every k frames, patches around known faces between) on scripted
scenes with a detector that finds white squares; the encoder thread; and `analyze` with both paths."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
import torch

from affectmae.face.detect import Detection
from affectmae.face.keyframes import KeyframeDetector


class SquareDetector:
    """Finds white squares (side >= 8) on a black image; landmarks at fixed fractions of the box."""

    name = "squares"

    def __init__(self):
        self.shapes = []

    def detect(self, rgb):
        self.shapes.append(rgb.shape[:2])
        n, _, stats, _ = cv2.connectedComponentsWithStats((rgb[..., 0] > 128).astype(np.uint8))
        out = []
        for x, y, w, h, _area in stats[1:]:
            if min(w, h) >= 8:
                box = np.array([x, y, x + w, y + h], dtype=np.float32)
                lm = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32)
                out.append(Detection(box, 0.9, (box[:2] + lm * (box[2:] - box[:2])).astype(np.float32)))
        return out


def scene(squares, size=(240, 320)):
    img = np.zeros((*size, 3), np.uint8)
    for x, y, s in squares:
        img[y:y + s, x:x + s] = 255
    return img


def test_faces_are_followed_on_patches_between_key_frames():
    det = SquareDetector()
    kd = KeyframeDetector(det, every=5)
    frames = [scene([(20 + 3 * t, 50, 40), (200, 100 + 2 * t, 60)]) for t in range(10)]
    out = kd.detect_chunk(frames[:5], [False] * 5) + kd.detect_chunk(frames[5:], [False] * 5)
    for t, dets in enumerate(out):
        boxes = sorted(d.box.tolist() for d in dets)
        assert boxes == [[20 + 3 * t, 50, 60 + 3 * t, 90], [200, 100 + 2 * t, 260, 160 + 2 * t]], t
    # chunk 1: frame 0 full (nothing to follow yet), 1-3 patches, 4 full; chunk 2: 5-8 patches, 9 full
    assert kd.calls == {"full": 3, "patch": 2 * 3 + 2 * 4}
    full = [s for s in det.shapes if s == (240, 320)]
    assert len(full) == 3 and len(det.shapes) == 3 + 14
    # a patch is twice the face, capped at 160 px: the 60-px face's patch is 120 x 120
    assert (120, 120) in det.shapes and max(max(s) for s in det.shapes if s != (240, 320)) <= 160


def test_a_face_entering_mid_chunk_is_found_from_its_first_frame():
    kd = KeyframeDetector(SquareDetector(), every=5)
    kd.detect_chunk([scene([(20, 50, 40)])], [False])  # one face already followed
    frames = [scene([(20, 50, 40)] + ([(200, 120, 50)] if t >= 2 else [])) for t in range(5)]
    out = kd.detect_chunk(frames, [False] * 5)
    assert [len(d) for d in out] == [1, 1, 2, 2, 2]  # entered at 2: the key frame (4) found it, followed back to 2
    assert out[2][1].box.tolist() == [200, 120, 250, 170] or out[2][0].box.tolist() == [200, 120, 250, 170]


def test_a_face_that_jumps_off_its_patch_is_found_by_a_full_detection():
    kd = KeyframeDetector(SquareDetector(), every=5)
    frames = [scene([(20 + 60 * t, 50, 40)]) for t in range(5)]  # moves 1.5 face sizes per frame (a big stride)
    out = kd.detect_chunk(frames, [False] * 5)
    assert [[d.box[0] for d in f] for f in out] == [[20], [80], [140], [200], [260]]
    # every patch missed, so every frame was searched in full; the key frame's face does not overlap frame 3's,
    # so it is followed backward once more (a patch at 3, missed, then a full detection that adds nothing)
    assert kd.calls == {"full": 5 + 1, "patch": 3 + 1}


def test_a_cut_stops_following_and_frames_without_faces_get_full_detections():
    kd = KeyframeDetector(SquareDetector(), every=4)
    kd.detect_chunk([scene([(20, 50, 40)])], [False])
    # frame 1 starts a new shot with the face elsewhere; the old position must not be followed into it
    frames = [scene([(20, 50, 40)]), scene([(150, 60, 40)]), scene([(152, 60, 40)]), scene([(154, 60, 40)])]
    out = kd.detect_chunk(frames, [False, True, False, False])
    assert [[d.box[0] for d in f] for f in out] == [[20], [150], [152], [154]]
    kd.reset()
    empty = [scene([]) for _ in range(4)]
    assert kd.detect_chunk(empty, [False] * 4) == [[], [], [], []]
    assert kd.calls == {"full": 4, "patch": 0}  # nothing to follow: every frame is searched in full
    with pytest.raises(ValueError, match="as many cut flags as frames, got 2 and 1"):
        kd.detect_chunk(empty[:2], [False])


def test_encoder_thread_gives_the_features_of_the_plain_loop():
    from affectmae.inference.crop_encoder import CropEncoder as _Encoder
    from affectmae.models.vit import build_encoder

    torch.manual_seed(0)
    enc = build_encoder("tiny", img_size=32, embed_dim=48, depth=1, num_heads=2)
    crops = np.random.default_rng(0).integers(0, 255, (37, 112, 112, 3), dtype=np.uint8)
    results = {}
    for overlap in (False, True):
        timings = {"encode": 0.0}
        e = _Encoder(enc, torch.device("cpu"), 16, timings, overlap=overlap)
        for c in crops:
            e.add(c)
        results[overlap] = e.features()
        assert e._thread is None and timings["encode"] > 0
    assert results[True].shape == (37, 48) and results[True].dtype == np.float16
    np.testing.assert_allclose(results[True].astype(np.float32), results[False].astype(np.float32), atol=2e-3)
    assert not any(t.name == "affectmae-encoder" for t in threading.enumerate())


def test_encoder_thread_errors_reach_the_caller():
    from affectmae.inference.crop_encoder import CropEncoder as _Encoder

    class Broken(torch.nn.Module):
        def forward_features(self, x):
            raise RuntimeError("encoder exploded on a (B, 3, 112, 112) batch")

    e = _Encoder(Broken(), torch.device("cpu"), 8, {"encode": 0.0}, overlap=True)
    with pytest.raises(RuntimeError, match="encoder exploded"):
        for _ in range(40):  # the error surfaces at a later hand-over or at features(), never hangs
            e.add(np.zeros((112, 112, 3), np.uint8))
        e.features()
    e.reset({"encode": 0.0})
    assert e._thread is None


def test_analyze_with_key_frames_finds_the_faces_of_full_detection(tmp_path):
    pytest.importorskip("yuface")
    from affectmae.inference.pipeline import Analyzer
    from affectmae.synth.video import make_synthetic_video
    from test_analyze import make_model_dir

    model_dir = make_model_dir(tmp_path / "model")
    truth = make_synthetic_video(tmp_path / "v.mp4", n_frames=30, n_faces=2, size=(320, 180), seed=2, cut_at=18,
                                 no_face=(6, 9))
    with Analyzer(model_dir, plots=False, detect_every=1, overlap=False) as a:
        full = a.analyze(truth.path)
    with Analyzer(model_dir, plots=False) as a:  # detect_every=5, encoder thread
        fast = a.analyze(truth.path)
    s = fast.attrs["summary"]
    assert s["detections"] == full.attrs["summary"]["detections"] == 2 * (30 - 3)
    assert s["faces"] == 2 and s["detect_every"] == 5
    # chunks 0-4 | 5-9 | 10-14 | 15-19 | 20-24 | 25-29. Full detections (12): 0 (start), the key frames 4, 9,
    # 14, 19, 24, 29, 6 (the first face is not on its patch: the faces vanish at 6), 7 and 8 (nothing to
    # follow), 8 again (key frame 9's faces followed backward are not on their patch at 8) and 18 (the cut
    # ends the followed faces). Patches (40): 2 faces on 1-3, 5, 10-13, 15-17, 20-23, 25-28 = 19 frames,
    # 1 at frame 6 and 1 at frame 8 (backward)
    assert s["detector_calls"] == {"full": 12, "patch": 2 * 19 + 2}
    a, b = full[full["face_detected"]], fast[fast["face_detected"]]
    assert (a["frame"].to_numpy() == b["frame"].to_numpy()).all()
    assert np.abs(a[["x1", "y1", "x2", "y2"]].to_numpy() - b[["x1", "y1", "x2", "y2"]].to_numpy()).max() < 6
