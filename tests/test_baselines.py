"""Chance rows against hand-computed and sklearn values; mean ± sample std over seeds in the cv/ablate tables."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from affectmae.config import build_config
from affectmae.training import ablate as ablate_mod
from affectmae.training import cv as cv_mod
from affectmae.training.baselines import chance_scores, majority_chance, uniform_chance
from affectmae.training.report import mean_std
from affectmae.training.temporal import TrainConfig
from temporal_helpers import make_feature_dataset

EXPR_TRUE = np.array([0, 0, 0, 1, 1, 2, -1, 4, 4, 0]).reshape(-1, 1)
EXPR_VALID = np.array([True] * 9 + [False])  # the last frame (class 0) is masked out: 8 frames scored


def test_expr_chance_by_hand_and_sklearn():
    # scored labels: 0,0,0,1,1,2,4,4 (N = 8). Uniform: F1_c = 2 n_c / (N + 8 n_c)
    hand_uniform = (6 / 32 + 4 / 24 + 2 / 16 + 4 / 24) / 8
    assert uniform_chance("expr", EXPR_TRUE, EXPR_VALID)["expr_f1"] == pytest.approx(hand_uniform, abs=1e-12)
    # sklearn on the expected confusion: every scored frame once per class, with weight 1/8
    labels = EXPR_TRUE.ravel()[EXPR_VALID & (EXPR_TRUE.ravel() != -1)]
    ref = f1_score(np.repeat(labels, 8), np.tile(np.arange(8), labels.size), labels=range(8), average="macro",
                   sample_weight=np.full(labels.size * 8, 1 / 8), zero_division=0)
    assert uniform_chance("expr", EXPR_TRUE, EXPR_VALID)["expr_f1"] == pytest.approx(ref, abs=1e-12)
    # majority class 0 (3 of 8): F1_0 = 6 / 11, the other classes 0
    assert majority_chance("expr", EXPR_TRUE, EXPR_VALID)["expr_f1"] == pytest.approx(6 / 11 / 8, abs=1e-12)
    assert majority_chance("expr", EXPR_TRUE, EXPR_VALID)["expr_f1"] == pytest.approx(
        f1_score(labels, np.zeros_like(labels), labels=range(8), average="macro", zero_division=0), abs=1e-12)


def test_au_and_va_chance_by_hand_and_sklearn():
    rng = np.random.default_rng(0)
    true = (rng.random((9, 12)) < np.linspace(0.1, 0.9, 12)).astype(np.int64)
    true[2, 3] = -1  # one invalid unit
    true[:, 11] = 0  # an AU that never occurs: F1 0 for every predictor
    valid = np.ones(9, bool)
    valid[5] = False
    uniform, ones = [], []
    for k in range(12):
        t = true[valid & (true[:, k] != -1), k]
        uniform.append(f1_score(np.repeat(t, 2), np.tile([0, 1], t.size), sample_weight=np.full(2 * t.size, 0.5),
                                zero_division=0))
        ones.append(f1_score(t, np.ones_like(t), zero_division=0))
    assert uniform_chance("au", true, valid)["au_f1"] == pytest.approx(np.mean(uniform), abs=1e-12)
    assert majority_chance("au", true, valid)["au_f1"] == pytest.approx(np.mean(ones), abs=1e-12)
    # by hand for AU 3: 8 scored frames in rows other than 2 and 5
    t3 = true[[0, 1, 3, 4, 6, 7, 8], 3]
    n1, n = int(t3.sum()), t3.size
    assert uniform[3] == pytest.approx(2 * n1 / (n + 2 * n1)) and ones[3] == pytest.approx(2 * n1 / (n + n1))
    va = np.array([[0.1, 0.2], [0.3, -0.1], [-5, -5], [0.5, 0.4], [-0.2, 0.9]])
    assert uniform_chance("va", va, np.ones(5, bool)) == {"valence": 0.0, "arousal": 0.0, "va": 0.0}
    assert majority_chance("va", va, np.ones(5, bool)) == {"valence": 0.0, "arousal": 0.0, "va": 0.0}


def _tiny_cfg(feats, ann, **kw) -> TrainConfig:
    cfg = build_config(TrainConfig, "temporal_tiny", features=str(feats), annotations=str(ann))
    return dataclasses.replace(cfg, **kw)


def test_chance_scores_read_the_validation_labels_of_the_fold(tmp_path):
    feats, ann = make_feature_dataset(tmp_path, n_videos=5, lengths=(40, 60))
    rows = chance_scores(_tiny_cfg(feats, ann), ["multi"])
    expr = []  # official validation files of fold 0: video03, video04
    for video in ("video03", "video04"):
        lines = (ann / "EXPR_Recognition_Challenge" / "Validation_Set" / f"{video}.txt").read_text().split()[1:]
        expr += [int(v) for v in lines]
    expr = np.array(expr)
    expr = expr[expr != -1]
    majority = np.bincount(expr).argmax()
    assert rows["chance_majority"]["expr_f1"] == pytest.approx(
        f1_score(expr, np.full_like(expr, majority), labels=range(8), average="macro", zero_division=0), abs=1e-12)
    n_c = np.bincount(expr, minlength=8)
    assert rows["chance_uniform"]["expr_f1"] == pytest.approx(np.mean(2 * n_c / (expr.size + 8 * n_c)), abs=1e-12)
    assert rows["chance_uniform"]["au_f1_tuned"] is None and rows["chance_majority"]["va"] == 0.0


def _fake_result(va: float, au: float) -> dict:
    return {"best": {"va": {"score": va, "ccc_valence": va, "ccc_arousal": va},
                     "au": {"score": au, "score_at_0.5": au, "score_tuned_thresholds": au + 0.05}}}


def test_ablation_table_shows_mean_and_sample_std_over_seeds(tmp_path, monkeypatch):
    feats, ann = make_feature_dataset(tmp_path / "d", n_videos=4, lengths=(40, 60))
    per_seed_va = {0: 0.5, 1: 0.6, 2: 0.7}  # mean 0.6, sample std 0.1 (population std would be 0.0816)
    calls = []

    def fake_train(cfg):
        calls.append((cfg.seed, cfg.task, cfg.out, cfg.model.arch))
        bump = 0.0 if cfg.model.arch != "linear" else -0.2
        return _fake_result(per_seed_va[cfg.seed] + bump, 0.3 + 0.1 * cfg.seed)

    monkeypatch.setattr(ablate_mod, "train_temporal", fake_train)
    out = tmp_path / "abl"
    result = ablate_mod.ablate(_tiny_cfg(feats, ann), ["multi"], out, seeds=[0, 1, 2])
    assert (0, "multi", str(out / "full" / "seed0" / "multi"), "temporal") in calls
    assert (2, "multi", str(out / "linear" / "seed2" / "multi"), "linear") in calls
    assert sorted({c[0] for c in calls}) == [0, 1, 2] and len(calls) == 3 * 4  # 4 rows run, 6 not run
    lines = result["table"].splitlines()
    assert lines[2].startswith("| ours (TCN + Transformer) | 0.6000 ± 0.1000 | - | 0.4000 ± 0.1000 | 0.4500 ± 0.1000 |")
    assert lines[6].startswith("| per-frame linear | 0.4000 ± 0.1000 |")
    assert [line.split("|")[1].strip() for line in lines[2:12] if "| not run |" in line] == [
        "w/o fine-tuning", "raw pixels (TCN + Transformer)", "raw pixels (per-frame linear)",
        "random-init encoder (TCN + Transformer)", "FER2013 CNN features (TCN + Transformer)",
        "FER2013 CNN features (per-frame linear)"]
    assert "Mean ± sample standard deviation (ddof=1) over seeds 0, 1, 2." in result["table"]
    full = result["results"]["full"]
    assert full["va"] == pytest.approx(0.6) and full["std"]["va"] == pytest.approx(0.1)
    assert {s: v["va"] for s, v in full["per_seed"].items()} == {"0": 0.5, "1": 0.6, "2": 0.7}
    rows = list(csv.reader((out / "ablation_results.csv").open()))
    assert rows[0] == ["variant", "seed", "va", "expr_f1", "au_f1", "au_f1_tuned"]
    assert rows[1:6] == [["full", "0", "0.500000", "", "0.300000", "0.350000"],
                         ["full", "1", "0.600000", "", "0.400000", "0.450000"],
                         ["full", "2", "0.700000", "", "0.500000", "0.550000"],
                         ["full", "mean", "0.600000", "", "0.400000", "0.450000"],
                         ["full", "std", "0.100000", "", "0.100000", "0.100000"]]
    assert json.loads((out / "ablation_results.json").read_text())["seeds"] == [0, 1, 2]


def test_cv_mean_row_is_over_seeds_of_the_fold_means(tmp_path, monkeypatch):
    feats, ann = make_feature_dataset(tmp_path / "d", n_videos=6, lengths=(40, 60))

    def fake_train(cfg):  # VA = 0.1 * seed + 0.01 * fold
        return _fake_result(0.1 * cfg.seed + 0.01 * cfg.fold, 0.5)

    monkeypatch.setattr(cv_mod, "train_temporal", fake_train)
    out = tmp_path / "cv"
    result = cv_mod.cross_validate(_tiny_cfg(feats, ann), ["va"], out, folds=[0, 1, 2], seeds=[0, 1, 2])
    lines = result["table"].splitlines()
    assert lines[2] == "| Fold 0 | 0.1000 ± 0.1000 | 0.1000 ± 0.1000 | - | 0.5000 ± 0.0000 | 0.5500 ± 0.0000 |"
    assert lines[4].startswith("| Fold 2 | 0.1200 ± 0.1000 |")
    # per seed: mean over folds 0.1 s + 0.01; then over seeds 0.11 ± 0.1
    assert lines[5].startswith("| Mean | 0.1100 ± 0.1000 |")
    assert result["per_seed_mean"]["2"]["valence"] == pytest.approx(0.21)
    assert result["mean_std"]["valence"] == pytest.approx(mean_std([0.01, 0.11, 0.21])[1]) == pytest.approx(0.1)
    assert result["runs"]["va"]["1"]["2"] == str(out / "va" / "seed1" / "fold2")
