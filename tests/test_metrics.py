import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from affectmae.errors import AffectMAEError
from affectmae.evaluation.metrics import au_metrics, ccc, evaluate, expr_metrics, tune_au_thresholds, va_metrics
from affectmae.tasks import ACTION_UNITS, EXPRESSIONS


def test_ccc_hand_computed():
    # means 2 and 4; population var_x = 2/3, var_y = 8/3, cov = 4/3 -> 2*(4/3) / (2/3 + 8/3 + 4) = 4/11
    assert ccc([1, 2, 3], [2, 4, 6]) == pytest.approx(4 / 11, abs=1e-12)
    # identical sequences -> 1; negated -> -1 (means equal, var equal, cov = -var)
    assert ccc([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert ccc([-1, 0, 1], [1, 0, -1]) == pytest.approx(-1.0)
    # x=[0,0,1,1], y=[0,1,0,1]: cov 0 -> 0
    assert ccc([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0


def test_ccc_uses_population_statistics_against_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(scale=0.3, size=50) + 0.2
    cov = np.cov(x, y, bias=True)
    expected = 2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (x.mean() - y.mean()) ** 2)
    assert ccc(x, y) == pytest.approx(expected, rel=1e-12)
    assert ccc(torch.tensor(x, dtype=torch.float32), y) == pytest.approx(expected, rel=1e-5)
    assert isinstance(ccc(x, y), float)


def test_ccc_constant_inputs():
    assert ccc([0.3, 0.3, 0.3], [0.3, 0.3, 0.3]) == 0.0  # denominator 0 -> documented 0.0
    # constant prediction, varying truth: cov 0 -> 0.0 (denominator positive)
    assert ccc([0.5, 0.5, 0.5], [0.0, 0.5, 1.0]) == 0.0
    with pytest.raises(AffectMAEError, match="no values"):
        ccc([], [])
    with pytest.raises(AffectMAEError, match="differ in length"):
        ccc([1, 2], [1, 2, 3])
    with pytest.raises(AffectMAEError, match="NaN"):
        ccc([1, np.nan], [1, 2])


def test_va_metrics_excludes_invalid_frames():
    true = np.array([[1, 2], [2, 4], [3, 6], [-5, -5], [0.1, 0.1]], dtype=np.float32)
    pred = np.array([[2, 2], [4, 4], [6, 6], [9, 9], [9, 9]], dtype=np.float32)
    valid = np.array([True, True, True, True, False])
    out = va_metrics(pred, true, valid)
    # valence: ccc([2,4,6], [1,2,3]) = 4/11; arousal: ccc([2,4,6],[2,4,6]) = 1
    assert out["ccc_valence"] == pytest.approx(4 / 11, rel=1e-6)
    assert out["ccc_arousal"] == pytest.approx(1.0)
    assert out["score"] == pytest.approx((4 / 11 + 1) / 2, rel=1e-6)
    assert out["frames_scored"] == 3
    assert list(out) == ["score", "ccc_valence", "ccc_arousal", "frames_scored"]


def test_expr_matches_sklearn_macro_f1():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 6, size=200)  # classes 6, 7 never true
    pred = np.where(rng.random(200) < 0.6, true, rng.integers(0, 7, size=200))  # 7 never predicted
    out = expr_metrics(pred, true)
    ref = f1_score(true, pred, average="macro", labels=list(range(8)), zero_division=0)
    assert out["score"] == pytest.approx(ref, abs=1e-12)
    per_class = f1_score(true, pred, average=None, labels=list(range(8)), zero_division=0)
    assert list(out["f1_per_class"]) == list(EXPRESSIONS)
    np.testing.assert_allclose(list(out["f1_per_class"].values()), per_class, atol=1e-12)
    assert out["f1_per_class"]["Other"] == 0.0


def test_expr_hand_value_invalid_and_logits():
    # true [0,0,1,-1], pred [0,1,1,5]: frame 3 invalid. class0: tp1 fn1 -> 2/3; class1: tp1 fp1 -> 2/3; others 0.
    true = np.array([[0], [0], [1], [-1]], dtype=np.float32)  # (N, 1) as in VideoLabels
    out = expr_metrics(np.array([0, 1, 1, 5]), true)
    assert out["score"] == pytest.approx((2 / 3 + 2 / 3) / 8)
    assert out["frames_scored"] == 3
    logits = np.eye(8)[[0, 1, 1, 5]]
    assert expr_metrics(logits, true)["score"] == pytest.approx(out["score"])
    with pytest.raises(AffectMAEError, match="class indices must be integers 0..7, found 9"):
        expr_metrics(np.array([9, 0, 0, 0]), true)


def test_au_matches_sklearn_per_au_and_thresholds():
    rng = np.random.default_rng(2)
    true = rng.integers(0, 2, size=(120, 12))
    probs = np.clip(true * 0.6 + rng.random((120, 12)) * 0.5, 0, 1)
    thresholds = np.linspace(0.3, 0.75, 12)
    out = au_metrics(probs, true, thresholds=thresholds)
    binary = probs >= thresholds
    ref = [f1_score(true[:, j], binary[:, j], zero_division=0) for j in range(12)]
    assert list(out["f1_per_au"]) == list(ACTION_UNITS)
    np.testing.assert_allclose(list(out["f1_per_au"].values()), ref, atol=1e-12)
    assert out["score"] == pytest.approx(np.mean(ref), abs=1e-12)
    default = au_metrics(probs, true)
    ref05 = f1_score(true, probs >= 0.5, average="macro", zero_division=0)
    assert default["score"] == pytest.approx(ref05, abs=1e-12)


def test_au_invalid_frames_excluded():
    true = np.array([[1] * 12, [0] * 12, [-1] * 12], dtype=np.float32)
    pred = np.array([[1] * 12, [0] * 12, [0] * 12])
    out = au_metrics(pred, true)
    assert out["score"] == 1.0 and out["frames_scored"] == 2
    out = au_metrics(pred, true, valid=[False, True, True])  # only negatives left -> F1 0 for every AU
    assert out["score"] == 0.0 and out["frames_scored"] == 1
    with pytest.raises(AffectMAEError, match="au: no frame with a valid label left to score \\(out of 3 frames\\)"):
        au_metrics(pred, true, valid=[False, False, True])


def test_evaluate_dispatches_through_task_table():
    true = np.array([[0.1, 0.2], [0.3, -0.4], [0.5, 0.0]])
    assert evaluate("va", true, true)["score"] == pytest.approx(1.0)
    assert evaluate("EXPR", [1, 2], [1, 2])["f1_per_class"]["Anger"] == 1.0
    assert evaluate("au", np.ones((2, 12)), np.ones((2, 12)), thresholds=0.9)["score"] == 1.0
    with pytest.raises(AffectMAEError, match="unknown task 'pose'"):
        evaluate("pose", true, true)
    with pytest.raises(AffectMAEError, match=r"shape \(N, 2\)"):
        evaluate("va", np.zeros((3, 3)), true)
    with pytest.raises(AffectMAEError, match="va: no frame with a valid label"):
        evaluate("va", true, np.full((3, 2), -5.0))


def test_tune_au_thresholds_picks_best_grid_value():
    true = np.zeros((4, 12))
    true[:2] = 1
    probs = np.tile(np.array([[0.35], [0.3], [0.2], [0.1]]), (1, 12))
    # threshold 0.25 separates perfectly (0.3 and 0.35 positive); nearest-to-0.5 perfect grid value is 0.3
    thr = tune_au_thresholds(probs, true, grid=[0.1, 0.25, 0.3, 0.5])
    np.testing.assert_array_equal(thr, np.full(12, 0.3))
    assert au_metrics(probs, true, thresholds=thr)["score"] == 1.0
