"""Checkpoints researchers already have: facebookresearch/mae training files with their args,
encoder-only and fine-tuned MAE files, timm files with config.json, ours; each computes timm's function with
the checkpoint's own pooling, heads and normalisation, at its size and at another input size."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from affectmae.checkpoint import save_weights
from affectmae.cli import main
from affectmae.errors import CheckpointError
from affectmae.features.store import FeatureStore
from affectmae.models.foreign import LOADABLE
from affectmae.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_frames
from affectmae.models.vit import build_encoder, load_encoder, save_encoder
from test_features import _write_dataset

POOL = {"cls": ("token", False), "mean": ("avg", False), "mae_global": ("avg", True)}


def _timm(width: int, heads: int, pooling: str, img: int = 32, patch: int = 8, depth: int = 1,
          classes: int = 0) -> VisionTransformer:
    pool, fc_norm = POOL[pooling]
    return VisionTransformer(img_size=img, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
                             num_classes=classes, global_pool=pool, fc_norm=fc_norm, qkv_bias=True).eval()


def _randomised(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = {k: torch.randn_like(v) * 0.05 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return state


def _timm_features(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _mae_args(**settings) -> argparse.Namespace:
    """The kind of argparse.Namespace facebookresearch/mae's main_pretrain / main_finetune save."""
    base = {"batch_size": 64, "epochs": 400, "accum_iter": 1, "input_size": 32, "weight_decay": 0.05, "lr": None,
            "blr": 1.5e-4, "min_lr": 0.0, "warmup_epochs": 40, "data_path": "/data/faces", "output_dir": "./out",
            "log_dir": "./out", "device": "cuda", "seed": 0, "resume": "", "start_epoch": 0, "num_workers": 10,
            "pin_mem": True, "world_size": 8, "local_rank": -1, "dist_on_itp": False, "dist_url": "env://",
            "distributed": True}
    return argparse.Namespace(**{**base, **settings})


def _save_like_mae_script(path, state: dict, args: argparse.Namespace) -> None:
    """misc.save_model of facebookresearch/mae: model, optimizer, epoch, scaler and args in one pickle."""
    params = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(params.parameters(), lr=1e-3, betas=(0.9, 0.95))
    params(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "epoch": 399,
                "scaler": torch.amp.GradScaler("cpu").state_dict(), "args": args}, path)


def _pretrain_state(width: int, heads: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """An MAE pretraining state dict: encoder (final norm, no head) + decoder keys + mask_token."""
    state = dict(_randomised(_timm(width, heads, "cls"), seed))
    state["mask_token"] = torch.randn(1, 1, 32)
    state["decoder_embed.weight"], state["decoder_embed.bias"] = torch.randn(32, width), torch.zeros(32)
    state["decoder_pos_embed"] = torch.zeros(1, 17, 32)
    state["decoder_pred.weight"] = torch.randn(192, 32)
    return state


# ----------------------------------------------------------------------------- 1. the reference's own files


def test_mae_pretraining_script_checkpoint_loads_with_its_args(tmp_path):
    state = _pretrain_state(768, 12)
    args = _mae_args(model="mae_vit_base_patch16", mask_ratio=0.75, norm_pix_loss=True)
    _save_like_mae_script(tmp_path / "checkpoint-399.pth", state, args)
    enc = load_encoder(tmp_path / "checkpoint-399.pth").eval()
    assert (enc.arch["embed_dim"], enc.arch["num_heads"], enc.arch["pooling"]) == (768, 12, "cls")
    assert enc.load_info == {"format": "facebookresearch/mae training script",
                             "num_heads": "args.model mae_vit_base_patch16",
                             "pooling": "class token (the reference MAE's linear probe, timm's ViT default)",
                             "normalisation": "ImageNet (the reference MAE's)"}
    reference = _timm(768, 12, "cls")
    reference.load_state_dict({k: v for k, v in state.items() if not k.startswith(("decoder_", "mask_token"))})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _rel(enc(x), _timm_features(reference, x)) <= 1e-5


def test_mae_finetuning_script_checkpoint_pools_globally(tmp_path):
    reference = _timm(768, 12, "mae_global", classes=8)
    state = _randomised(reference, 1)
    args = _mae_args(model="vit_base_patch16", global_pool=True, drop_path=0.1, nb_classes=8, mixup=0.8)
    _save_like_mae_script(tmp_path / "checkpoint-best.pth", state, args)
    enc = load_encoder(tmp_path / "checkpoint-best.pth").eval()
    assert enc.arch["pooling"] == "mae_global" and enc.load_info["pooling"] == "fc_norm in the checkpoint"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _rel(enc(x), _timm_features(reference, x)) <= 1e-5


def test_other_pickled_classes_are_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Trap:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    state = _pretrain_state(768, 12)
    _save_like_mae_script(tmp_path / "trap.pth", state, _mae_args(model="mae_vit_base_patch16", note=Trap()))
    expected = (f"{tmp_path / 'trap.pth'}: holds pickled Python objects (builtins.exec) that affectmae never "
                f"unpickles, since that could run code; {LOADABLE}; to use this file, convert its tensors to "
                f".safetensors (docs/training.md)")
    with pytest.raises(CheckpointError) as err:
        load_encoder(tmp_path / "trap.pth")
    assert str(err.value) == expected and not marker.exists()

    # the same through the CLI: exit 2, one line, none of torch's weights_only advice
    _write_dataset(tmp_path, {"a": 2})
    assert main(["extract", "--encoder", str(tmp_path / "trap.pth"), "--frames", str(tmp_path / "cropped_aligned"),
                 "--data", str(tmp_path), "-o", str(tmp_path / "feats")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "weights_only" not in lines[0] and not marker.exists()

    # the legacy (non-zip) format is refused by torch's own weights-only reader, with our message
    torch.save({"model": state, "args": Trap()}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as err:
        load_encoder(tmp_path / "legacy.pth")
    assert str(err.value) == f"{tmp_path / 'legacy.pth'}: cannot read as a PyTorch weights file; {LOADABLE}"
    assert not marker.exists()


# ----------------------------------------------------------------------------- 3. every format, timm's function


def _write_format(fmt: str, path_dir) -> tuple[str, VisionTransformer, dict]:
    """(checkpoint path, the timm model it holds, expected encoder settings) for one circulating format."""
    if fmt == "ours_before_pooling_was_recorded":
        reference = _timm(96, 1, "mean")
        state = _randomised(reference)
        arch = {"size": "custom", "img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 1, "num_heads": 1,
                "mlp_ratio": 4.0, "global_pool": "avg", "fc_norm": False}
        save_weights(path_dir / "encoder.safetensors", state, {"kind": "encoder", "arch": arch})
        return str(path_dir / "encoder.safetensors"), reference, {"pooling": "mean", "num_heads": 1}
    if fmt == "mae_model_dict":  # {'model': sd} with the decoder, as many repositories publish it
        reference = _timm(96, 1, "cls")
        state = {**_randomised(reference), "mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.ones(32, 96)}
        torch.save({"model": state}, path_dir / "mae.pth")
        return str(path_dir / "mae.pth"), reference, {"pooling": "cls", "num_heads": 1}
    if fmt == "mae_encoder_finetuned":  # encoder only, fc_norm (global pool), with its classifier
        reference = _timm(96, 1, "mae_global", classes=7)
        torch.save({"model": _randomised(reference)}, path_dir / "ft.pth")
        return str(path_dir / "ft.pth"), reference, {"pooling": "mae_global", "num_heads": 1}
    if fmt == "timm_pth":
        reference = _timm(96, 1, "cls", classes=5)
        torch.save(_randomised(reference), path_dir / "pytorch_model.bin")
        return str(path_dir / "pytorch_model.bin"), reference, {"pooling": "cls", "num_heads": 1}
    # timm / Hub safetensors with config.json: 12 heads at width 384, avg pooling, inputs normalised by 0.5/0.5
    reference = _timm(384, 12, "mean")
    save_file(_randomised(reference), str(path_dir / "model.safetensors"), metadata={"format": "pt"})
    (path_dir / "config.json").write_text(json.dumps({
        "architecture": "vit_custom_patch8", "num_classes": 0, "global_pool": "avg", "model_args": {"num_heads": 12},
        "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_size": [3, 32, 32]}}))
    return str(path_dir / "model.safetensors"), reference, {"pooling": "mean", "num_heads": 12, "mean": [0.5] * 3}


FORMATS = ["ours_before_pooling_was_recorded", "mae_model_dict", "mae_encoder_finetuned", "timm_pth", "timm_hub"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("img_size", [None, 16])
def test_every_format_computes_timms_function(tmp_path, fmt, img_size):
    path, reference, expected = _write_format(fmt, tmp_path)
    enc = load_encoder(path, img_size=img_size).eval()
    assert {k: enc.arch[k] for k in expected} == expected
    size = img_size or 32
    if img_size:  # timm's own model at the new size, its weights through timm's own filter
        resized = _timm(reference.embed_dim, expected["num_heads"], enc.arch["pooling"], img=size,
                        classes=reference.num_classes)
        resized.load_state_dict(checkpoint_filter_fn(reference.state_dict(), resized))
        reference = resized
        assert enc.pos_embed.shape == (1, 1 + (size // 8) ** 2, reference.embed_dim)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert _rel(enc(x), _timm_features(reference, x)) <= 1e-5


def test_heads_come_from_the_checkpoint_or_the_setting(tmp_path, caplog):
    reference = _timm(384, 12, "cls")
    state = _randomised(reference)
    state["blocks.0.attn.qkv.weight"] *= 40  # peaked attention, so that the head count shows in the output
    reference.load_state_dict(state)
    _save_like_mae_script(tmp_path / "fork.pth", state, _mae_args(model="vit_small_patch16", global_pool=False))
    guessed = load_encoder(tmp_path / "fork.pth").eval()  # a fork's name: its head count is not known
    assert guessed.arch["num_heads"] == 6
    assert "6 attention heads assumed (timm's count for width 384); set num_heads if the model used another" in caplog.text
    told = load_encoder(tmp_path / "fork.pth", num_heads=12).eval()
    assert told.arch["num_heads"] == 12 and told.load_info["num_heads"] == "set by num_heads"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _rel(told(x), _timm_features(reference, x)) <= 1e-5
        assert _rel(guessed(x), _timm_features(reference, x)) > 1e-2  # 6 heads: another function
    save_encoder(told, tmp_path / "encoder.safetensors")
    with pytest.raises(CheckpointError, match=r"trained with 12 attention heads, not num_heads=6$"):
        load_encoder(tmp_path / "encoder.safetensors", num_heads=6)


def test_pooling_is_a_recorded_option(tmp_path):
    state = _pretrain_state(96, 1)
    torch.save({"model": state}, tmp_path / "mae.pth")
    enc = load_encoder(tmp_path / "mae.pth", pooling="mae_global").eval()
    reference = _timm(96, 1, "mae_global")  # the reference fine-tuning's start: fc_norm new, final norm gone
    reference.load_state_dict({**{k: v for k, v in state.items() if k.startswith(("cls_token", "pos_embed",
                                                                                   "patch_embed", "blocks"))},
                               "fc_norm.weight": torch.ones(96), "fc_norm.bias": torch.zeros(96)})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _rel(enc(x), _timm_features(reference, x)) <= 1e-5
        out = load_encoder(tmp_path / "mae.pth", pooling="mean").eval().forward_features(x)
        torch.testing.assert_close(out["pooled"], out["patch"].mean(1), rtol=0, atol=0)
    save_encoder(enc, tmp_path / "encoder.safetensors")
    again = load_encoder(tmp_path / "encoder.safetensors")
    assert again.arch["pooling"] == "mae_global" and again.arch["fc_norm"] is True

    _write_format("mae_encoder_finetuned", tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_encoder(tmp_path / "ft.pth", pooling="cls")
    assert str(err.value) == (f"{tmp_path / 'ft.pth'}: pooling=cls needs the final norm, but this encoder was trained "
                              f"with global pooling (fc_norm, no final norm); use pooling=mae_global")
    with pytest.raises(CheckpointError, match="unknown pooling 'max'; choose one of cls, mean, mae_global"):
        load_encoder(tmp_path / "ft.pth", pooling="max")


def test_our_encoders_keep_their_pooling_and_numbers():
    torch.manual_seed(0)
    enc = build_encoder("tiny", 32, depth=1).eval()
    assert (enc.arch["pooling"], enc.arch["mean"], enc.arch["std"]) == ("mean", list(IMAGENET_MEAN), list(IMAGENET_STD))
    out = enc.forward_features(torch.randn(2, 3, 32, 32))
    assert torch.equal(out["pooled"], out["patch"].mean(1))


def test_normalisation_follows_the_checkpoint_through_extract(tmp_path):
    path, _, _ = _write_format("timm_hub", tmp_path)
    _write_dataset(tmp_path, {"a": 3})
    assert main(["extract", "--encoder", path, "--frames", str(tmp_path / "cropped_aligned"), "--data",
                 str(tmp_path), "-o", str(tmp_path / "feats"), "img_size=16"]) == 0
    meta = json.loads((tmp_path / "feats" / "features.json").read_text())
    assert meta["img_size"] == 16 and meta["encoder"].endswith("model.safetensors?img_size=16")
    assert meta["encoder_meta"]["arch"]["mean"] == [0.5] * 3
    assert meta["encoder_meta"]["loaded_from"]["normalisation"] == "config.json pretrained_cfg"
    feats, _ = FeatureStore(tmp_path / "feats").load("a", mmap=False)
    frame = np.array(Image.open(tmp_path / "cropped_aligned" / "a" / "00001.jpg").convert("RGB"))[None]
    enc = load_encoder(path, img_size=16).eval()
    with torch.no_grad():
        own = enc(preprocess_frames(frame, 16, (0.5,) * 3, (0.5,) * 3))[0].numpy()
        imagenet = enc(preprocess_frames(frame, 16))[0].numpy()
    np.testing.assert_allclose(feats[0].astype(np.float32), own, rtol=2e-3, atol=2e-3)  # float16 storage
    assert np.abs(feats[0].astype(np.float32) - imagenet).max() > 0.05
