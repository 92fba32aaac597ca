"""`train causal=true`: a streaming temporal model trained, validated on its causal outputs, exported as one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from affectmae.cli import main
from affectmae.evaluation.metrics import evaluate
from affectmae.features.store import FeatureStore
from affectmae.models.temporal import causal_reference, load_temporal
from affectmae.training.temporal_data import SegmentBatches, load_labelled_videos, select_fold
from temporal_helpers import make_feature_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_feature_dataset(tmp_path_factory.mktemp("feat"), n_videos=5, lengths=(50, 90))


def test_segment_batches_give_each_frame_its_causal_reference(dataset):
    feats, ann = dataset
    store = FeatureStore(feats)
    videos = load_labelled_videos(store, str(ann), ["va"])
    batches = SegmentBatches(store, videos, ["va"], 32, 16, 4, causal_reference=True)
    segs = batches.segments[:4]
    batch = batches.collate(segs)
    assert tuple(batch.reference.shape) == (4, 32, 16)
    for j, seg in enumerate(segs):  # the running mean over the whole video, computed once from its start
        x, present = store.load(videos[seg.video].video)
        want = causal_reference(x, present)[seg.start:seg.stop]
        np.testing.assert_allclose(batch.reference[j, : seg.length].numpy(), want, rtol=1e-5, atol=1e-6)


def test_train_causal_true_validates_and_exports_a_streaming_model(dataset, tmp_path, capsys):
    feats, ann = dataset
    run = tmp_path / "run"
    assert main(["train", "--features", str(feats), "--annotations", str(ann), "--task", "va", "-o", str(run),
                 "--config", "temporal_tiny", "epochs=2", "causal=true"]) == 0
    model, meta = load_temporal(run / "best.safetensors")
    assert (model.cfg.causal, model.cfg.history, model.streaming, meta["window"]) == (True, 32, True, 32)
    # the validation score is that of the causal outputs, frame t from frames <= t: recomputed by hand
    store = FeatureStore(feats)
    videos = load_labelled_videos(store, str(ann), ["va"])
    _, val = select_fold(videos, 0, 5, 0)
    preds, trues, valid = [], [], []
    for lv in val:
        x, present = store.load(lv.video)
        out = []
        for t in range(len(x)):  # the ordinary forward over frames [0, t], its last frame
            ref = torch.from_numpy(causal_reference(x[: t + 1], present[: t + 1]))[None]
            with torch.no_grad():
                y = model(torch.from_numpy(x[: t + 1].astype(np.float32))[None], torch.from_numpy(present[: t + 1])[None],
                          None, ref)["va"][0, -1]
            out.append(y.numpy())
        preds.append(np.stack(out))
        trues.append(lv.labels["va"])
        valid.append(lv.valid["va"])
    score = evaluate("va", np.concatenate(preds), np.concatenate(trues), np.concatenate(valid))["score"]
    best = json.loads((run / "best.json").read_text())
    assert best["metrics"]["va"]["score"] == pytest.approx(score, abs=1e-4)

    from affectmae.models.vit import build_encoder, save_encoder

    encoder = tmp_path / "encoder.safetensors"
    save_encoder(build_encoder("tiny", img_size=32, embed_dim=16, depth=1, num_heads=2), encoder)
    capsys.readouterr()
    assert main(["export", "--encoder", str(encoder), "--run", str(run), "-o", str(tmp_path / "model")]) == 0
    assert json.loads((tmp_path / "model" / "affectmae_model.json").read_text())["causal"] is True
    from affectmae.inference.model import load_model_dir

    assert load_model_dir(tmp_path / "model").streaming
