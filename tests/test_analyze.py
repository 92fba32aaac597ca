"""`affectmae analyze` end to end on generated MP4s with a tiny model: table, plots, stride interpolation,
independent recomputation of the predictions, and each kind of bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from affectmae.cli import main
from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.inference.pipeline import AU_PROB_COLUMNS, EXPR_COLUMNS, analyze_video
from affectmae.synth.video import make_synthetic_video
from affectmae.tasks import ACTION_UNITS, EXPRESSIONS

pytest.importorskip("yuface")

FPS = 25
N = 36
COLUMNS = (["input", "frame", "time_s", "face_id", "face_detected", "analyzed", "x1", "y1", "x2", "y2", "det_score",
            "eye_l_x", "eye_l_y", "eye_r_x", "eye_r_y", "nose_x", "nose_y", "mouth_l_x", "mouth_l_y", "mouth_r_x",
            "mouth_r_y", "pose_roll", "valence", "arousal"] + [f"expr_{e}" for e in EXPRESSIONS] + ["expression"]
           + [f"{a}_prob" for a in ACTION_UNITS] + list(ACTION_UNITS))
THRESHOLDS = [0.5, 0.45, 0.55, 0.5, 0.4, 0.5, 0.6, 0.5, 0.5, 0.3, 0.7, 0.5]


def make_model_dir(root):
    """A MODEL_DIR in the format `affectmae export` writes: a 1-block ViT and a 1-layer temporal model."""
    from affectmae.models.temporal import TemporalConfig, TemporalModel, save_temporal
    from affectmae.models.vit import build_encoder, save_encoder

    torch.manual_seed(0)
    root.mkdir(parents=True)
    encoder = build_encoder("tiny", img_size=32, embed_dim=48, depth=1, num_heads=2)
    save_encoder(encoder, root / "encoder.safetensors")
    cfg = TemporalConfig(input_dim=48, tasks=["va", "expr", "au"], tcn_channels=[16], transformer_layers=1,
                         transformer_heads=2, transformer_ff=32, head_hidden=16, dropout=0.0)
    save_temporal(root / "temporal_va_expr_au.safetensors", TemporalModel(cfg),
                  {"tasks": ["va", "expr", "au"], "window": 16, "stride": 8, "au_thresholds": THRESHOLDS})
    name = "temporal_va_expr_au.safetensors"
    (root / "affectmae_model.json").write_text(json.dumps({
        "format_version": 1, "affectmae_version": "0.1.0", "encoder": "encoder.safetensors",
        "heads": {"va": name, "expr": name, "au": name}}))
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    model_dir = make_model_dir(root / "model")
    truth = make_synthetic_video(root / "two.mp4", n_frames=N, n_faces=2, size=(320, 180), fps=FPS, seed=2,
                                 cut_at=24, no_face=(10, 14))
    return root, model_dir, truth


@pytest.fixture(scope="module")
def cli_run(work):
    root, model_dir, truth = work
    out = root / "out"
    code = main(["analyze", str(truth.path), "--model", str(model_dir), "-o", str(out), "--batch-size", "8",
                 "--video-out"])
    return code, out, pd.read_csv(out / "two.csv")


def test_cli_writes_table_plots_and_summary(cli_run):
    code, out, df = cli_run
    assert code == 0
    assert list(df.columns) == COLUMNS
    for name in ("valence_arousal.png", "expressions.png", "action_units.png"):
        assert (out / f"two.{name}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "two.summary.json").read_text())
    assert (summary["frames_decoded"], summary["frames_analyzed"], summary["faces"], summary["tracks"]) == (N, N, 2, 4)
    assert (summary["shot_cuts"], summary["frames_without_face"], summary["detections"]) == (1, 4, 2 * (N - 4))
    assert set(summary["seconds"]) == {"decode", "detect", "track", "align", "encode", "temporal", "write"}
    from affectmae.media.video import probe_video

    assert probe_video(out / "two.annotated.mp4").n_frames == N
    assert (df["input"] == str(out.parent / "two.mp4")).all()


def test_rows_per_frame_ids_and_no_face_flags(cli_run):
    _, _, df = cli_run
    counts = df.groupby("frame").size()
    assert list(counts.index) == list(range(N))
    no_face = df[~df["face_detected"]]
    assert list(no_face["frame"]) == [10, 11, 12, 13] and (no_face["face_id"] == -1).all()
    assert no_face["valence"].isna().all() and (counts.drop([10, 11, 12, 13]) == 2).all()
    faces = df[df["face_detected"]]
    assert set(faces[faces["frame"] < 24]["face_id"]) == {0, 1}  # same ids across the 4-frame gap
    # the shot cut ends the tracks; re-identification gives each person back their id although they swapped sides
    left = lambda rows: rows.loc[rows["x1"].idxmin(), "face_id"]  # noqa: E731
    before, after = faces[faces["frame"] == 23], faces[faces["frame"] == 24]
    assert set(after["face_id"]) == {0, 1} and left(after) != left(before)
    np.testing.assert_allclose(df["time_s"], df["frame"] / FPS, atol=1e-6)


def test_prediction_columns_are_consistent(cli_run):
    _, _, df = cli_run
    faces = df[df["face_detected"]]
    probs = faces[EXPR_COLUMNS].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    assert (faces["expression"] == np.array(EXPRESSIONS)[probs.argmax(axis=1)]).all()
    au = faces[AU_PROB_COLUMNS].to_numpy()
    clear = np.abs(au - np.array(THRESHOLDS)) > 1e-4  # the CSV keeps 5 significant digits of each probability
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(faces[list(ACTION_UNITS)].to_numpy()[clear],
                                  (au >= np.array(THRESHOLDS)).astype(int)[clear])
    assert faces["valence"].between(-1, 1).all() and faces["det_score"].between(0.5, 1).all()


def test_predictions_match_an_independent_recomputation(work):
    """Recompute face 0 of the first shot by hand: detect, align, encode, predict_sequence. Its rows after the
    cut (the same person, re-identified) come from a separate run of the temporal model, so they are left out."""
    from affectmae.face.align import align_face
    from affectmae.face.detect import get_detector
    from affectmae.inference.model import load_model_dir
    from affectmae.media.video import VideoReader
    from affectmae.models.preprocess import preprocess_frames

    root, model_dir, truth = work
    df = analyze_video(truth.path, model_dir, batch_size=5, detect_every=1)  # a full detection on every frame
    face0 = df[(df["face_id"] == 0) & (df["frame"] < 24)]
    model = load_model_dir(model_dir)
    detector = get_detector("yuface")
    crops, frames = [], []
    with VideoReader(truth.path) as reader:
        for frame in reader.frames():
            if frame.index in set(face0["frame"]):
                det = min(detector.detect(frame.rgb), key=lambda d: abs(d.box[0] - face0.set_index("frame").loc[frame.index, "x1"]))
                crops.append(align_face(frame.rgb, det.landmarks))
                frames.append(frame.index)
    with torch.no_grad():
        feats = model.encoder.forward_features(preprocess_frames(np.stack(crops), 32))["pooled"].numpy()
    feats = feats.astype(np.float16).astype(np.float32)  # the pipeline stores features as float16
    frames = np.array(frames)
    full = np.zeros((frames[-1] + 1, feats.shape[1]), np.float32)
    full[frames] = feats
    for gap in range(10, 14):  # linear fill across the no-face gap, as the pipeline does
        w = (gap - 9) / 5
        full[gap] = feats[frames == 9][0] * (1 - w) + feats[frames == 14][0] * w
    mask = np.isin(np.arange(len(full)), frames)
    ref = model.predict_sequence(full, mask)
    np.testing.assert_allclose(face0["valence"].to_numpy(), ref["va"][frames, 0], atol=1e-4)
    np.testing.assert_allclose(face0[AU_PROB_COLUMNS].to_numpy(), ref["au"][frames], atol=1e-4)


def test_stride_interpolates_between_analysed_frames(work):
    root, model_dir, truth = work
    df = analyze_video(truth.path, model_dir, stride=3, plots=False)
    s = df.attrs["summary"]
    assert (s["frames_decoded"], s["frames_analyzed"], s["stride"]) == (N, 12, 3)
    assert sorted(df[df["analyzed"]]["frame"].unique()) == list(range(0, N, 3))
    track = df[df["face_id"] == 0].set_index("frame")
    assert {0, 1, 2, 3} <= set(track.index)
    for col in ("valence", "x1", "AU4_prob"):
        a, b = track.loc[0, col], track.loc[3, col]
        np.testing.assert_allclose([track.loc[1, col], track.loc[2, col]], [a + (b - a) / 3, a + 2 * (b - a) / 3], rtol=1e-5, atol=1e-5)
    assert df.groupby("frame").size().index.tolist() == list(range(N))


@pytest.mark.parametrize("stride", [3, 4, 5])
def test_stride_keeps_the_faces_up_to_the_last_frame(work, stride):
    """Both faces are on screen from frame 14 to the end (found from frame 16 on at these strides). Whether the last
    frame is analysed (stride 5: 35 is on the grid) or lies after the last analysed frame (3, 4), it carries both
    faces, like every frame before it."""
    _, model_dir, truth = work
    df = analyze_video(truth.path, model_dir, stride=stride, plots=False)
    faces = df[df["face_detected"]]
    per_frame = faces.groupby("frame").size().reindex(range(N), fill_value=0)
    assert per_frame.loc[16:].tolist() == [2] * (N - 16)
    last = df[df["frame"] == N - 1]
    assert sorted(last["face_id"]) == [0, 1] and last["valence"].notna().all()
    assert last["analyzed"].tolist() == [(N - 1) % stride == 0] * 2
    anchor = (N - 1) // stride * stride  # frames after the last analysed one hold its values
    np.testing.assert_allclose(last.sort_values("face_id")["valence"],
                               df[df["frame"] == anchor].sort_values("face_id")["valence"], rtol=0, atol=0)


def test_align_margin_comes_from_the_model_dir(work, tmp_path):
    import shutil

    from affectmae.inference.pipeline import model_align_margin

    _, model_dir, _ = work
    assert model_align_margin(model_dir) == 1.0
    other = tmp_path / "model"
    shutil.copytree(model_dir, other)
    meta = json.loads((other / "affectmae_model.json").read_text())
    (other / "affectmae_model.json").write_text(json.dumps({**meta, "align_margin": 1.36}))
    assert model_align_margin(other) == 1.36
    (other / "affectmae_model.json").write_text(json.dumps({**meta, "align_margin": "wide"}))
    with pytest.raises(AffectMAEError, match="align_margin must be a number"):
        model_align_margin(other)


def test_video_without_faces_flags_every_frame(work, tmp_path):
    _, model_dir, _ = work
    video = make_synthetic_video(tmp_path / "empty.mp4", n_frames=10, size=(320, 180), no_face=(0, 10)).path
    assert main(["analyze", str(video), "--model", str(model_dir), "-o", str(tmp_path / "out")]) == 0
    df = pd.read_csv(tmp_path / "out" / "empty.csv")
    assert len(df) == 10 and (~df["face_detected"]).all() and (df["face_id"] == -1).all()
    assert df["valence"].isna().all() and df["AU1"].isna().all()
    for name in ("valence_arousal.png", "expressions.png", "action_units.png"):
        assert (tmp_path / "out" / f"empty.{name}").stat().st_size > 1000


def test_five_faces_get_five_stable_ids(work, tmp_path):
    _, model_dir, _ = work
    video = make_synthetic_video(tmp_path / "five.mp4", n_frames=8, n_faces=5, size=(640, 360), seed=4,
                                 face_size=(90, 110)).path
    df = analyze_video(video, model_dir, plots=False)
    assert sorted(df["face_id"].unique()) == [0, 1, 2, 3, 4]
    assert (df.groupby("face_id").size() == 8).all()
    # ids follow positions: each id stays in its own column of the frame
    spread = df.groupby("face_id")["x1"].agg(lambda x: x.max() - x.min())
    assert (spread < 64).all()


def test_rotated_phone_video_is_analysed_upright(work, tmp_path):
    _, model_dir, _ = work
    truth = make_synthetic_video(tmp_path / "rot.mp4", n_frames=8, n_faces=1, size=(180, 320), seed=6, rotation=90)
    df = analyze_video(truth.path, model_dir, plots=False)
    s = df.attrs["summary"]
    assert s["rotation"] == 90 and s["size"] == [180, 320]
    assert df["face_detected"].all() and (df["face_id"] == 0).all()
    centre = (df[["x1", "y1"]].to_numpy() + df[["x2", "y2"]].to_numpy()) / 2
    np.testing.assert_allclose(centre, (truth.boxes[:, 0, :2] + truth.boxes[:, 0, 2:]) / 2, atol=15)


def test_truncated_video_keeps_what_was_decoded(work, tmp_path, caplog):
    _, model_dir, _ = work
    full = make_synthetic_video(tmp_path / "full.mp4", n_frames=30, size=(320, 180), seed=7, faststart=True).path
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 3 // 4])
    with caplog.at_level(logging.WARNING):
        assert main(["analyze", str(cut), "--model", str(model_dir), "-o", str(tmp_path / "out"), "--no-plots"]) == 0
    s = json.loads((tmp_path / "out" / "cut.summary.json").read_text())
    df = pd.read_csv(tmp_path / "out" / "cut.csv")
    assert s["truncated"] is True and 0 < s["frames_decoded"] < 30
    assert df["frame"].max() == s["frames_decoded"] - 1 and "cut.mp4" in caplog.text
    data = full.read_bytes()
    (tmp_path / "header_only.mp4").write_bytes(data[: data.index(b"mdat") + 16])  # index kept, no frame data
    with pytest.raises(InputFormatError, match=r"header_only\.mp4: no frame could be decoded"):
        analyze_video(tmp_path / "header_only.mp4", model_dir)


def test_bad_inputs_give_one_clear_message(work, tmp_path, capsys):
    _, model_dir, truth = work
    out = str(tmp_path / "out")
    assert main(["analyze", str(tmp_path / "missing.mp4"), "--model", str(model_dir), "-o", out]) == 2
    assert "video not found:" in capsys.readouterr().err
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    assert main(["analyze", str(text), "--model", str(model_dir), "-o", out]) == 2
    assert "notes.mp4: not a readable video" in capsys.readouterr().err
    other = tmp_path / "old_model"
    other.mkdir()
    (other / "affectmae_model.json").write_text(json.dumps({"format_version": 7, "affectmae_version": "9.0"}))
    assert main(["analyze", str(truth.path), "--model", str(other), "-o", out]) == 2
    assert "format version 7" in capsys.readouterr().err
    assert main(["analyze", str(truth.path), "--model", str(model_dir), "-o", out, "--stride", "0"]) == 2
    assert "stride, batch_size and detect_every must be >= 1, got 0, 32 and 5" in capsys.readouterr().err
    assert main(["analyze", str(truth.path), "nonsense=1", "--model", str(model_dir), "-o", out]) == 2
    assert "unknown setting 'nonsense'" in capsys.readouterr().err


def test_memory_held_per_frame_does_not_grow_with_the_video(work, tmp_path, monkeypatch):
    """Python-level memory (tracemalloc) held after the frame pass and at the peak of the whole analysis,
    300 vs 1200 frames of one face at stride 1: what grows with the video must be a few bytes per frame
    (features go to a temporary file, detections are 76-byte records). Measured: the previous code kept
    ~570 bytes per frame after the pass and its peak grew by ~650 bytes per frame; this code ~12 and ~11."""
    import tracemalloc

    from affectmae.inference import video_pass
    from affectmae.inference.pipeline import Analyzer
    from affectmae.media.video import VideoReader, VideoWriter

    _, model_dir, _ = work
    clip = make_synthetic_video(tmp_path / "clip.mp4", n_frames=20, size=(160, 120), fps=FPS, seed=1).path
    with VideoReader(clip) as reader:
        loop = [f.rgb for f in reader.frames()]
    loop += loop[::-1]
    held = {}
    frame_pass = video_pass.face_pass

    def measured_pass(*args, **kwargs):
        out = frame_pass(*args, **kwargs)
        held["after_pass"] = tracemalloc.get_traced_memory()[0]
        return out

    monkeypatch.setattr(video_pass, "face_pass", measured_pass)
    growth = {}
    with Analyzer(model_dir, plots=False, device="cpu") as analyzer:
        analyzer.analyze(clip)  # first-call allocations
        for n in (300, 1200):
            path = tmp_path / f"loop_{n}.mp4"
            with VideoWriter(path, (160, 120), fps=FPS) as writer:
                for k in range(n):
                    writer.write(loop[k % len(loop)])
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                df = analyzer.analyze(path)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert int(df["face_detected"].sum()) == n
            growth[n] = (held["after_pass"] - base, peak - base)
    per_frame = [(b - a) / 900 for a, b in zip(growth[300], growth[1200], strict=True)]
    assert per_frame[0] < 64, f"memory held after the frame pass grows by {per_frame[0]:.0f} bytes per frame"
    assert per_frame[1] < 200, f"peak memory grows by {per_frame[1]:.0f} bytes per frame"
