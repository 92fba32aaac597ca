"""The reference MAE's recipe where the project follows it: input size recorded from extract to
MODEL_DIR, the encoder's normalisation in analyze, the reference initialisation, timm's parameter groups and
checkpoint filter, and configs that say what the paper did and did not fix."""

from __future__ import annotations

import fnmatch
import json
import math
from importlib import resources

import numpy as np
import pytest
import torch
import yaml

from affectmae.checkpoint import read_metadata
from affectmae.cli import main
from affectmae.features.fingerprint import fingerprint_of
from affectmae.inference.crop_encoder import CropEncoder
from affectmae.inference.model import load_model_dir
from affectmae.models.mae import MaskedAutoencoder
from affectmae.models.preprocess import preprocess_frames
from affectmae.models.temporal import TemporalConfig, TemporalModel
from affectmae.models.vit import build_encoder, load_encoder, save_encoder, sincos_pos_embed_2d
from affectmae.synth.dataset import generate_affwild2
from affectmae.tasks import get_task
from affectmae.training.finetune import FinetuneConfig, FinetuneModel, layer_decay_groups
from affectmae.training.finetune_data import frame_sets
from affectmae.training.optim import param_groups_weight_decay
from affectmae.training.pretrain import PretrainConfig, build_mae
from affectmae.training.temporal import TrainConfig, run_train
from temporal_helpers import make_feature_dataset
from test_checkpoints_reference import _pretrain_state, _randomised, _timm

# ----------------------------------------------------------------------------- 2. input size, end to end


def test_input_size_is_resampled_once_and_recorded_in_model_dir(tmp_path):
    """A 32 px reference checkpoint exported for 16 px features: MODEL_DIR holds the 16 px encoder."""
    torch.save({"model": _randomised(_timm(24, 1, "cls"))}, tmp_path / "mae32.pth")
    at16 = load_encoder(tmp_path / "mae32.pth", img_size=16).eval()
    feats, ann = make_feature_dataset(tmp_path / "fd", n_videos=4, lengths=(40, 60), dim=24)
    meta = json.loads((feats / "features.json").read_text())
    meta.update(fingerprint_of(at16).record())  # as `extract ... img_size=16` records it
    (feats / "features.json").write_text(json.dumps(meta))
    run_train("temporal_tiny", ["epochs=1", "tensorboard=false"], features=str(feats), annotations=str(ann),
              task="va", out=str(tmp_path / "run"))
    assert main(["export", "--encoder", str(tmp_path / "mae32.pth"), "--run", str(tmp_path / "run"), "-o",
                 str(tmp_path / "model"), "img_size=16"]) == 0
    saved = read_metadata(tmp_path / "model" / "encoder.safetensors")
    assert saved["arch"]["img_size"] == 16 and saved["arch"]["pooling"] == "cls"
    assert saved["loaded_from"]["img_size"] == "position embedding resampled from 32 px"
    model = load_model_dir(tmp_path / "model")
    assert model.img_size == 16 and model.encoder.pos_embed.shape == (1, 5, 24)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.encoder(x), at16(x))  # analyze runs the encoder the features came from


def test_analyze_normalises_crops_like_the_encoder(tmp_path):
    enc = build_encoder("tiny", 16, patch_size=8, embed_dim=24, depth=1, num_heads=2, mean=[0.5] * 3,
                        std=[0.5] * 3).eval()
    save_encoder(enc, tmp_path / "encoder.safetensors")
    loaded = load_encoder(tmp_path / "encoder.safetensors")
    assert loaded.arch["mean"] == [0.5] * 3
    crops = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    encoder = CropEncoder(loaded, torch.device("cpu"), 2, {"encode": 0.0})
    for crop in crops:
        encoder.add(crop)
    with torch.no_grad():
        expected = loaded(preprocess_frames(crops, 16, (0.5,) * 3, (0.5,) * 3)).numpy()
    np.testing.assert_allclose(encoder.features().astype(np.float32), expected, rtol=1e-3, atol=1e-3)


def test_finetune_takes_the_encoders_pooling_and_normalisation(tmp_path):
    generate_affwild2(tmp_path / "aw2", videos=2, frames=12, faces=0, size=32)
    torch.manual_seed(0)
    state = _pretrain_state(96, 1)  # a reference MAE pretraining file, inputs normalised by 0.5 / 0.5
    (tmp_path / "mae").mkdir()
    torch.save({"model": state}, tmp_path / "mae" / "mae.pth")
    (tmp_path / "mae" / "config.json").write_text(json.dumps({"pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    cfg = FinetuneConfig(annotations=str(tmp_path / "aw2"), encoder=str(tmp_path / "mae" / "mae.pth"))
    _, _, val_set = frame_sets(cfg, get_task("expr"), 32, ((0.5,) * 3, (0.5,) * 3))
    normalize = val_set.dataset.transform.transforms[-1]  # the validation frames' last step
    assert (list(normalize.mean), list(normalize.std)) == ([0.5] * 3, [0.5] * 3)
    assert main(["finetune", "--data", str(tmp_path / "aw2"), "--encoder", str(tmp_path / "mae" / "mae.pth"), "-o",
                 str(tmp_path / "ft"), "--config", "finetune_tiny", "max_steps=1", "head_only_steps=0",
                 "warmup_steps=0", "batch_size=4", "tensorboard=false", "pooling=mae_global"]) == 0
    arch = read_metadata(tmp_path / "ft" / "encoder.safetensors")["arch"]
    assert (arch["pooling"], arch["fc_norm"], arch["mean"]) == ("mae_global", True, [0.5] * 3)


# ----------------------------------------------------------------------------- 4. the reference initialisation


def _check_xavier(weight: torch.Tensor, fan_in: int, fan_out: int, name: str) -> None:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    w = weight.detach().flatten()
    assert w.abs().max() <= bound * (1 + 1e-6), name
    if w.numel() >= 4096:  # uniform on [-bound, bound]: std bound / sqrt(3), reaching the bound
        assert abs(float(w.std()) / (bound / math.sqrt(3)) - 1) < 0.05, name
        assert w.abs().max() > 0.98 * bound, name


def test_pretraining_from_scratch_initialises_like_the_reference_mae():
    torch.manual_seed(0)
    cfg = PretrainConfig(model_size="tiny", depth=2, img_size=32, decoder_dim=64, decoder_depth=1, decoder_heads=2)
    mae = build_mae(cfg)
    enc = mae.encoder
    torch.testing.assert_close(enc.pos_embed.data, sincos_pos_embed_2d(192, 2), rtol=0, atol=0)
    torch.testing.assert_close(mae.decoder_pos_embed.data, sincos_pos_embed_2d(64, 2), rtol=0, atol=0)
    proj = enc.patch_embed.proj.weight  # (192, 3, 16, 16) as a linear layer of 768 inputs
    _check_xavier(proj, 3 * 16 * 16, 192, "patch_embed")
    assert proj.abs().max() > 5 * math.sqrt(6.0 / (3 * 16 * 16 + 192 * 16 * 16))  # not xavier on the 4-D conv
    for name, module in mae.named_modules():
        if isinstance(module, torch.nn.Linear):
            _check_xavier(module.weight, module.in_features, module.out_features, name)
            assert torch.count_nonzero(module.bias) == 0, name
        elif isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.count_nonzero(module.bias) == 0, name
    for token, count in ((enc.cls_token.detach(), 192), (mae.mask_token.detach(), 64)):
        assert token.numel() == count and 0.014 < float(token.std()) < 0.026 and abs(float(token.mean())) < 0.006


def test_a_given_encoder_keeps_its_weights(tmp_path):
    torch.manual_seed(1)
    enc = build_encoder("tiny", 32, depth=2)
    save_encoder(enc, tmp_path / "encoder.safetensors")
    cfg = PretrainConfig(model_size="tiny", depth=2, img_size=32, decoder_dim=64, decoder_depth=1, decoder_heads=2,
                         init_encoder=str(tmp_path / "encoder.safetensors"))
    mae = build_mae(cfg)
    state = mae.encoder.state_dict()
    assert state.keys() == enc.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in enc.state_dict().items())


# ----------------------------------------------------------------------------- 5. timm where it does the job


def _groups_before(model: torch.nn.Module, weight_decay: float, no_decay_names=()) -> list[list[int]]:
    """The split this project made itself before timm's helper: ids of (no decay, decay) parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            skip = param.ndim <= 1 or name.endswith(".bias") or any(n in name for n in no_decay_names)
            (no_decay if skip else decay).append(id(param))
    return [no_decay, decay]


def _layer_groups_before(model: FinetuneModel, weight_decay: float, layer_decay: float) -> list[tuple]:
    depth, groups = len(model.encoder.blocks), {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        head = not name.startswith("encoder.")
        layer = depth + 1 if head else model.encoder.layer_id(name[len("encoder."):])
        no_decay = param.ndim <= 1 or name.endswith((".bias", "pos_embed", "cls_token"))
        group = groups.setdefault((layer, no_decay), ([], 0.0 if no_decay else weight_decay,
                                                      layer_decay ** (depth + 1 - layer)))
        group[0].append(id(param))
    return [groups[k] for k in sorted(groups)]


@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_weight_decay_groups_are_timms_and_unchanged(weight_decay):
    torch.manual_seed(0)
    mae = MaskedAutoencoder(build_encoder("tiny", 32, depth=2), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    temporal = TemporalModel(TemporalConfig(input_dim=16, tcn_channels=[8], transformer_heads=2, transformer_ff=16,
                                            head_hidden=8, tasks=["va"]))
    for model, names in ((mae, ("pos_embed", "cls_token", "mask_token")), (temporal, ())):
        groups = param_groups_weight_decay(model, weight_decay, no_decay_names=names)
        assert [[id(p) for p in g["params"]] for g in groups] == _groups_before(model, weight_decay, names)
        assert [(g["weight_decay"], g["lr_scale"]) for g in groups] == [(0.0, 1.0), (weight_decay, 1.0)]


@pytest.mark.parametrize("pooling,layer_decay,freeze", [("mean", 0.65, False), ("mae_global", 1.0, False),
                                                          ("cls", 0.75, True)])
def test_layer_decay_groups_are_timms_and_unchanged(pooling, layer_decay, freeze):
    model = FinetuneModel(build_encoder("tiny", 32, depth=3, pooling=pooling), get_task("expr"))
    if freeze:
        model.encoder.requires_grad_(False)
    groups = layer_decay_groups(model, 0.05, layer_decay)
    got = [([id(p) for p in g["params"]], g["weight_decay"], g["lr_scale"]) for g in groups]
    assert got == _layer_groups_before(model, 0.05, layer_decay)
    head = {id(model.head.weight), id(model.head.bias)}
    assert [g["head"] for g in groups] == [any(id(p) in head for p in g["params"]) for g in groups]


def test_linear_patch_embedding_files_load_through_timms_filter(tmp_path):
    """Old timm/MAE files with a (D, 3*p*p) patch projection are reshaped by timm's checkpoint filter."""
    reference = _timm(24, 1, "cls")
    state = _randomised(reference)
    old = dict(state, **{"patch_embed.proj.weight": state["patch_embed.proj.weight"].reshape(24, -1)})
    torch.save({"model": {**old, "mask_token": torch.zeros(1, 1, 8)}}, tmp_path / "linear.pth")
    enc = load_encoder(tmp_path / "linear.pth").eval()
    assert enc.arch["patch_size"] == 8 and enc.patch_embed.proj.weight.shape == (24, 3, 8, 8)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), reference.forward_head(reference.forward_features(x), pre_logits=True),
                                   rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- 6. what the paper fixed


def _config(name: str) -> tuple[dict, str]:
    text = resources.files("affectmae.configs").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text), text


def test_one_default_for_temporal_epochs():
    assert TrainConfig().epochs == _config("temporal_paper")[0]["epochs"] == 30


def test_configs_say_what_the_paper_did_not_fix():
    values, text = _config("pretrain_paper")
    assert values["img_size"] == 112 and values["norm_pix_loss"] is True
    assert "The paper gives no input size: 112 px is this project's choice" in text
    assert "img_size: 112  # this project's choice (see above), not the paper's" in text
    assert "norm_pix_loss: true  # from the reference MAE, not the paper" in text
    assert "the number of epochs; these are ours" in _config("temporal_paper")[1]
    for name in ("pretrain_paper", "finetune_paper", "temporal_paper", "pretrain_tiny", "finetune_tiny"):
        lines = [line for line in _config(name)[1].splitlines() if "112" in line and "paper" in line]
        assert all("not the paper" in line or "no input size" in line or "not given in" in line
                   or "112 px is this project's" in line or "gives no input size" in line for line in lines), name


def test_training_doc_lists_public_face_maes_and_ships_none():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    assert "| name | data | size | where published | command |" in doc
    for repo in ("github.com/MSA-LMC/MAE-SFER", "github.com/AIM3-RUC/ABAW4", "github.com/JackYFL/EMMA_CoTEX_ABAW4"):
        assert repo in doc
    assert "None is shipped with affectmae, and none has been tested here with its real weights" in doc
    assert not any(fnmatch.fnmatch(p.name, "*.pth") for p in (Path(__file__).parents[1] / "src").rglob("*"))
