"""Temporal model and losses: receptive field, causality, padding, positional encoding, masking, merging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from affectmae.evaluation.metrics import ccc
from affectmae.models.temporal import (
    TemporalConfig,
    TemporalModel,
    load_temporal,
    person_reference,
    predict_sequence,
    save_temporal,
    sinusoidal_positions,
)
from affectmae.training.losses import ccc_loss, masked_bce, masked_cross_entropy, multitask_loss


def _cfg(**kw) -> TemporalConfig:
    base = dict(input_dim=6, tasks=["va", "expr", "au"], tcn_channels=[8, 8], transformer_heads=2,
                transformer_ff=16, head_hidden=8, dropout=0.0)
    return TemporalConfig(**{**base, **kw})


def test_ccc_loss_matches_metric_and_ignores_masked_frames():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 10, 2, generator=g) * 2 - 1
    true = torch.rand(2, 10, 2, generator=g) * 2 - 1
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    p, t = pred[mask].numpy(), true[mask].numpy()
    expected = 1 - (ccc(p[:, 0], t[:, 0]) + ccc(p[:, 1], t[:, 1])) / 2
    assert ccc_loss(pred, true, mask).item() == pytest.approx(expected, abs=1e-5)
    garbage = pred.clone().requires_grad_(True)
    with torch.no_grad():
        garbage[1, 6:] = 123.0
    loss = ccc_loss(garbage, true, mask)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    loss.backward()
    assert garbage.grad[1, 6:].abs().max().item() == 0.0
    assert ccc_loss(pred, true, torch.zeros(2, 10, dtype=torch.bool)).item() == 0.0


def test_cross_entropy_and_bce_masks():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 6, 8, generator=g)
    target = torch.tensor([[0, 3, -1, 7, 2, 5]])
    mask = torch.tensor([[True, True, False, True, True, False]])
    ref = F.cross_entropy(logits[0, [0, 1, 3, 4]], torch.tensor([0, 3, 7, 2]))
    assert masked_cross_entropy(logits, target[..., None], mask).item() == pytest.approx(ref.item(), abs=1e-6)
    au_logits = torch.randn(1, 3, 12, generator=g)
    au = torch.randint(0, 2, (1, 3, 12), generator=g).float()
    au[0, 1, 4] = -1  # one invalid unit
    au_mask = torch.tensor([[True, True, False]])
    keep = torch.zeros(1, 3, 12, dtype=torch.bool)
    keep[0, :2] = True
    keep[0, 1, 4] = False
    ref_bce = F.binary_cross_entropy_with_logits(au_logits[keep], au[keep])
    assert masked_bce(au_logits, au, au_mask).item() == pytest.approx(ref_bce.item(), abs=1e-6)
    total, parts = multitask_loss({"expr": logits, "au": au_logits}, {"expr": target, "au": au},
                                  {"expr": mask, "au": au_mask})
    assert total.item() == pytest.approx(ref.item() + ref_bce.item(), abs=1e-5)
    assert set(parts) == {"expr", "au"}


def _changed_frames(model, trials: int = 4) -> list[int]:
    """Frames whose outputs move when input frame 20 of 50 is perturbed (union over random trials, all heads)."""
    changed = torch.zeros(50, dtype=torch.bool)
    for t in range(trials):
        g = torch.Generator().manual_seed(t)
        x = torch.randn(1, 50, 6, generator=g)
        x2 = x.clone()
        x2[0, 20] += torch.randn(6, generator=g) * 3
        a, b = model(x), model(x2)
        for task in a:
            changed |= (a[task] - b[task]).abs().sum(-1)[0] > 0
    return torch.nonzero(changed).flatten().tolist()


@torch.no_grad()
def test_tcn_receptive_field_both_ways_and_causal():
    torch.manual_seed(0)
    # kernel 3, dilations 1 and 2, two convs per block: (1 + 1) + (2 + 2) = 6 frames each way
    model = TemporalModel(_cfg(use_transformer=False)).eval()
    assert _changed_frames(model) == list(range(14, 27))
    causal = TemporalModel(_cfg(use_transformer=False, causal=True)).eval()
    assert _changed_frames(causal) == list(range(20, 33))
    # the full causal model (TCN + masked attention) never looks ahead; the offline one looks everywhere
    assert _changed_frames(TemporalModel(_cfg(causal=True)).eval())[0] == 20
    assert _changed_frames(TemporalModel(_cfg()).eval()) == list(range(50))
    assert parametrize.is_parametrized(model.tcn.blocks[0].conv1)


def test_padding_does_not_change_unpadded_frames():
    torch.manual_seed(0)
    model = TemporalModel(_cfg()).eval()
    x = torch.randn(1, 30, 6)
    padded = torch.cat([x, 100 * torch.randn(1, 10, 6)], 1)
    unpadded = torch.zeros(1, 40, dtype=torch.bool)
    unpadded[0, :30] = True
    a = model(x)
    b = model(padded, unpadded=unpadded)
    for task in ("va", "expr", "au"):
        torch.testing.assert_close(a[task], b[task][:, :30], atol=1e-5, rtol=1e-5)
    assert a["va"].abs().max() <= 1.0


def test_sinusoidal_positions_values():
    table = sinusoidal_positions(4, 6)
    assert table.shape == (4, 6)
    assert table[1, 0].item() == pytest.approx(math.sin(1.0))
    assert table[1, 1].item() == pytest.approx(math.cos(1.0))
    assert table[3, 2].item() == pytest.approx(math.sin(3 / 10000 ** (2 / 6)), abs=1e-6)
    assert table[0].tolist() == [0, 1, 0, 1, 0, 1]


def test_missing_embedding_replaces_absent_frames():
    model = TemporalModel(_cfg(arch="linear", missing_embedding=True)).eval()
    with torch.no_grad():
        model.missing.fill_(0.5)
    x = torch.randn(1, 4, 6)
    present = torch.tensor([[True, False, True, False]])
    out = model(x, present)["au"]
    ref = model.heads["au"](torch.full((6,), 0.5))
    torch.testing.assert_close(out[0, 1], ref)
    torch.testing.assert_close(out[0, 0], model.heads["au"](x[0, 0]))


def test_predict_sequence_merges_windows_to_every_frame(tmp_path):
    torch.manual_seed(0)
    model = TemporalModel(_cfg(arch="linear"))
    feats = np.random.default_rng(0).normal(size=(130, 6)).astype(np.float16)
    out = predict_sequence(model, feats, None, window=64, stride=48)
    with torch.no_grad():
        direct = model(torch.from_numpy(feats.astype(np.float32))[None])
    np.testing.assert_allclose(out["va"], direct["va"][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["expr"], direct["expr"][0].softmax(-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(out["au"], direct["au"][0].sigmoid().numpy(), atol=1e-5)
    short = predict_sequence(model, feats[:10], None, window=64, stride=48)
    assert short["expr"].shape == (10, 8)
    save_temporal(tmp_path / "m.safetensors", model, {"tasks": ["va", "expr", "au"], "window": 64})
    loaded, meta = load_temporal(tmp_path / "m.safetensors")
    assert meta["window"] == 64 and loaded.cfg.arch == "linear"
    np.testing.assert_allclose(predict_sequence(loaded, feats, None, 64, 48)["au"], out["au"], atol=1e-6)


@pytest.mark.parametrize("person_norm", [False, True])
def test_predict_sequence_on_a_video_shorter_than_its_window_matches_an_unpadded_pass(person_norm):
    """10 frames through a window of 64: 54 frames of padding, which the TCN and attention must not see."""
    torch.manual_seed(0)
    model = TemporalModel(_cfg(input_dim=6, person_norm=person_norm)).eval()
    feats = np.random.default_rng(1).normal(size=(10, 6)).astype(np.float32)
    present = np.ones(10, dtype=bool)
    present[3] = False
    out = predict_sequence(model, feats, present, window=64, stride=48)
    ref = torch.from_numpy(person_reference(feats, present))[None] if person_norm else None
    with torch.no_grad():
        direct = model(torch.from_numpy(feats)[None], torch.from_numpy(present)[None], None, ref)
    np.testing.assert_allclose(out["va"], direct["va"][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["expr"], direct["expr"][0].softmax(-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(out["au"], direct["au"][0].sigmoid().numpy(), atol=1e-5)


def test_person_reference_is_the_mean_over_frames_with_a_face():
    feats = np.array([[1.0, 2.0], [3.0, 4.0], [100.0, -100.0], [5.0, 0.0]], np.float16)
    present = np.array([True, True, False, True])
    np.testing.assert_allclose(person_reference(feats, present), [3.0, 2.0])
    np.testing.assert_allclose(person_reference(feats, present, chunk=1), [3.0, 2.0])  # streamed row by row
    np.testing.assert_allclose(person_reference(feats, None), [27.25, -23.5])
    np.testing.assert_allclose(person_reference(feats, np.zeros(4, bool)), [27.25, -23.5])  # no face: all frames


def test_person_norm_feeds_the_feature_and_its_offset_from_the_video_mean(tmp_path):
    torch.manual_seed(0)
    model = TemporalModel(_cfg(arch="linear", person_norm=True)).eval()
    assert model.heads["va"].in_features == 12  # [x, x - reference]
    feats = np.random.default_rng(1).normal(2.0, 1.0, size=(90, 6)).astype(np.float32)
    present = np.ones(90, bool)
    present[10:20] = False
    ref = feats[present].mean(0)
    out = predict_sequence(model, feats, present, window=32, stride=16)
    with torch.no_grad():
        x = torch.from_numpy(feats)
        direct = model.heads["au"](torch.cat([x, x - torch.from_numpy(ref)], dim=1)).sigmoid()
    np.testing.assert_allclose(out["au"], direct.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="trained with person_norm: pass each video's person_reference"):
        model(x[None])
    # the flag travels with the checkpoint, so inference applies the same normalisation
    save_temporal(tmp_path / "m.safetensors", model, {"tasks": ["va", "expr", "au"], "window": 32})
    loaded, _ = load_temporal(tmp_path / "m.safetensors")
    assert loaded.cfg.person_norm
    np.testing.assert_allclose(predict_sequence(loaded, feats, present, 32, 16)["au"], out["au"], atol=1e-6)


def test_training_batches_carry_each_segments_video_reference(tmp_path):
    from affectmae.features.store import FeatureStore
    from affectmae.training.temporal_data import SegmentBatches, load_labelled_videos
    from temporal_helpers import make_feature_dataset

    feats_dir, ann_dir = make_feature_dataset(tmp_path, n_videos=3, lengths=(40, 60))
    store = FeatureStore(feats_dir)
    videos = load_labelled_videos(store, str(ann_dir), ["va"])
    batches = SegmentBatches(store, videos, ["va"], window=16, stride=16, batch_size=64)
    batch = batches.collate(batches.segments)
    assert batch.reference.shape == (len(batches.segments), 16)
    assert batch.unpadded.sum(1).tolist() == [seg.length for seg in batches.segments]  # False only on padding
    for j, seg in enumerate(batches.segments):
        rows, present = store.rows(videos[seg.video].video)
        expected = np.asarray(rows, np.float64)[present].mean(0)
        np.testing.assert_allclose(batch.reference[j].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_class_weighted_losses_match_torch_with_weights():
    from affectmae.tasks import TASKS
    from affectmae.training.losses import class_weights, masked_bce, masked_cross_entropy, multitask_loss

    torch.manual_seed(0)
    logits, target = torch.randn(2, 5, 8), torch.randint(0, 8, (2, 5, 1)).float()
    mask = torch.tensor([[True, True, False, True, True], [True, False, True, True, True]])
    w = class_weights(TASKS["expr"], target[mask].numpy())
    expected = F.cross_entropy(logits[mask], target[mask][:, 0].long(), weight=w)
    torch.testing.assert_close(masked_cross_entropy(logits, target, mask, w), expected)
    au_logits, au = torch.randn(2, 5, 12), (torch.rand(2, 5, 12) > 0.7).float()
    au[0, 1, 3] = -1  # an invalid unit is left out
    pw = class_weights(TASKS["au"], au[mask].numpy())
    valid = mask[..., None] & (au >= 0)
    per = F.binary_cross_entropy_with_logits(au_logits, au.clamp(min=0), pos_weight=pw, reduction="none")
    torch.testing.assert_close(masked_bce(au_logits, au, mask, pw), per[valid].mean())
    total, parts = multitask_loss({"expr": logits, "au": au_logits}, {"expr": target, "au": au},
                                  {"expr": mask, "au": mask}, label_weights={"expr": w, "au": pw})
    torch.testing.assert_close(total, expected + per[valid].mean())
    assert parts["expr"] == pytest.approx(float(expected))
