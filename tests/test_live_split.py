"""The encoder split between live's two stages: features and rows bit-identical whatever the number of blocks
stage 1 runs, the automatic choice of that number, and the setting's errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from affectmae.cli import main
from affectmae.errors import AffectMAEError
from affectmae.synth.video import make_synthetic_video

pytest.importorskip("yuface")

N, FPS, DEPTH = 36, 25, 12
TASKS = ["va", "expr", "au"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """test_live.py's clip (two faces, a cut at 24, no face in 10-13) and a streaming model whose encoder has
    12 blocks, as ViT-S has."""
    from affectmae.models.temporal import TemporalConfig, TemporalModel, save_temporal
    from affectmae.models.vit import build_encoder, save_encoder

    root = tmp_path_factory.mktemp("split")
    video = make_synthetic_video(root / "two.mp4", n_frames=N, n_faces=2, size=(320, 180), fps=FPS, seed=2, cut_at=24,
                                 no_face=(10, 14)).path
    model = root / "model"
    model.mkdir()
    torch.manual_seed(0)
    save_encoder(build_encoder("tiny", img_size=32, embed_dim=48, depth=DEPTH, num_heads=2), model / "encoder.safetensors")
    cfg = TemporalConfig(input_dim=48, tasks=TASKS, tcn_channels=[16, 16], transformer_layers=2, transformer_heads=2,
                         transformer_ff=32, head_hidden=16, dropout=0.0, causal=True, history=6, person_norm=True)
    save_temporal(model / "temporal.safetensors", TemporalModel(cfg), {"tasks": TASKS, "window": 6, "stride": 3})
    (model / "affectmae_model.json").write_text(json.dumps({
        "format_version": 1, "affectmae_version": "test", "encoder": "encoder.safetensors",
        "heads": dict.fromkeys(TASKS, "temporal.safetensors")}))
    return root, model, video


def test_features_do_not_depend_on_the_split(work):
    from affectmae.inference.encoder_split import EncoderSplit
    from affectmae.inference.pipeline import Analyzer

    _, model, _ = work
    crops = list(np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8))
    with Analyzer(model) as analyzer:
        enc = analyzer._encoder
        with torch.inference_mode():
            x = enc.preprocess(np.stack(crops), enc.img_size, *enc.normalisation)
            whole = enc.encoder.forward_features(x)["pooled"].to(torch.float16).float().numpy()
        for k in range(DEPTH + 1):
            split = EncoderSplit(enc, str(k))
            tokens = split.head(crops, split.choose(0.0, len(crops)))
            assert tokens.shape == (3, 1 + 4, 48)  # class token and 2x2 patches of 16 px at 32 px
            feats = split.tail(tokens, k)
            assert feats.shape == (3, 48) and np.array_equal(feats, whole), k
            assert split.counts == {k: 1}


def test_rows_do_not_depend_on_the_split(work):
    """`live --no-drop --encoder-split k` writes analyze --causal's table byte for byte for k = 0, 3, 12."""
    root, model, video = work
    reference = root / "causal" / "two.csv"
    assert main(["analyze", str(video), "--causal", "--model", str(model), "-o", str(root / "causal"), "--no-plots"]) == 0
    for k in (0, 3, DEPTH):
        out, summary = root / f"live{k}.csv", root / f"live{k}.json"
        assert main(["live", str(video), "--model", str(model), "--no-drop", "--encoder-split", str(k), "-o", str(out),
                     "--summary", str(summary)]) == 0
        assert out.read_bytes() == reference.read_bytes(), k
        split = json.loads(summary.read_text())["encoder_split"]
        assert split["setting"] == str(k) and split["depth"] == DEPTH
        assert split["k_frames"] == {str(k): 32} and split["k_mean"] == k  # the 32 frames with faces


def test_auto_balances_the_stages_and_gives_the_same_rows(work):
    from affectmae.inference.pipeline import Analyzer

    _, model, video = work
    with Analyzer(model) as analyzer:
        fixed = list(analyzer.stream(video, drop=False, encoder_split=5))
        live = analyzer.stream(video, drop=False)
        rows = list(live)
        summary = live.summary()["encoder_split"]
    pd.testing.assert_frame_equal(pd.DataFrame(rows), pd.DataFrame(fixed), check_exact=True)
    assert summary["setting"] == "auto" and sum(summary["k_frames"].values()) == 32
    assert summary["block_ms"] > 0 and 0 <= summary["k_mean"] <= DEPTH


def test_the_automatic_choice():
    from affectmae.inference.encoder_split import EncoderSplit

    class Crops:
        encoder = torch.nn.Module()

    Crops.encoder.blocks = torch.nn.ModuleList(torch.nn.Identity() for _ in range(DEPTH))
    Crops.encoder.forward_tokens = lambda x: x
    split = EncoderSplit(Crops, "auto")
    assert split.choose(0.017, 1) == 0  # nothing measured yet: stage 2 runs every block
    split.block_seconds, split.rest_seconds = 0.003, 0.005
    # stage 1 at 17 ms + k blocks against stage 2's 5 ms + (12 - k) blocks of 3 ms: k = 4 (29 ms each)
    assert split.choose(0.017, 1) == 4
    assert split.choose(0.030, 1) == 2  # a full-frame detection: fewer blocks in stage 1
    assert split.choose(0.017, 2) == 5  # two faces: blocks cost twice as much
    assert split.choose(0.060, 1) == 0 and split.choose(0.0, 1) == 7
    split.rest_seconds = 0.2
    assert split.choose(0.0, 1) == DEPTH
    assert split.counts == {0: 2, 4: 1, 2: 1, 5: 1, 7: 1, DEPTH: 1}
    split._tail_blocks = 0.024
    split.stage_two_done(0.034)  # stage 2's rest is its busy time without its blocks: 10 ms
    assert split.rest_seconds == pytest.approx(0.2 + 0.1 * (0.010 - 0.2))
    with pytest.raises(AffectMAEError, match=r"^encoder_split=13: the encoder has 12 blocks \(0-12, or auto\)$"):
        EncoderSplit(Crops, 13)
    with pytest.raises(AffectMAEError, match=r"^encoder_split must be auto or a number of blocks, got 'half'$"):
        EncoderSplit(Crops, "half")


def test_an_encoder_without_blocks_runs_whole_in_stage_two():
    from affectmae.inference.crop_encoder import CropEncoder
    from affectmae.inference.encoder_split import EncoderSplit
    from affectmae.models.baseline_encoders import PixelEncoder

    enc = CropEncoder(PixelEncoder(), torch.device("cpu"), 4, {"encode": 0.0})
    split = EncoderSplit(enc, "auto")
    crops = list(np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8))
    assert split.depth == 0 and split.choose(0.01, 2) == 0
    feats = split.tail(split.head(crops, 0), 0)
    with torch.inference_mode():
        whole = enc.encoder(enc.preprocess(np.stack(crops), enc.img_size, *enc.normalisation))
    assert feats.shape == (2, 576) and np.array_equal(feats, whole.to(torch.float16).float().numpy())
    with pytest.raises(AffectMAEError, match=r"^encoder_split=1: the encoder has 0 blocks"):
        EncoderSplit(enc, "1")


def test_detection_size_defaults_to_320_for_the_causal_loop_only():
    from affectmae.inference.pipeline import AnalyzeConfig, detection_size

    assert detection_size(AnalyzeConfig()) == 960
    assert detection_size(AnalyzeConfig(causal=True)) == 320
    assert detection_size(AnalyzeConfig(causal=True, detect_max_side=640)) == 640
    assert detection_size(AnalyzeConfig(detect_max_side=480)) == 480
