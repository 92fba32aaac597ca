"""A reusable Analyzer, many videos per run (folders, globs, skip finished, shards, failures), and the table
read back with its dtypes, in both column namings."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from affectmae.cli import main
from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.inference.batch import analyze_inputs, expand_inputs, parse_shard
from affectmae.inference.pipeline import AnalyzeConfig, Analyzer, analyze_video
from affectmae.inference.table import TABLE_COLUMNS, read_predictions, write_table
from affectmae.synth.video import make_synthetic_video
from affectmae.tasks import ACTION_UNITS
from test_analyze import make_model_dir

pytest.importorskip("yuface")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    model_dir = make_model_dir(root / "model")
    clips = root / "clips"
    clips.mkdir()
    for i, name in enumerate(["a", "b", "c"]):
        make_synthetic_video(clips / f"{name}.mp4", n_frames=6, n_faces=1, size=(320, 180), seed=10 + i)
    (clips / "notes.txt").write_text("not a video")
    return root, model_dir, clips


def test_analyzer_keeps_model_and_detector_between_videos(setup):
    root, model_dir, clips = setup
    with Analyzer(model_dir, plots=False) as analyzer:
        first = analyzer.analyze(clips / "a.mp4")
        pid = analyzer.detector._proc.pid
        second = analyzer.analyze(clips / "b.mp4")
        assert analyzer.detector._proc.pid == pid and analyzer.detector.restarts == 0
        again = analyzer.analyze(clips / "a.mp4")
    pd.testing.assert_frame_equal(first, again)
    alone = analyze_video(clips / "b.mp4", model_dir, plots=False)
    pd.testing.assert_frame_equal(second, alone)
    assert len(first) == 6 and (first["input"] == str(clips / "a.mp4")).all()


def test_folder_batch_writes_per_video_files_and_skips_finished_ones(setup, tmp_path, capsys):
    root, model_dir, clips = setup
    out = tmp_path / "out"
    assert main(["analyze", str(clips), "--model", str(model_dir), "-o", str(out), "--no-plots"]) == 0
    assert "3 videos analysed (18 frames), 0 already done" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}.{ext}" for s in "abc" for ext in ("csv", "summary.json", "config.yaml"))
    for stem in "abc":
        summary = json.loads((out / f"{stem}.summary.json").read_text())
        assert summary["input"]["size"] == (clips / f"{stem}.mp4").stat().st_size
        assert len(pd.read_csv(out / f"{stem}.csv")) == 6
    stamp = (out / "a.csv").stat().st_mtime_ns
    assert main(["analyze", str(clips), "--model", str(model_dir), "-o", str(out), "--no-plots"]) == 0
    assert "0 videos analysed (0 frames), 3 already done" in capsys.readouterr().out
    assert (out / "a.csv").stat().st_mtime_ns == stamp
    # a changed input or a changed setting that changes the table is redone; plots do not count
    os.utime(clips / "b.mp4", ns=(1, 1))
    assert main(["analyze", str(clips), "--model", str(model_dir), "-o", str(out)]) == 0
    assert "1 videos analysed (6 frames), 2 already done" in capsys.readouterr().out
    assert (out / "b.valence_arousal.png").is_file() and not (out / "a.valence_arousal.png").exists()
    assert main(["analyze", str(clips), "max_age=3", "--model", str(model_dir), "-o", str(out), "--no-plots"]) == 0
    assert "3 videos analysed (18 frames), 0 already done" in capsys.readouterr().out


def test_shards_split_the_inputs_without_overlap(setup, tmp_path):
    root, model_dir, clips = setup
    cfg = AnalyzeConfig(plots=False)
    one = analyze_inputs([str(clips / "*.mp4")], model_dir, tmp_path / "s1", cfg, shard="1/2")
    two = analyze_inputs([str(clips / "*.mp4")], model_dir, tmp_path / "s2", cfg, shard="2/2")
    assert one["analyzed"] == [str(clips / "a.mp4"), str(clips / "c.mp4")]
    assert two["analyzed"] == [str(clips / "b.mp4")]
    assert sorted(p.name for p in (tmp_path / "s2").glob("*.csv")) == ["b.csv"]
    assert parse_shard("3/8") == (3, 8) and parse_shard(None) == (1, 1)
    for bad, message in [("0/2", "needs 1 <= K <= N"), ("3/2", "needs 1 <= K <= N"), ("2", "must look like K/N")]:
        with pytest.raises(AffectMAEError, match=message):
            parse_shard(bad)


def test_inputs_files_folders_globs_and_errors(setup, tmp_path):
    root, model_dir, clips = setup
    a, b, c = (clips / f"{s}.mp4" for s in "abc")
    assert expand_inputs([c, clips, str(clips / "[ab].mp4")]) == [a, b, c]
    with pytest.raises(AffectMAEError, match=r"no video files in this folder"):
        expand_inputs([tmp_path])
    with pytest.raises(AffectMAEError, match=r"nothing\*\.mp4: the pattern matches no file"):
        expand_inputs([str(tmp_path / "nothing*.mp4")])
    with pytest.raises(AffectMAEError, match=r"video not found: .*missing\.mp4"):
        expand_inputs([tmp_path / "missing.mp4"])
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.mp4").write_bytes(a.read_bytes())
    with pytest.raises(AffectMAEError, match=r"output name a\.csv is also that of"):
        analyze_inputs([a, tmp_path / "x" / "a.mp4"], model_dir, tmp_path / "out")


def test_a_bad_video_in_a_batch_does_not_stop_the_others(setup, tmp_path, capsys):
    root, model_dir, clips = setup
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.mp4").write_bytes((clips / "a.mp4").read_bytes())
    (folder / "broken.mp4").write_text("not a video")
    assert main(["analyze", str(folder), "--model", str(model_dir), "-o", str(tmp_path / "out"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 videos failed" in err and "broken.mp4: not a readable video" in err
    assert len(pd.read_csv(tmp_path / "out" / "good.csv")) == 6


def test_read_predictions_restores_dtypes_in_both_namings(setup, tmp_path):
    root, model_dir, clips = setup
    df = analyze_video(clips / "c.mp4", model_dir, out_dir=tmp_path / "out", plots=False)
    assert pd.read_csv(tmp_path / "out" / "predictions.csv")["AU12"].dtype == np.int64  # what pandas guesses
    back = read_predictions(tmp_path / "out" / "predictions.csv")
    assert list(back.columns) == TABLE_COLUMNS
    assert str(back["AU12"].dtype) == "Int8" and back["face_detected"].dtype == bool
    assert back["frame"].dtype == np.int64 and back["valence"].dtype == np.float32
    pd.testing.assert_frame_equal(back, df, check_exact=False, rtol=1e-4, atol=1e-3)
    write_table(df, tmp_path / "of.csv", names="openface")
    raw = pd.read_csv(tmp_path / "of.csv")
    assert {"timestamp", "confidence", "success", "AU12_c", "pose_Rz", "AU12_prob"} <= set(raw.columns)
    assert "AU12" not in raw.columns and raw["frame"].tolist() == [1, 2, 3, 4, 5, 6]
    assert set(raw["success"]) == {1}
    np.testing.assert_allclose(raw["pose_Rz"], np.radians(df["pose_roll"]), atol=1e-4)
    pd.testing.assert_frame_equal(read_predictions(tmp_path / "of.csv"), df, check_exact=False, rtol=1e-4, atol=1e-3)
    (tmp_path / "bad.csv").write_text("frame,valence\n0,0.1\n")
    with pytest.raises(InputFormatError, match=r"bad\.csv: not an analyze table: missing columns input, time_s"):
        read_predictions(tmp_path / "bad.csv")


def test_no_face_rows_read_back_with_missing_au_values(setup, tmp_path):
    root, model_dir, _ = setup
    video = make_synthetic_video(tmp_path / "e.mp4", n_frames=4, size=(320, 180), no_face=(0, 4)).path
    df = analyze_video(video, model_dir, out_dir=tmp_path / "out", plots=False)
    back = read_predictions(tmp_path / "out" / "predictions.csv")
    assert back[list(ACTION_UNITS)].isna().all().all() and str(back["AU1"].dtype) == "Int8"
    assert (back["expression"] == "").all() and (~back["face_detected"]).all()
    pd.testing.assert_frame_equal(back, df)


def test_landmark_columns_lie_in_the_box_and_time_keeps_microseconds(setup, tmp_path):
    root, model_dir, clips = setup
    df = analyze_video(clips / "a.mp4", model_dir, plots=False)
    for name in ("eye_l", "eye_r", "nose", "mouth_l", "mouth_r"):
        assert df[f"{name}_x"].between(df["x1"], df["x2"]).all() and df[f"{name}_y"].between(df["y1"], df["y2"]).all()
    assert (df["eye_l_x"] < df["eye_r_x"]).all() and (df["eye_l_y"] < df["mouth_l_y"]).all()
    late = df.copy()
    late["time_s"] = 3600.04 + late["frame"] / 25
    write_table(late, tmp_path / "t.csv")
    np.testing.assert_allclose(read_predictions(tmp_path / "t.csv")["time_s"], late["time_s"], atol=1e-6)


def test_config_file_with_key_value_and_flag_overrides(setup, tmp_path, capsys):
    import yaml

    root, model_dir, clips = setup
    config = tmp_path / "analyze.yaml"
    config.write_text(yaml.safe_dump({"inputs": [str(clips / "a.mp4")], "model_dir": str(model_dir), "plots": False,
                                      "stride": 2, "max_age": 7}))
    out = tmp_path / "out"
    # the file gives the video, the model and stride 2; key=value sets stride 3; the flag -o the folder
    assert main(["analyze", "--config", str(config), "-o", str(out), "stride=3"]) == 0
    assert f"1 videos analysed (6 frames), 0 already done -> {out}" in capsys.readouterr().out
    df = pd.read_csv(out / "a.csv")
    assert df.loc[df["analyzed"], "frame"].tolist() == [0, 3]
    assert json.loads((out / "a.summary.json").read_text())["stride"] == 3
    saved = yaml.safe_load((out / "a.config.yaml").read_text())
    assert (saved["stride"], saved["max_age"], saved["model_dir"], saved["out"]) == (3, 7, str(model_dir), str(out))
    # a named flag beats key=value; the same settings again skip the finished video
    assert main(["analyze", "--config", str(config), "-o", str(out), "stride=2", "--stride", "3"]) == 0
    assert "0 videos analysed (0 frames), 1 already done" in capsys.readouterr().out
    # an unknown setting is one line naming it; no MODEL_DIR anywhere is an error too
    assert main(["analyze", "--config", str(config), "-o", str(tmp_path / "o2"), "strid=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "affectmae analyze: error: command line: unknown setting 'strid' for AnalyzeConfig; known: align_margin, ")
    assert main(["analyze", str(clips / "a.mp4"), "-o", str(tmp_path / "o3")]) == 2
    assert capsys.readouterr().err.strip() == (
        "affectmae analyze: error: analyze needs a MODEL_DIR (--model) and an output folder (-o)")
