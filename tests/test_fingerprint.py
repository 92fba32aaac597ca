"""The encoder fingerprint: weights, input size, normalisation and pooling; how extract, train, export and predict
record and compare it; feature stores, runs and MODEL_DIRs of older versions (weights only)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affectmae.checkpoint import load_weights, save_weights
from affectmae.cli import main
from affectmae.errors import AffectMAEError
from affectmae.features.fingerprint import (
    compare_fingerprints,
    encoder_fingerprint,
    fingerprint_of,
    recorded_fingerprint,
    weights_sha256,
)
from affectmae.features.store import write_features_meta
from affectmae.models.vit import build_encoder, load_encoder, save_encoder
from affectmae.training.temporal import run_train
from temporal_helpers import make_feature_dataset

ARCH = dict(img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2)


def _encoder(path: Path, **arch) -> Path:
    torch.manual_seed(0)
    save_encoder(build_encoder("tiny", **{**ARCH, **arch}), path)
    return path


def _old_format(meta: dict) -> dict:
    """A record as versions before the input settings wrote it: encoder_sha256 = the weights' sha256 alone."""
    old = {k: v for k, v in meta.items() if k not in ("encoder_weights_sha256", "encoder_input")}
    old["encoder_sha256"] = meta["encoder_weights_sha256"]
    return old


def test_pooling_size_and_normalisation_each_change_the_fingerprint(tmp_path):
    path = _encoder(tmp_path / "enc.safetensors", pooling="cls")
    cls_, mean_ = load_encoder(path), load_encoder(path, pooling="mean")
    bigger = load_encoder(path, img_size=32)
    other_norm = load_encoder(_encoder(tmp_path / "norm.safetensors", pooling="cls", mean=[0.5] * 3, std=[0.5] * 3))
    assert weights_sha256(cls_) == weights_sha256(mean_) == weights_sha256(other_norm)  # the same tensors
    prints = [encoder_fingerprint(e) for e in (cls_, mean_, bigger, other_norm)]
    assert len(set(prints)) == 4
    assert encoder_fingerprint(load_encoder(path)) == prints[0]  # loading again changes nothing
    # the weights' sha256 keeps its definition (what older versions recorded as encoder_sha256)
    digest = hashlib.sha256()
    for name, t in sorted(cls_.state_dict().items()):
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode() + t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    assert weights_sha256(cls_) == digest.hexdigest()
    fp = fingerprint_of(mean_)
    assert fp.settings == {"img_size": 16, "pooling": "mean", "mean": pytest.approx([0.485, 0.456, 0.406]),
                           "std": pytest.approx([0.229, 0.224, 0.225])}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """An encoder; frames of one video; a run trained on features marked as that encoder's with cls pooling."""
    root = tmp_path_factory.mktemp("fingerprint")
    enc = _encoder(root / "enc.safetensors", pooling="cls")
    frames = root / "frames" / "cropped_aligned" / "video00"
    frames.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(frames / f"{k + 1:05d}.jpg")
    feats, ann = make_feature_dataset(root / "fd", n_videos=4, lengths=(40, 60), dim=24)
    meta = json.loads((feats / "features.json").read_text())
    meta.update(fingerprint_of(load_encoder(enc)).record())
    (feats / "features.json").write_text(json.dumps(meta))
    run_train("temporal_tiny", ["epochs=1", "tensorboard=false"], features=str(feats), annotations=str(ann),
              task="va", out=str(root / "run"))
    assert main(["export", "--encoder", str(enc), "--run", str(root / "run"), "-o", str(root / "model")]) == 0
    for pooling in ("cls", "mean"):
        assert main(["extract", "--encoder", str(enc), "--frames", str(root / "frames"), "-o",
                     str(root / f"feats_{pooling}"), f"pooling={pooling}"]) == 0
    return root


def _predict(w: Path, feats: Path, out: str) -> list[str]:
    return ["predict", "--features", str(feats), "--model", str(w / "model"), "-o", str(w / out)]


def test_extract_records_the_settings_and_predict_refuses_another_pooling(work, capsys):
    cls_meta = json.loads((work / "feats_cls" / "features.json").read_text())
    mean_meta = json.loads((work / "feats_mean" / "features.json").read_text())
    assert cls_meta["encoder_weights_sha256"] == mean_meta["encoder_weights_sha256"]
    assert (cls_meta["encoder_input"]["pooling"], mean_meta["encoder_input"]["pooling"]) == ("cls", "mean")
    assert cls_meta["encoder_sha256"] == encoder_fingerprint(load_encoder(work / "enc.safetensors"))
    assert main(_predict(work, work / "feats_cls", "pred_cls")) == 0
    capsys.readouterr()
    assert main(_predict(work, work / "feats_mean", "pred_mean")) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"affectmae predict: error: {work / 'feats_mean' / 'features.json'}: features of encoder "
        f"{(work / 'enc.safetensors').resolve()}?pooling=mean (sha256 {mean_meta['encoder_sha256'][:12]}), but "
        f"{work / 'model' / 'temporal_va.safetensors'} was trained on features of another encoder (sha256 "
        f"{cls_meta['encoder_sha256'][:12]}; the same weights, but pooling mean, not cls); extract with the "
        f"model's encoder"]


def test_export_refuses_the_encoder_with_another_pooling(work, capsys):
    capsys.readouterr()
    assert main(["export", "--encoder", str(work / "enc.safetensors"), "--run", str(work / "run"), "-o",
                 str(work / "model_mean"), "pooling=mean"]) == 2
    mean_sha = encoder_fingerprint(load_encoder(work / "enc.safetensors", pooling="mean"))
    cls_sha = encoder_fingerprint(load_encoder(work / "enc.safetensors"))
    assert capsys.readouterr().err.splitlines() == [
        f"affectmae export: error: {work / 'run' / 'best.safetensors'}: trained on features of another encoder "
        f"(sha256 {cls_sha[:12]}) than {work / 'enc.safetensors'} (sha256 {mean_sha[:12]}; the same weights, but "
        f"pooling mean, not cls); export the encoder the features were extracted with"]
    assert not (work / "model_mean").exists()


def test_feature_stores_of_older_versions_are_read_and_still_checked(work, tmp_path, capsys):
    """An older features.json (weights only) also holds the encoder's arch: its full fingerprint follows, so the
    store predicts as before and a store of the other pooling is still refused."""
    for pooling in ("cls", "mean"):
        old = Path(shutil.copytree(work / f"feats_{pooling}", tmp_path / f"old_{pooling}"))
        meta = json.loads((old / "features.json").read_text())
        (old / "features.json").write_text(json.dumps(_old_format(meta)))
        assert recorded_fingerprint(_old_format(meta)) == recorded_fingerprint(meta)
    assert main(_predict(work, tmp_path / "old_cls", "pred_old_cls")) == 0
    capsys.readouterr()
    assert main(_predict(work, tmp_path / "old_mean", "pred_old_mean")) == 2
    assert "the same weights, but pooling mean, not cls" in capsys.readouterr().err


def test_a_run_of_an_older_version_is_used_with_a_warning(work, tmp_path, caplog):
    """A head whose run recorded the weights alone cannot tell the pooling: predict and export go on, saying so."""
    model = Path(shutil.copytree(work / "model", tmp_path / "model"))
    head = model / "temporal_va.safetensors"
    tensors, meta = load_weights(head)
    meta["features"] = _old_format(meta["features"])
    save_weights(head, tensors, meta)
    argv = ["predict", "--features", str(work / "feats_mean"), "--model", str(model), "-o", str(tmp_path / "p")]
    with caplog.at_level("WARNING"):
        assert main(argv) == 0
    assert (f"{head} recorded the weights of its encoder only (an older affectmae), so pooling, input size and "
            f"normalisation cannot be compared; the weights agree (features {work / 'feats_mean'}, head {head})"
            in caplog.messages)
    other = _encoder(tmp_path / "other.safetensors", pooling="cls", depth=2)
    meta["features"]["encoder_sha256"] = weights_sha256(load_encoder(other))
    save_weights(head, tensors, meta)
    with pytest.raises(AffectMAEError, match="was trained on features of another encoder"):
        from affectmae.inference.predict import run_predict

        run_predict(None, [], features=str(work / "feats_mean"), model_dir=str(model), out=str(tmp_path / "q"))


def test_a_continued_extract_refuses_another_pooling_of_the_same_weights(work, tmp_path, caplog):
    folder = Path(shutil.copytree(work / "feats_cls", tmp_path / "feats"))
    cls_meta = json.loads((folder / "features.json").read_text())
    mean_meta = {**json.loads((work / "feats_mean" / "features.json").read_text()), "encoder": cls_meta["encoder"]}
    with pytest.raises(AffectMAEError, match=r"already holds features of another encoder .*sha256 "
                                             + cls_meta["encoder_sha256"][:12]):
        write_features_meta(folder, mean_meta)
    (folder / "features.json").write_text(json.dumps(_old_format(cls_meta)))  # older, but its arch tells
    with pytest.raises(AffectMAEError, match="already holds features of another encoder"):
        write_features_meta(folder, mean_meta)
    write_features_meta(folder, cls_meta)  # the same encoder continues; the record is brought up to date
    assert json.loads((folder / "features.json").read_text()) == cls_meta
    no_arch = {k: v for k, v in _old_format(cls_meta).items() if k != "encoder_meta"}
    (folder / "features.json").write_text(json.dumps(no_arch))
    with caplog.at_level("WARNING", logger="affectmae.features.store"):
        write_features_meta(folder, cls_meta)
    assert any("recorded the weights of its encoder only" in m for m in caplog.messages)
    assert compare_fingerprints(recorded_fingerprint(no_arch), recorded_fingerprint(mean_meta)) == "weights only"
