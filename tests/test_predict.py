"""`affectmae export` / `load_model_dir` / `affectmae predict` -> `affectmae score`, ensembles, test lists, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from affectmae.cli import main
from affectmae.errors import AffectMAEError, CheckpointError
from affectmae.features.store import FeatureStore
from affectmae.inference.model import export_model_dir, load_model_dir, load_runs
from affectmae.inference.predict import read_test_list
from affectmae.models.vit import build_encoder, save_encoder
from affectmae.training.temporal import run_train
from temporal_helpers import make_feature_dataset

FAST = ["epochs=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    feats, ann = make_feature_dataset(root, n_videos=5, lengths=(50, 90))
    runs = {}
    for task in ("va", "expr", "au"):
        runs[task] = root / f"run_{task}"
        run_train("temporal_tiny", FAST, features=str(feats), annotations=str(ann), task=task, out=str(runs[task]))
    runs["va2"] = root / "run_va2"
    run_train("temporal_tiny", [*FAST, "seed=1"], features=str(feats), annotations=str(ann), task="va", out=str(runs["va2"]))
    encoder = root / "encoder.safetensors"
    save_encoder(build_encoder("tiny", img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2), encoder)
    return root, feats, ann, runs, encoder


def test_export_and_load_model_dir(trained, tmp_path):
    root, feats, ann, runs, encoder = trained
    model_dir = tmp_path / "model"
    assert main(["export", "--encoder", str(encoder), "--run", str(runs["va"]), "--run", str(runs["va2"]),
                 "--run", str(runs["expr"]), "--run", str(runs["au"]), "-o", str(model_dir)]) == 0
    meta = json.loads((model_dir / "affectmae_model.json").read_text())
    assert meta["format_version"] == 1 and meta["encoder"] == "encoder.safetensors"
    assert meta["heads"] == {"va": ["temporal_va.safetensors", "temporal_va_1.safetensors"],
                             "expr": "temporal_expr.safetensors", "au": "temporal_au.safetensors"}
    model = load_model_dir(model_dir)
    assert model.tasks == ["va", "expr", "au"] and model.feature_dim == 16 and model.img_size == 16
    assert model.encoder.embed_dim == 16
    f, present = FeatureStore(feats).load("video01")
    out = model.predict_sequence(np.asarray(f, np.float32), present)
    n = f.shape[0]
    assert out["va"].shape == (n, 2) and out["expr"].shape == (n, 8) and out["au"].shape == (n, 12)
    np.testing.assert_allclose(out["expr"].sum(1), 1.0, atol=1e-5)
    assert 0 <= out["au"].min() and out["au"].max() <= 1 and np.abs(out["va"]).max() <= 1
    # the VA ensemble is the mean of its two members
    one, two = load_runs([runs["va"]]), load_runs([runs["va2"]])
    mean = (one.predict_sequence(f, present)["va"] + two.predict_sequence(f, present)["va"]) / 2
    np.testing.assert_allclose(out["va"], mean, atol=1e-6)
    tuned = json.loads((runs["au"] / "best.json").read_text())["metrics"]
    assert model.au_thresholds.shape == (12,)
    # thresholds tuned on the training videos (not the scored validation ones) travel into the MODEL_DIR
    assert tuned["au"]["thresholds_tuned_on"] == "train"
    np.testing.assert_allclose(model.au_thresholds, tuned["au"]["thresholds"], atol=1e-12)
    # a MODEL_DIR of another format version is refused with a clear message
    meta["format_version"] = 2
    (model_dir / "affectmae_model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="MODEL_DIR format version 2 .* reads version 1"):
        load_model_dir(model_dir)
    wrong = tmp_path / "enc32.safetensors"
    save_encoder(build_encoder("tiny", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2), wrong)
    with pytest.raises(CheckpointError, match="expect 16-d features but the encoder .* gives 32-d"):
        export_model_dir(wrong, [runs["va"]], tmp_path / "m2")


def test_predict_then_score_end_to_end(trained, tmp_path, capsys):
    root, feats, ann, runs, encoder = trained
    out = tmp_path / "sub"
    for task in ("va", "expr", "au"):
        assert main(["predict", "--features", str(feats), "--run", str(runs[task]), "-o", str(out)]) == 0
        capsys.readouterr()
        csv_path = out / f"{task}_predictions.csv"
        n_rows = sum(np.load(p, mmap_mode="r").shape[0] for p in feats.glob("video0?.npy"))
        assert len(csv_path.read_text().splitlines()) == n_rows + 1  # every frame, with or without a face
        challenge = {"va": "VA_Estimation_Challenge", "expr": "EXPR_Recognition_Challenge",
                     "au": "AU_Detection_Challenge"}[task]
        assert main(["score", "--task", task, str(csv_path), str(ann / challenge / "Validation_Set")]) == 0
        scored = json.loads(capsys.readouterr().out)
        best = json.loads((runs[task] / "best.json").read_text())["metrics"][task]
        # the submission reproduces the validation score of the run (AU: with its tuned thresholds)
        expected = best["score_tuned_thresholds"] if task == "au" else best["score"]
        assert scored["score"] == pytest.approx(expected, abs=2e-4)


def test_predict_with_organisers_list_and_plain_list(trained, tmp_path):
    root, feats, ann, runs, encoder = trained
    n = np.load(feats / "video01.npy").shape[0]
    present = np.load(feats / "video01.mask.npy")
    no_face = int(np.flatnonzero(~present)[0])
    example = tmp_path / "test_set_example.txt"
    rows = [f"video01/{k + 1:05d}.jpg,0,0" for k in (0, no_face, n - 1, n)]  # n: the tolerated extra last frame
    example.write_text("image_location,valence,arousal\n" + "\n".join(rows) + "\n")
    out = tmp_path / "o"
    assert main(["predict", "--features", str(feats), "--run", str(runs["va"]), "--test-list", str(example),
                 "-o", str(out)]) == 0
    lines = (out / "va_predictions.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == [r.split(",")[0] for r in rows]
    assert lines[-1].split(",")[1:] == lines[-2].split(",")[1:]
    plain = tmp_path / "videos.txt"
    plain.write_text("video02\nvideo00,12\n")
    assert list(read_test_list(plain).items()) == [("video02", None), ("video00", 12)]
    main(["predict", "--features", str(feats), "--run", str(runs["expr"]), "--test-list", str(plain), "-o", str(out)])
    lines = (out / "expr_predictions.csv").read_text().splitlines()
    assert len(lines) == 1 + np.load(feats / "video02.npy").shape[0] + 12
    assert lines[-1].startswith("video00/00012.jpg,")
    too_long = tmp_path / "long.txt"
    too_long.write_text(f"video00,{np.load(feats / 'video00.npy').shape[0] + 5}\n")
    with pytest.raises(AffectMAEError, match=r"video 'video00': the test list asks for \d+ frames but the features have"):
        from affectmae.inference.predict import PredictConfig, predict_submissions

        predict_submissions(PredictConfig(features=str(feats), out=str(out), runs=[str(runs["va"])],
                                          test_list=str(too_long), overwrite=True))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(AffectMAEError, match="names no video"):
        read_test_list(empty)


@pytest.mark.slow
def test_synth_extract_train_predict_score_from_the_cli(tmp_path, capsys):
    """The whole chain on a dataset made by `affectmae synth`, one multi-task model, every task scored."""
    import torch

    data = tmp_path / "syn"
    assert main(["synth", str(data), "--videos", "4", "--frames", "60", "--faces", "2", "--size", "32"]) == 0
    torch.manual_seed(0)
    save_encoder(build_encoder("tiny", img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2),
                 tmp_path / "enc.safetensors")
    feats = tmp_path / "feats"
    assert main(["extract", "--encoder", str(tmp_path / "enc.safetensors"), "--frames", str(data),
                 "--data", str(data / "annotations"), "-o", str(feats)]) == 0
    assert main(["train", "--features", str(feats), "--data", str(data / "annotations"), "--task", "multi",
                 "-o", str(tmp_path / "run"), "--config", "temporal_tiny", "epochs=2"]) == 0
    assert main(["export", "--encoder", str(tmp_path / "enc.safetensors"), "--run", str(tmp_path / "run"),
                 "--align-margin", "1.3", "-o", str(tmp_path / "model")]) == 0
    assert json.loads((tmp_path / "model" / "affectmae_model.json").read_text())["align_margin"] == 1.3
    assert main(["predict", "--features", str(feats), "--model", str(tmp_path / "model"), "-o", str(tmp_path / "sub")]) == 0
    capsys.readouterr()
    best = json.loads((tmp_path / "run" / "best.json").read_text())["metrics"]
    n_frames = sum(np.load(p, mmap_mode="r").shape[0] for p in feats.glob("*.npy") if not p.name.endswith(".mask.npy"))
    for task, challenge in (("va", "VA_Estimation_Challenge"), ("expr", "EXPR_Recognition_Challenge"),
                            ("au", "AU_Detection_Challenge")):
        csv_path = tmp_path / "sub" / f"{task}_predictions.csv"
        assert len(csv_path.read_text().splitlines()) == n_frames + 1
        assert main(["score", "--task", task, str(csv_path), str(data / "annotations" / challenge / "Validation_Set")]) == 0
        scored = json.loads(capsys.readouterr().out)
        expected = best[task].get("score_tuned_thresholds", best[task]["score"])
        assert scored["score"] == pytest.approx(expected, abs=2e-4)


def test_predict_config_file_override_and_unknown_key(trained, tmp_path, capsys):
    import yaml

    root, feats, ann, runs, encoder = trained
    model_dir = tmp_path / "model"
    export_model_dir(encoder, [runs["va"], runs["expr"]], model_dir)
    plain = tmp_path / "videos.txt"
    plain.write_text("video01,7\n")
    config = tmp_path / "predict.yaml"
    # `model` is the old name of model_dir: it still loads
    config.write_text(yaml.safe_dump({"features": str(feats), "model": str(model_dir), "tasks": ["va", "expr"]}))
    out = tmp_path / "sub"
    assert main(["predict", "--config", str(config), "-o", str(out), "tasks=[expr]", f"test_list={plain}"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)) == ["expr"]  # the override, not the file's two tasks
    assert not (out / "va_predictions.csv").exists()
    lines = (out / "expr_predictions.csv").read_text().splitlines()
    assert len(lines) == 1 + 7 and lines[-1].startswith("video01/00007.jpg,")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["model_dir"], saved["tasks"], saved["test_list"]) == (str(model_dir), ["expr"], str(plain))
    assert main(["predict", "--config", str(config), "-o", str(out), "modle=x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["affectmae predict: error: command line: unknown setting 'modle' for PredictConfig; known: "
                   "features, model_dir, out, overwrite, runs, tasks, test_list"]


def test_export_config_file_override_and_unknown_key(trained, tmp_path, capsys):
    import yaml

    root, feats, ann, runs, encoder = trained
    config = tmp_path / "export.yaml"
    config.write_text(yaml.safe_dump({"encoder": str(encoder), "runs": [str(runs["va"]), str(runs["expr"])],
                                      "align_margin": 1.1}))
    out = tmp_path / "model"
    assert main(["export", "--config", str(config), "-o", str(out), "align_margin=1.25"]) == 0
    capsys.readouterr()
    meta = json.loads((out / "affectmae_model.json").read_text())
    assert meta["align_margin"] == 1.25 and sorted(meta["heads"]) == ["expr", "va"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["align_margin"], saved["out"], len(saved["runs"])) == (1.25, str(out), 2)
    assert load_model_dir(out).tasks == ["va", "expr"]
    # a --run flag replaces the file's list
    assert main(["export", "--config", str(config), "-o", str(tmp_path / "m2"), "--run", str(runs["au"])]) == 0
    capsys.readouterr()
    assert list(json.loads((tmp_path / "m2" / "affectmae_model.json").read_text())["heads"]) == ["au"]
    assert main(["export", "--config", str(config), "-o", str(tmp_path / "m3"), "margin=1.2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "affectmae export: error: command line: unknown setting 'margin' for ExportConfig; known: align_margin, "
        "encoder, img_size, num_heads, out, overwrite, pooling, runs"]
