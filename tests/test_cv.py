"""Folds (official fold 0, seeded video splits, never a video on both sides) and the `cv` / `ablate` tables."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import yaml

from affectmae.checkpoint import read_metadata
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
    rc = main(["cv", "--features", str(feats), "--annotations", str(ann), "--task", "multi", "-o", str(out), *TINY])
    assert rc == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0] == ("| Fold | Valence CCC | Arousal CCC | EXPR F1 | AU F1 (0.5) | AU F1 (thresholds from train) |")
    assert [line.split("|")[1].strip() for line in lines[2:10]] == [
        "Fold 0", "Fold 1", "Fold 2", "Fold 3", "Fold 4", "Mean", "per-frame linear, same features (mean over folds)",
        "chance: uniform random (mean over folds)"]
    assert lines[10].startswith("| chance: majority class, mean VA, all-ones AU (mean over folds) | 0.0000 | 0.0000 |")
    assert lines[12].startswith("Seed 0 (one run per row, no standard deviation). AU thresholds are tuned on each run's")
    result = json.loads((out / "cv_results.json").read_text())
    for k in range(5):
        run = out / "multi" / f"fold{k}"
        meta = read_metadata(run / "best.safetensors")
        assert meta["fold"] == k and not set(meta["train_videos"]) & set(meta["val_videos"])
        best = json.loads((run / "best.json").read_text())["metrics"]
        assert result["per_fold"][str(k)]["valence"] == pytest.approx(best["va"]["ccc_valence"])
        assert result["per_fold"][str(k)]["au_f1"] == pytest.approx(best["au"]["score_at_0.5"])
        assert result["per_fold"][str(k)]["au_f1_tuned"] == pytest.approx(best["au"]["score_tuned_thresholds"])
        linear = json.loads((out / "baselines" / "linear" / "multi" / f"fold{k}" / "best.json").read_text())["metrics"]
        assert result["baselines"]["linear"]["per_seed"]["0"][str(k)]["expr_f1"] == linear["expr"]["score"]
    expected_mean = np.mean([result["per_fold"][str(k)]["au_f1"] for k in range(5)])
    assert result["mean"]["au_f1"] == pytest.approx(expected_mean)
    rows = list(csv.reader((out / "cv_results.csv").open()))
    assert rows[0] == ["row", "seed", "valence", "arousal", "expr_f1", "au_f1", "au_f1_tuned"]
    assert [r[:2] for r in rows[1:]] == [["0", "0"], ["1", "0"], ["2", "0"], ["3", "0"], ["4", "0"], ["mean", "0"],
                                         ["linear", "0"], ["chance_uniform", "-"], ["chance_majority", "-"]]
    assert float(rows[6][5]) == pytest.approx(expected_mean, abs=1e-6)
    assert (out / "cv_table.md").read_text() == printed


def _copy_lengths(feats, other, dim: int, seed: int) -> None:
    """Give ``other`` (a features folder) the videos and lengths of ``feats``, with random features."""
    meta = json.loads((other / "features.json").read_text())
    (other / "features.json").write_text(json.dumps({**meta, "dim": dim}))
    for path in sorted(feats.glob("video*.mask.npy")):
        video = path.name[: -len(".mask.npy")]
        n = np.load(feats / f"{video}.npy").shape[0]
        np.save(other / f"{video}.npy", np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float16))
        np.save(other / f"{video}.mask.npy", np.ones(n, bool))


def test_ablate_cli_writes_table_5(tmp_path, capsys, caplog):
    feats, ann = make_feature_dataset(tmp_path / "d", n_videos=4, lengths=(40, 60))
    extra = {}
    for name, dim in (("m", 16), ("p", 36), ("r", 16), ("t", 20)):
        extra[name], _ = make_feature_dataset(tmp_path / name, n_videos=4, lengths=(40, 60), noise=4.0)
        _copy_lengths(feats, extra[name], dim, seed=len(extra))  # same videos and lengths as the main features
    out = tmp_path / "abl"
    rc = main(["ablate", "--features", str(feats), "--mae-features", str(extra["m"]), "--pixel-features",
               str(extra["p"]), "--random-features", str(extra["r"]), "--teacher-features", str(extra["t"]),
               "--data", str(ann), "--task", "va", "-o", str(out), *TINY])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| Method | VA | EXPR | AU (0.5) | AU (thresholds from train) |"
    assert [line.split("|")[1].strip() for line in lines[2:14]] == [
        "ours (TCN + Transformer)", "w/o fine-tuning", "w/o TCN", "w/o Transformer", "per-frame linear",
        "raw pixels (TCN + Transformer)", "raw pixels (per-frame linear)", "random-init encoder (TCN + Transformer)",
        "FER2013 CNN features (TCN + Transformer)", "FER2013 CNN features (per-frame linear)", "chance: uniform random",
        "chance: majority class, mean VA, all-ones AU"]
    assert lines[12] == "| chance: uniform random | 0.0000 | - | - | - |"
    result = json.loads((out / "ablation_results.json").read_text())
    for variant in ("full", "no_finetune", "no_tcn", "no_transformer", "linear", "pixels_temporal", "pixels",
                    "random_encoder", "teacher_temporal", "teacher"):
        best = json.loads((out / variant / "va" / "best.json").read_text())["metrics"]
        assert result["results"][variant]["va"] == pytest.approx(best["va"]["score"])
        assert result["results"][variant]["per_seed"]["0"]["va"] == pytest.approx(best["va"]["score"])
    cfg = (out / "no_tcn" / "va" / "config.yaml").read_text()
    assert "use_tcn: false" in cfg and "use_transformer: true" in cfg
    assert str(extra["m"]) in (out / "no_finetune" / "va" / "config.yaml").read_text()
    pixels = yaml.safe_load((out / "pixels" / "va" / "config.yaml").read_text())
    assert pixels["features"] == str(extra["p"]) and pixels["model"]["arch"] == "linear"
    assert pixels["model"]["input_dim"] == 36
    # the strong baseline: the same pixels through the full temporal model, everything else as in "ours"
    pixels_temporal = yaml.safe_load((out / "pixels_temporal" / "va" / "config.yaml").read_text())
    ours = yaml.safe_load((out / "full" / "va" / "config.yaml").read_text())
    assert pixels_temporal["features"] == str(extra["p"]) and pixels_temporal["model"]["input_dim"] == 36
    assert {k: v for k, v in pixels_temporal["model"].items() if k != "input_dim"} == {
        k: v for k, v in ours["model"].items() if k != "input_dim"}
    random_cfg = yaml.safe_load((out / "random_encoder" / "va" / "config.yaml").read_text())
    assert random_cfg["features"] == str(extra["r"]) and random_cfg["model"]["arch"] != "linear"
    # the FER2013 CNN reference rows: its features through the full temporal model and per frame
    teacher_temporal = yaml.safe_load((out / "teacher_temporal" / "va" / "config.yaml").read_text())
    assert teacher_temporal["features"] == str(extra["t"]) and teacher_temporal["model"]["input_dim"] == 20
    assert {k: v for k, v in teacher_temporal["model"].items() if k != "input_dim"} == {
        k: v for k, v in ours["model"].items() if k != "input_dim"}
    teacher = yaml.safe_load((out / "teacher" / "va" / "config.yaml").read_text())
    assert teacher["features"] == str(extra["t"]) and teacher["model"]["arch"] == "linear"
    assert teacher["model"]["input_dim"] == 20
    # without the extra features the rows are reported as not run, not silently dropped
    with caplog.at_level(logging.WARNING, logger="affectmae.training.ablate"):
        rc = main(["ablate", "--features", str(feats), "--data", str(ann), "--task", "va", "-o", str(tmp_path / "a2"),
                   *TINY])
    assert rc == 0
    printed = capsys.readouterr().out
    for title in ("w/o fine-tuning", "raw pixels (TCN + Transformer)", "raw pixels (per-frame linear)",
                  "random-init encoder (TCN + Transformer)", "FER2013 CNN features (TCN + Transformer)",
                  "FER2013 CNN features (per-frame linear)"):
        assert f"| {title} | not run | not run | not run | not run |" in printed
    assert ("ablate: row 'FER2013 CNN features (per-frame linear)' not run (give --teacher-features: "
            "extract --encoder fer)") in caplog.messages
    skipped = json.loads((tmp_path / "a2" / "ablation_results.json").read_text())["results"]
    assert skipped["teacher_temporal"] == skipped["teacher"] == {"skipped": "no --teacher-features given"}


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
