"""Folds (official fold 0, seeded video splits, never a video on both sides) and the `cv` / `ablate` tables."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from affectmae.cli import main
from affectmae.training.temporal_data import LabelledVideo, make_folds
from temporal_helpers import make_feature_dataset

TINY = ["--config", "temporal_tiny", "epochs=2", "model.transformer_layers=1"]


def _videos(n_train: int, n_val: int) -> list[LabelledVideo]:
    return [LabelledVideo(f"v{i:02d}", 10, "train" if i < n_train else "val") for i in range(n_train + n_val)]


def test_make_folds_split_by_video_deterministically():
    videos = _videos(17, 5)
    folds = make_folds(videos, 5, seed=3)
    assert len(folds) == 5
    assert folds[0] == ([f"v{i:02d}" for i in range(17)], [f"v{i:02d}" for i in range(17, 22)])
    names = {v.video for v in videos}
    vals = []
    for train, val in folds:
        assert not set(train) & set(val)
        assert set(train) | set(val) == names
        vals.append(set(val))
    # folds 1-4 partition the merged set: every video validates exactly once, sizes 6, 6, 5, 5
    assert sorted(len(v) for v in vals[1:]) == [5, 5, 6, 6]
    assert set().union(*vals[1:]) == names and sum(len(v) for v in vals[1:]) == 22
    assert make_folds(videos, 5, seed=3) == folds
    assert make_folds(videos, 5, seed=4)[1] != folds[1]


def test_cv_cli_writes_table_1(tmp_path, capsys):
    feats, ann = make_feature_dataset(tmp_path / "d", n_videos=6, lengths=(40, 60))
    out = tmp_path / "cv"
    rc = main(["cv", "--features", str(feats), "--data", str(ann), "--task", "multi", "-o", str(out), *TINY])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "| Fold | Valence CCC | Arousal CCC | EXPR F1 | AU F1 |"
    assert [line.split("|")[1].strip() for line in printed.splitlines()[2:]] == [
        "Fold 0", "Fold 1", "Fold 2", "Fold 3", "Fold 4", "Mean"]
    result = json.loads((out / "cv_results.json").read_text())
    for k in range(5):
        run = json.loads((out / "multi" / f"fold{k}" / "metrics.json").read_text())
        assert not set(run["train_videos"]) & set(run["val_videos"])
        assert result["per_fold"][str(k)]["valence"] == pytest.approx(run["best"]["va"]["ccc_valence"])
    expected_mean = np.mean([result["per_fold"][str(k)]["au_f1"] for k in range(5)])
    assert result["mean"]["au_f1"] == pytest.approx(expected_mean)
    rows = list(csv.reader((out / "cv_results.csv").open()))
    assert rows[0] == ["fold", "valence", "arousal", "expr_f1", "au_f1"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2", "3", "4", "mean"]
    assert float(rows[-1][4]) == pytest.approx(expected_mean, abs=1e-6)
    assert (out / "cv_table.md").read_text() == printed


def test_ablate_cli_writes_table_5(tmp_path, capsys):
    feats, ann = make_feature_dataset(tmp_path / "d", n_videos=4, lengths=(40, 60))
    mae, _ = make_feature_dataset(tmp_path / "m", n_videos=4, lengths=(40, 60), noise=4.0)
    # the "pretrained" features must cover the same videos and lengths: copy the lengths over
    for video in ("video00", "video01", "video02", "video03"):
        n = np.load(feats / f"{video}.npy").shape[0]
        np.save(mae / f"{video}.npy", np.random.default_rng(0).normal(size=(n, 16)).astype(np.float16))
        np.save(mae / f"{video}.mask.npy", np.ones(n, bool))
    out = tmp_path / "abl"
    rc = main(["ablate", "--features", str(feats), "--mae-features", str(mae), "--data", str(ann), "--task", "va",
               "-o", str(out), *TINY])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| Method | VA | EXPR | AU |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == [
        "ours (TCN + Transformer)", "w/o fine-tuning", "w/o TCN", "w/o Transformer", "per-frame linear"]
    result = json.loads((out / "ablation_results.json").read_text())
    for variant in ("full", "no_finetune", "no_tcn", "no_transformer", "linear"):
        run = json.loads((out / variant / "va" / "metrics.json").read_text())
        assert result["results"][variant]["va"] == pytest.approx(run["best"]["va"]["score"])
    cfg = (out / "no_tcn" / "va" / "config.yaml").read_text()
    assert "use_tcn: false" in cfg and "use_transformer: true" in cfg
    assert str(mae) in (out / "no_finetune" / "va" / "config.yaml").read_text()
    # without --mae-features the row is reported as not run, not silently dropped
    rc = main(["ablate", "--features", str(feats), "--data", str(ann), "--task", "va", "-o", str(tmp_path / "a2"), *TINY])
    assert rc == 0
    assert "| w/o fine-tuning | not run | not run | not run |" in capsys.readouterr().out


def test_multitask_fold0_scores_only_official_validation_labels():
    from affectmae.training.temporal_data import select_fold

    labels = {"va": np.zeros((10, 2), np.float32), "expr": np.zeros((10, 1), np.float32)}
    valid = {"va": np.ones(10, bool), "expr": np.ones(10, bool)}
    mixed = LabelledVideo("mixed", 10, "val", dict(labels), dict(valid), {"va": "train", "expr": "val"})
    videos = [LabelledVideo("t", 10, "train", dict(labels), dict(valid), {"va": "train", "expr": "train"}), mixed]
    train, val = select_fold(videos, 0, 5, 0)
    assert [v.video for v in train] == ["t"] and [v.video for v in val] == ["mixed"]
    assert list(val[0].labels) == ["expr"]
    with pytest.raises(Exception, match="fold 0 has no validation videos"):
        select_fold(videos[:1], 0, 5, 0)
