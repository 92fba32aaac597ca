"""Person-centred fine-tuning (``person_center``): video-grouped batches, the centred head, validation, CLI."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import yaml

from affectmae.cli import main
from affectmae.errors import AffectMAEError
from affectmae.models.vit import build_encoder, save_encoder
from affectmae.synth.dataset import generate_affwild2
from affectmae.tasks import TASKS
from affectmae.training.finetune import FinetuneModel
from affectmae.training.finetune_center import center_by_video, collate_video_frames, predict_centred
from affectmae.training.finetune_sampler import VideoGroupedBatchSampler
from affectmae.training.metrics_log import read_metrics

# six videos of 30, 5, 12, 50, 3 and 20 frames: 120 frames, laid out video after video
SIZES = [30, 5, 12, 50, 3, 20]
VIDEOS = np.repeat(np.arange(len(SIZES)), SIZES)


def _groups(batch: list[int], per_video: int) -> list[list[int]]:
    return [batch[i:i + per_video] for i in range(0, len(batch), per_video)]


def test_grouped_batches_hold_distinct_videos_of_whole_groups():
    sampler = VideoGroupedBatchSampler(VIDEOS, batch_size=16, frames_per_video=4, seed=3)
    batches = list(sampler)
    assert sampler.steps_per_epoch == 8 and len(sampler) == 8 and len(batches) == 8  # ceil(120 / 16)
    per_step = Counter()
    for batch in batches:
        assert len(batch) == 16
        groups = _groups(batch, 4)
        owners = [set(VIDEOS[g].tolist()) for g in groups]
        assert all(len(o) == 1 for o in owners)  # each group: one video
        videos = [o.pop() for o in owners]
        assert len(set(videos)) == 4  # batch_size // frames_per_video different videos
        per_step.update(videos)
    # 30 and 50 frames need 8 and 13 groups of 4: capped at one per step, both are in every step
    assert per_step[0] == 8 and per_step[3] == 8 and sum(per_step.values()) == 32
    seen = {i for b in batches for i in b}
    assert set(np.flatnonzero(VIDEOS == 0).tolist()) <= seen  # 8 groups of 4 cover all 30 frames
    # a 3-frame video repeats frames to fill its group of 4
    short = [g for b in batches for g in _groups(b, 4) if VIDEOS[g[0]] == 4]
    assert short and all(sorted(set(g)) == [97, 98, 99] for g in short)  # frames 30 + 5 + 12 + 50 on


def test_grouped_batches_are_deterministic_per_seed_and_epoch():
    def epoch(seed: int, e: int) -> list[list[int]]:
        sampler = VideoGroupedBatchSampler(VIDEOS, 16, 4, seed=seed)
        sampler.set_epoch(e)
        return list(sampler)

    assert epoch(0, 1) == epoch(0, 1)
    assert epoch(0, 1) != epoch(0, 2)
    assert epoch(0, 1) != epoch(1, 1)
    resumed = VideoGroupedBatchSampler(VIDEOS, 16, 4, seed=0)
    resumed.set_epoch(1, start_step=5)
    assert list(resumed) == epoch(0, 1)[5:] and len(resumed) == 3


def test_two_ranks_get_disjoint_whole_groups():
    full = VideoGroupedBatchSampler(VIDEOS, 16, 4, seed=7)
    ranks = [VideoGroupedBatchSampler(VIDEOS, 16, 4, rank=r, world_size=2, seed=7) for r in range(2)]
    for step, (a, b, whole) in enumerate(zip(*ranks, full.epoch_batches(), strict=True)):
        assert len(a) == len(b) == 8, step
        assert a + b == whole
        va = {int(VIDEOS[g[0]]) for g in _groups(a, 4)}
        vb = {int(VIDEOS[g[0]]) for g in _groups(b, 4)}
        assert len(va) == len(vb) == 2 and not va & vb


def test_grouped_sampler_rejects_impossible_settings():
    with pytest.raises(AffectMAEError, match="batch_size 18 must be a multiple of frames_per_video 4"):
        VideoGroupedBatchSampler(VIDEOS, 18, 4)
    with pytest.raises(AffectMAEError, match="the 3 videos of a batch .* must be divisible by the 2 processes"):
        VideoGroupedBatchSampler(VIDEOS, 12, 4, world_size=2)
    with pytest.raises(AffectMAEError, match="6 training videos, fewer than the 8 a batch needs"):
        VideoGroupedBatchSampler(VIDEOS, 32, 4)


@pytest.fixture()
def model() -> FinetuneModel:
    torch.manual_seed(0)
    m = FinetuneModel(build_encoder("tiny", 32, depth=1), TASKS["expr"])
    torch.nn.init.normal_(m.head.weight, std=0.5)
    torch.nn.init.normal_(m.head.bias, std=0.5)
    return m.eval()


def test_centred_logits_equal_the_head_on_features_minus_their_video_mean(model):
    x, videos = torch.randn(6, 3, 32, 32), torch.tensor([5, 5, 2, 2, 2, 9])
    with torch.no_grad():
        logits = model(x, videos)
        f = model.encoder.forward_features(x)["pooled"]
    means = {v: f[videos == v].mean(0) for v in (5, 2, 9)}
    expected = model.head(torch.stack([f[i] - means[int(v)] for i, v in enumerate(videos)]))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[5], model.head.bias.detach())  # a lone frame centres to 0
    assert not torch.allclose(logits, model(x))


def test_centring_is_blind_to_a_per_video_offset_and_keeps_the_mean_in_the_graph(model):
    torch.manual_seed(1)
    f, videos = torch.randn(8, 192), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    shift = torch.randn(3, 192) * 10  # who the person is: a constant feature shift per video
    centred = center_by_video(f, videos)
    shifted = center_by_video(f + shift[videos], videos)
    torch.testing.assert_close(shifted, centred, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model.outputs(shifted), model.outputs(centred), atol=1e-4, rtol=1e-5)
        assert (model.outputs(f + shift[videos]) - model.outputs(f)).abs().max() > 1.0  # uncentred: it moves
    leaf = f.clone().requires_grad_(True)
    center_by_video(leaf, videos)[:, 0].sum().backward()
    assert torch.count_nonzero(leaf.grad) == 0  # each video's centred rows sum to 0: the mean is not detached


class _Frames(torch.utils.data.Dataset):
    """Ten images of three videos (4, 4, 2 frames) with frame_id, as AffWild2Frames has."""

    def __init__(self):
        torch.manual_seed(2)
        self.images, self.names = torch.randn(10, 3, 32, 32), ["b"] * 4 + ["a"] * 4 + ["c"] * 2

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return self.images[i], torch.tensor(i % 8)

    def frame_id(self, i: int) -> tuple[str, int]:
        return self.names[i], i


def test_validation_centres_on_the_mean_over_all_of_a_videos_frames(model):
    data = _Frames()
    outputs, labels = predict_centred(model, data, batch_size=3, device=torch.device("cpu"))
    with torch.no_grad():
        f = model.encoder.forward_features(data.images)["pooled"]
        means = torch.stack([f[:4].mean(0)] * 4 + [f[4:8].mean(0)] * 4 + [f[8:].mean(0)] * 2)
        expected = model.head(f - means)
    assert outputs.shape == (10, 8) and labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    np.testing.assert_allclose(outputs, expected.numpy(), atol=1e-5, rtol=1e-5)


def test_collate_puts_the_video_ids_before_the_labels():
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    batch, bad = collate_video_frames([(img, torch.ones(5), torch.tensor(3), 7), None, (img, torch.ones(5), torch.tensor(1), 2)])
    assert bad == 1 and len(batch) == 4 and isinstance(batch[0], list) and batch[1].shape == (2, 5)
    assert batch[2].tolist() == [7, 2] and batch[3].tolist() == [3, 1]
    batch, bad = collate_video_frames([(torch.zeros(3, 4, 4), torch.tensor(5), 0), (torch.zeros(3, 4, 4), torch.tensor(6), 1)])
    assert bad == 0 and batch[0].shape == (2, 3, 4, 4) and batch[1].tolist() == [0, 1] and batch[2].tolist() == [5, 6]
    assert collate_video_frames([None, None]) == (None, 2)


def test_cli_person_center_trains_and_records_the_setting(tmp_path, capsys):
    generate_affwild2(tmp_path / "aw2", videos=4, frames=24, faces=0, size=32)
    torch.manual_seed(0)
    save_encoder(build_encoder("tiny", 32, depth=1), tmp_path / "mae" / "encoder.safetensors", {"stage": "pretrain"})
    run = tmp_path / "ft"
    args = ["finetune", "--data", str(tmp_path / "aw2"), "--encoder", str(tmp_path / "mae"), "-o", str(run),
            "--config", "finetune_tiny", "batch_size=8", "frames_per_video=4", "tensorboard=false", "num_workers=0",
            "head_only_steps=0", "warmup_steps=1", "log_every_steps=1", "person_center=true"]
    assert main(args + ["max_steps=3"]) == 0
    assert (run / "encoder.safetensors").is_file() and (run / "head_expr.safetensors").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["person_center"] is True and config["frames_per_video"] == 4
    assert [s["global_step"] for s in read_metrics(run, "train")] == [1, 2, 3]
    assert 0.0 <= read_metrics(run, "epoch")[-1]["val_score"] <= 1.0
    capsys.readouterr()
    assert main([a for a in args if a != "person_center=true"] + ["max_steps=3", "--resume"]) == 2
    assert "incompatible config (person_center: saved True, now False)" in capsys.readouterr().err
