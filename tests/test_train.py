"""`affectmae train`: end to end on tiny feature data, official per-frame validation, resume, NaN guard, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from affectmae.checkpoint import read_metadata
from affectmae.cli import main
from affectmae.errors import AffectMAEError, TrainingDivergedError
from affectmae.features.store import FeatureStore
from affectmae.models.temporal import load_temporal, predict_sequence
from affectmae.training import temporal as temporal_mod
from affectmae.training.metrics_log import read_metrics
from affectmae.training.temporal import run_train
from temporal_helpers import make_feature_dataset

FAST = ["epochs=3", "tensorboard=false"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_feature_dataset(tmp_path_factory.mktemp("feat"), n_videos=5, lengths=(50, 90))


def _ccc(x, y):
    mx, my = x.mean(), y.mean()
    return 2 * ((x - mx) * (y - my)).mean() / (x.var() + y.var() + (mx - my) ** 2)


def test_train_cli_writes_run_and_validates_per_frame(dataset, tmp_path, capsys):
    feats, ann = dataset
    run = tmp_path / "run"
    rc = main(["train", "--features", str(feats), "--annotations", str(ann), "--task", "va", "-o", str(run),
               "--config", "temporal_tiny", "epochs=3", "lr=0.002", "tensorboard=true"])
    assert rc == 0
    for name in ("config.yaml", "metrics.jsonl", "last_state.safetensors", "best.json", "best.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["lr"] == 0.002 and cfg["window"] == 32 and cfg["model"]["input_dim"] == 16
    epochs = read_metrics(run, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [e["val_score"] for e in epochs] == [e["val"]["score"] for e in epochs]
    steps = read_metrics(run, "train")
    assert [s["global_step"] for s in steps] == list(range(1, len(steps) + 1)) and epochs[-1]["global_step"] == len(steps)
    best = json.loads((run / "best.json").read_text())
    assert best["epoch"] == printed["best_epoch"] and best["score"] == max(e["val_score"] for e in epochs)
    assert printed["best"]["va"]["score"] == pytest.approx(best["metrics"]["va"]["score"])
    # independent recomputation: best model, merged windows, all validation frames concatenated, numpy CCC
    model, meta = load_temporal(run / "best.safetensors")
    assert meta["val_videos"] == ["video03", "video04"]
    assert meta["window"] == 32 and meta["stride"] == 16 and meta["epoch"] == best["epoch"]
    store = FeatureStore(feats)
    preds, trues = [], []
    for video in ("video03", "video04"):
        f, present = store.load(video)
        preds.append(predict_sequence(model, f, present, 32, 16)["va"])
        lines = (ann / "VA_Estimation_Challenge" / "Validation_Set" / f"{video}.txt").read_text().split()[1:]
        trues.append(np.array([[float(v) for v in line.split(",")] for line in lines]))
    p, t = np.concatenate(preds), np.concatenate(trues)
    ok = t[:, 0] != -5
    assert ok.sum() == best["metrics"]["va"]["frames_scored"] == len(t) - (~ok).sum()
    expected = (_ccc(p[ok, 0], t[ok, 0]) + _ccc(p[ok, 1], t[ok, 1])) / 2
    assert best["metrics"]["va"]["score"] == pytest.approx(expected, abs=1e-5)


def test_temporal_beats_per_frame_linear_on_va(dataset, tmp_path):
    feats, ann = dataset
    common = dict(features=str(feats), annotations=str(ann), task="va")
    temporal = run_train("temporal_tiny", [], out=str(tmp_path / "t"), **common)
    linear = run_train("temporal_tiny", [], out=str(tmp_path / "l"), baseline="linear", **common)
    assert temporal["best"]["score"] > linear["best"]["score"] + 0.1


def test_multitask_and_au_thresholds(dataset, tmp_path):
    feats, ann = dataset
    result = run_train("temporal_tiny", FAST, features=str(feats), annotations=str(ann), task="multi", out=str(tmp_path))
    assert set(result["best"]) == {"va", "expr", "au", "score"}
    meta = read_metadata(tmp_path / "best.safetensors")
    assert meta["tasks"] == ["va", "expr", "au"]
    assert len(meta["au_thresholds"]) == 12 and all(0.05 <= t <= 0.95 for t in meta["au_thresholds"])
    assert meta["au_threshold_source"] == "train" and result["au_thresholds"] == meta["au_thresholds"]
    au = result["best"]["au"]
    assert au["score_at_0.5"] == au["score"] and au["thresholds_tuned_on"] == "train"
    assert 0.0 <= au["score_tuned_thresholds"] <= 1.0
    parts = [result["best"][t]["score"] for t in ("va", "expr", "au")]
    assert result["best"]["score"] == pytest.approx(np.mean(parts))


def _to_old_layout(run) -> None:
    """Rewrite a run folder as `train` wrote it before the shared loop and the rename of ``data``: no
    metrics.jsonl (the history lived in the state), counters ``step``/``best_score``/``best_epoch``."""
    from affectmae.checkpoint import load_weights, save_weights

    epochs = read_metrics(run, "epoch")
    (run / "metrics.jsonl").unlink()
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("annotations: ", "data: "))
    tensors, meta = load_weights(run / "last_state.safetensors")
    best = meta["extra"]["best"]
    meta["counters"] = {"epoch": meta["counters"]["epoch"], "step": meta["counters"]["global_step"],
                        "best_score": best["score"], "best_epoch": best["epoch"]}
    meta["extra"] = {"history": [{"epoch": e["epoch"], "train_loss": e["train_loss"], "val": e["val"]} for e in epochs],
                     "best_metrics": best["metrics"]}
    meta["config"]["data"] = meta["config"].pop("annotations")
    save_weights(run / "last_state.safetensors", tensors, meta)


@pytest.mark.parametrize("old_layout", [False, True], ids=["run", "run-before-rename"])
def test_resume_continues_to_the_same_result(dataset, tmp_path, monkeypatch, old_layout):
    feats, ann = dataset
    args = dict(features=str(feats), annotations=str(ann), task="expr")
    full = run_train("temporal_tiny", FAST, out=str(tmp_path / "full"), **args)
    calls = {"n": 0}
    original = temporal_mod.evaluate_videos

    def interrupt_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(temporal_mod, "evaluate_videos", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_train("temporal_tiny", FAST, out=str(tmp_path / "cut"), **args)
    monkeypatch.setattr(temporal_mod, "evaluate_videos", original)
    assert read_metadata(tmp_path / "cut" / "last_state.safetensors")["counters"]["epoch"] == 1
    if old_layout:
        _to_old_layout(tmp_path / "cut")
        resumed = run_train(tmp_path / "cut" / "config.yaml", [], resume=True)
    else:
        resumed = run_train("temporal_tiny", FAST, out=str(tmp_path / "cut"), resume=True, **args)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for a, b in zip(full["history"], resumed["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val"]["score"] == pytest.approx(a["val"]["score"], abs=1e-6)
    assert resumed["best_epoch"] == full["best_epoch"] and resumed["best"]["score"] == pytest.approx(full["best"]["score"])
    with pytest.raises(AffectMAEError, match="cannot resume with an incompatible config"):
        run_train("temporal_tiny", [*FAST, "batch_size=4"], out=str(tmp_path / "cut"), resume=True, **args)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    feats, ann = dataset
    real_loss = temporal_mod.multitask_loss
    calls = {"n": 0}

    def nan_after_first_epoch(*a, **k):
        calls["n"] += 1
        total, parts = real_loss(*a, **k)
        return (total * float("nan"), parts) if calls["n"] > steps_per_epoch else (total, parts)

    # tiny config: videos of 50-90 frames, window 32, stride 16 -> count the training windows
    from affectmae.segments import make_segments

    n_train = [np.load(feats / f"video0{i}.npy").shape[0] for i in range(3)]
    steps_per_epoch = -(-len(make_segments(n_train, 32, 16)) // 8)
    monkeypatch.setattr(temporal_mod, "multitask_loss", nan_after_first_epoch)
    with pytest.raises(TrainingDivergedError, match="loss became nan at epoch 2"):
        run_train("temporal_tiny", FAST, features=str(feats), annotations=str(ann), task="au", out=str(tmp_path))
    assert read_metadata(tmp_path / "best.safetensors")["epoch"] == 1
    assert read_metadata(tmp_path / "last_state.safetensors")["counters"]["epoch"] == 1


def test_length_mismatch_and_empty_validation_errors(tmp_path):
    feats, ann = make_feature_dataset(tmp_path / "a", n_videos=3, lengths=(40, 40), tasks=("expr",))
    path = ann / "EXPR_Recognition_Challenge" / "Train_Set" / "video00.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + ["1"]) + "\n")  # one extra line: the tolerated Aff-Wild2 off-by-one
    out = tmp_path / "ok"
    run_train("temporal_tiny", ["epochs=1"], features=str(feats), annotations=str(ann), task="expr", out=str(out))
    path.write_text("\n".join(lines[:-5]) + "\n")  # 35 lines for 40 feature rows
    with pytest.raises(AffectMAEError, match=r"video 'video00': the features have 40 frames but the EXPR annotation .*video00.txt has 35"):
        run_train("temporal_tiny", ["epochs=1"], features=str(feats), annotations=str(ann), task="expr", out=str(out))
    feats2, ann2 = make_feature_dataset(tmp_path / "b", n_videos=2, n_val=0, tasks=("va",))
    rc = main(["train", "--features", str(feats2), "--data", str(ann2), "--task", "va", "-o", str(tmp_path / "r")])
    assert rc == 2
    with pytest.raises(AffectMAEError, match="fold 0 has no validation videos"):
        run_train(None, [], features=str(feats2), annotations=str(ann2), task="va", out=str(tmp_path / "r"))


def _flip_validation_au(ann) -> None:
    """Invert every valid validation AU label, so thresholds tuned on validation differ from training ones."""
    for path in sorted((ann / "AU_Detection_Challenge" / "Validation_Set").glob("*.txt")):
        header, *rows = path.read_text().splitlines()
        flipped = [",".join(v if v == "-1" else str(1 - int(v)) for v in row.split(",")) for row in rows]
        path.write_text(header + "\n" + "\n".join(flipped) + "\n")


def _au_predictions(run, feats, ann, which: str):
    """(probs, true) of the best model over the official train or val videos, recomputed independently."""
    from affectmae.training.temporal_data import load_labelled_videos, select_fold

    model, meta = load_temporal(run / "best.safetensors")
    store = FeatureStore(feats)
    train, val = select_fold(load_labelled_videos(store, str(ann), ["au"]), 0, 5, 0)
    probs, trues = [], []
    for lv in {"train": train, "val": val}[which]:
        f, present = store.load(lv.video)
        probs.append(predict_sequence(model, f, present, meta["window"], meta["stride"])["au"])
        trues.append(lv.labels["au"])
    return np.concatenate(probs), np.concatenate(trues)


def _mean_f1_sklearn(probs, true, thresholds) -> float:
    from sklearn.metrics import f1_score

    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (12,))
    return float(np.mean([f1_score(true[true[:, k] != -1, k], probs[true[:, k] != -1, k] >= thr[k], zero_division=0)
                          for k in range(12)]))


@pytest.mark.parametrize("source", ["train", "val", "none"])
def test_au_thresholds_come_from_the_configured_split(tmp_path, source):
    from affectmae.evaluation.metrics import tune_au_thresholds

    feats, ann = make_feature_dataset(tmp_path / "d", n_videos=5, lengths=(50, 90), tasks=("au",))
    _flip_validation_au(ann)
    run = tmp_path / "run"
    result = run_train("temporal_tiny", [*FAST, f"au_threshold_source={source}"], features=str(feats),
                             annotations=str(ann), task="au", out=str(run))
    meta = read_metadata(run / "best.safetensors")
    au = result["best"]["au"]
    p_train, t_train = _au_predictions(run, feats, ann, "train")
    p_val, t_val = _au_predictions(run, feats, ann, "val")
    from_train, from_val = tune_au_thresholds(p_train, t_train), tune_au_thresholds(p_val, t_val)
    assert np.abs(from_train - from_val).max() >= 0.05  # the flipped validation labels pull them apart
    # the 0.5 score is always reported, and it is the validation F1 at 0.5 (sklearn reference)
    assert au["score"] == au["score_at_0.5"] == pytest.approx(_mean_f1_sklearn(p_val, t_val, 0.5), abs=1e-6)
    if source == "none":
        assert meta["au_thresholds"] is None and au["thresholds_tuned_on"] == "none"
        assert "score_tuned_thresholds" not in au
        return
    expected = {"train": from_train, "val": from_val}[source]
    np.testing.assert_allclose(meta["au_thresholds"], expected, atol=1e-9)
    assert meta["au_threshold_source"] == au["thresholds_tuned_on"] == source
    assert au["score_tuned_thresholds"] == pytest.approx(_mean_f1_sklearn(p_val, t_val, expected), abs=1e-6)


def test_unknown_au_threshold_source_is_refused(dataset, tmp_path):
    feats, ann = dataset
    with pytest.raises(AffectMAEError, match="au_threshold_source must be one of train, val, none, got 'test'"):
        run_train("temporal_tiny", ["au_threshold_source=test"], features=str(feats), annotations=str(ann),
                        task="au", out=str(tmp_path))
