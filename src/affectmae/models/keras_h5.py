"""Keras 2 HDF5 model files read into an equivalent torch module, without TensorFlow.

A file written by Keras 2's ``model.save("m.hdf5")`` holds the architecture as a JSON attribute
``model_config`` (a functional ``Model``: layers, each with ``inbound_nodes`` naming its inputs) and the
weights in ``model_weights/<layer>/``, listed in order by that group's ``weight_names`` attribute.

Only the layer types of small Xception-style CNNs are read (:data:`SUPPORTED_LAYERS`); any other type, or an
option these modules do not implement (dilation, channels_first, ...), is a :class:`CheckpointError` naming
the layer. Layout mapping:

- Keras tensors are NHWC; :class:`KerasGraph` runs NCHW: ``x: (B, C, H, W)``.
- Conv2D kernels are ``(kh, kw, in, out)`` (HWIO) -> torch ``(out, in, kh, kw)``.
- SeparableConv2D: depthwise kernel ``(kh, kw, in, m)`` -> ``(in * m, 1, kh, kw)`` with ``groups=in`` (output
  channel ``c * m + j``, TensorFlow's order), then the pointwise ``(1, 1, in * m, out)`` kernel and the bias.
- ``padding="same"`` is TensorFlow's: ``total = max((ceil(n / s) - 1) * s + k - n, 0)`` per axis, the odd pixel
  at the bottom/right (zeros for convolutions, ignored, i.e. -inf, for max pooling).
- BatchNormalization (inference): ``gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affectmae.errors import CheckpointError

SUPPORTED_LAYERS = ("InputLayer", "Conv2D", "SeparableConv2D", "BatchNormalization", "Activation", "MaxPooling2D",
                    "Add", "GlobalAveragePooling2D")
ACTIVATIONS = {"linear": lambda x: x, "relu": F.relu, "softmax": lambda x: F.softmax(x, dim=1)}  # dim 1: channels


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``"same"`` padding of one axis: (before, after)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], value: float) -> torch.Tensor:
    top, bottom = same_padding(x.shape[2], kernel[0], stride[0])
    left, right = same_padding(x.shape[3], kernel[1], stride[1])
    return F.pad(x, (left, right, top, bottom), value=value)


class KerasConv2d(nn.Module):
    """Conv2D (``groups=1``) or the depthwise step of SeparableConv2D (``groups=in``), Keras padding."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding: str, groups: int = 1,
                 activation: str = "linear"):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (out, in / groups, kh, kw)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding, self.groups = tuple(stride), padding, groups
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            x = _pad_same(x, self.weight.shape[2:], self.stride, 0.0)
        x = F.conv2d(x, self.weight, self.bias, self.stride, groups=self.groups)
        return ACTIVATIONS[self.activation](x)


class KerasSeparableConv2d(nn.Module):
    """SeparableConv2D: depthwise conv (with the stride and padding), then a 1x1 pointwise conv and the bias."""

    def __init__(self, depthwise: KerasConv2d, pointwise: KerasConv2d):
        super().__init__()
        self.depthwise, self.pointwise = depthwise, pointwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class KerasBatchNorm(nn.Module):
    """Inference BatchNormalization over channels, folded into ``x * scale + shift``."""

    def __init__(self, gamma, beta, mean, variance, epsilon: float):
        super().__init__()
        scale = gamma / torch.sqrt(variance + epsilon)
        self.register_buffer("scale", scale[None, :, None, None])
        self.register_buffer("shift", (beta - mean * scale)[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class KerasMaxPool2d(nn.Module):
    def __init__(self, pool_size, stride, padding: str):
        super().__init__()
        self.pool_size, self.stride, self.padding = tuple(pool_size), tuple(stride), padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            x = _pad_same(x, self.pool_size, self.stride, float("-inf"))
        return F.max_pool2d(x, self.pool_size, self.stride)


class KerasActivation(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.name](x)


class KerasGlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C)
        return x.mean(dim=(2, 3))


class KerasGraph(nn.Module):
    """The layers of a functional Keras model run in file order; ``nodes``: (layer name, input names).

    ``forward(x: (B, C, H, W)) -> the output layer's tensor``; ``input_shape``: Keras's (H, W, C).
    """

    def __init__(self, layers: dict[str, nn.Module], nodes: list[tuple[str, list[str]]], input_name: str,
                 output_name: str, input_shape: tuple[int, int, int]):
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.nodes, self.input_name, self.output_name = nodes, input_name, output_name
        self.input_shape = input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values(x, (self.output_name,))[0]

    def values(self, x: torch.Tensor, names: tuple[str, ...]) -> list[torch.Tensor]:
        """The tensors the nodes (or the input) ``names`` produce for ``x``; runs no node after the last one needed."""
        values, wanted = {self.input_name: x}, set(names)
        for name, inputs in self.nodes:
            if wanted <= values.keys():
                break
            args = [values[i] for i in inputs]
            layer = self.layers[name]
            values[name] = torch.stack(args).sum(0) if isinstance(layer, KerasAdd) else layer(args[0])
        missing = wanted - values.keys()
        if missing:
            raise KeyError(f"no node named {sorted(missing)} in the graph")
        return [values[n] for n in names]

    def last_conv_input(self) -> str:
        """The name of the node that feeds the graph's last convolution (its penultimate feature map)."""
        convs = [inputs[0] for name, inputs in self.nodes if isinstance(self.layers[name], (KerasConv2d, KerasSeparableConv2d))]
        if not convs:
            raise KeyError("the graph has no convolution")
        return convs[-1]


class KerasAdd(nn.Module):
    """Marker for Add: :class:`KerasGraph` sums its inputs."""


def _check_options(name: str, cfg: dict) -> None:
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise CheckpointError(f"layer {name!r}: data_format {cfg['data_format']!r} is not supported")
    if list(cfg.get("dilation_rate", [1, 1])) != [1, 1]:
        raise CheckpointError(f"layer {name!r}: dilation_rate {cfg['dilation_rate']} is not supported")
    if cfg.get("padding", "valid") not in ("valid", "same"):
        raise CheckpointError(f"layer {name!r}: padding {cfg['padding']!r} is not supported")
    if cfg.get("activation", "linear") not in ACTIVATIONS:
        raise CheckpointError(f"layer {name!r}: activation {cfg['activation']!r} is not supported "
                              f"(supported: {', '.join(ACTIVATIONS)})")
    if cfg.get("axis", -1) not in (-1, 3, [-1], [3]):
        raise CheckpointError(f"layer {name!r}: batch normalisation over axis {cfg['axis']} is not supported")


def _build_layer(kind: str, name: str, cfg: dict, w: dict[str, torch.Tensor]) -> nn.Module | None:
    """The torch module of one Keras layer; ``w``: its weights by short name (``kernel``, ``gamma``, ...)."""
    _check_options(name, cfg)
    if kind == "Conv2D":
        kernel = w["kernel"].permute(3, 2, 0, 1).contiguous()  # (kh, kw, in, out) -> (out, in, kh, kw)
        return KerasConv2d(kernel, w.get("bias"), cfg["strides"], cfg["padding"], activation=cfg["activation"])
    if kind == "SeparableConv2D":
        kh, kw, c_in, mult = w["depthwise_kernel"].shape
        depth = w["depthwise_kernel"].reshape(kh, kw, c_in * mult).permute(2, 0, 1)[:, None].contiguous()
        point = w["pointwise_kernel"].permute(3, 2, 0, 1).contiguous()
        return KerasSeparableConv2d(KerasConv2d(depth, None, cfg["strides"], cfg["padding"], groups=c_in),
                                    KerasConv2d(point, w.get("bias"), (1, 1), "valid", activation=cfg["activation"]))
    if kind == "BatchNormalization":
        size = w["moving_mean"].shape[0]
        return KerasBatchNorm(w.get("gamma", torch.ones(size)), w.get("beta", torch.zeros(size)), w["moving_mean"],
                              w["moving_variance"], float(cfg["epsilon"]))
    if kind == "MaxPooling2D":
        return KerasMaxPool2d(cfg["pool_size"], cfg.get("strides") or cfg["pool_size"], cfg["padding"])
    if kind == "Activation":
        return KerasActivation(cfg["activation"])
    if kind == "Add":
        return KerasAdd()
    if kind == "GlobalAveragePooling2D":
        return KerasGlobalAvgPool()
    return None  # InputLayer


def _layer_weights(group, path: Path, name: str) -> dict[str, torch.Tensor]:
    """``model_weights/<name>`` -> {short name: tensor}; ``conv2d_1_1/kernel:0`` is ``kernel``."""
    if name not in group:
        raise CheckpointError(f"{path}: no weights for layer {name!r} in model_weights")
    out = {}
    for full in group[name].attrs.get("weight_names", []):
        full = full.decode() if isinstance(full, bytes) else str(full)
        short = full.rsplit("/", 1)[-1].split(":")[0]
        out[short] = torch.from_numpy(np.asarray(group[name][full], dtype=np.float32))
    return out


def _inputs(name: str, layer: dict) -> list[str]:
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise CheckpointError(f"layer {name!r} is called {len(nodes)} times; shared layers are not supported")
    try:
        return [str(entry[0]) for entry in nodes[0]] if nodes else []
    except (TypeError, KeyError, IndexError):
        raise CheckpointError(f"layer {name!r}: inbound_nodes in an unknown format (not Keras 2)") from None


def _graph_from_config(config: dict, weights, path: Path) -> KerasGraph:
    if config.get("class_name") not in ("Model", "Functional"):
        raise CheckpointError(f"{path}: a Keras {config.get('class_name')!r} model; only functional models are read")
    body = config["config"]
    layers, nodes, input_shape = {}, [], None
    for layer in body["layers"]:
        kind, name, cfg = layer["class_name"], layer.get("name") or layer["config"]["name"], layer["config"]
        if kind not in SUPPORTED_LAYERS:
            raise CheckpointError(f"{path}: layer {name!r} has type {kind}, which is not supported "
                                  f"(supported: {', '.join(SUPPORTED_LAYERS)})")
        if kind == "InputLayer":
            input_shape = tuple(cfg["batch_input_shape"][1:])
            continue
        layers[name] = _build_layer(kind, name, cfg, _layer_weights(weights, path, name))
        nodes.append((name, _inputs(name, layer)))
    ins, outs = body.get("input_layers", []), body.get("output_layers", [])
    if len(ins) != 1 or len(outs) != 1 or input_shape is None:
        raise CheckpointError(f"{path}: {len(ins)} inputs and {len(outs)} outputs; one of each is supported")
    return KerasGraph(layers, nodes, ins[0][0], outs[0][0], input_shape).eval()


def load_keras_h5(path: str | Path) -> KerasGraph:
    """Read the Keras 2 HDF5 model file ``path`` into a :class:`KerasGraph` (eval mode, no gradients)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: Keras model file not found")
    try:
        with h5py.File(path, "r") as fh:
            raw = fh.attrs.get("model_config")
            if raw is None or "model_weights" not in fh:
                raise CheckpointError(f"{path}: not a Keras model file (no model_config attribute and "
                                      f"model_weights group)")
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            return _graph_from_config(config, fh["model_weights"], path)
    except (OSError, KeyError, ValueError) as err:  # truncated or damaged HDF5, missing datasets, bad JSON
        raise CheckpointError(f"{path}: not a readable Keras HDF5 model file ({type(err).__name__}: {err})") from None
