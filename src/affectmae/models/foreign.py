"""Checkpoints written by other code, read without running any of it, and what they say about themselves.

Two sources are understood:

- facebookresearch/mae's training scripts save ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}`` with
  ``args`` an ``argparse.Namespace``. :func:`read_torch_file` reads such a file with
  ``torch.load(weights_only=True)``, where ``argparse.Namespace`` is the only class allowed beyond torch's
  own tensor types; any other pickled class is refused before loading, so the file's code never runs.
- timm / Hugging Face Hub folders keep a ``config.json`` next to the weights (``pretrained_cfg`` with the
  input normalisation, ``global_pool``, ``architecture``); :func:`read_hub_config` reads it when present.

:func:`checkpoint_hints` turns what was found into the encoder settings a state dict's shapes cannot
tell: pooling, attention heads and input normalisation, each with the reason it was chosen.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from affectmae.errors import CheckpointError
from affectmae.models.preprocess import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

SAFE_GLOBALS = (argparse.Namespace,)  # the reference MAE scripts' saved command-line settings
STATE_KEYS = ("model", "state_dict", "model_state")
LOADABLE = ("weights load from .safetensors files and from .pth/.pt/.bin files that hold only tensors "
            "(a state dict, {'model': state_dict}, or a facebookresearch/mae checkpoint with its args)")

# Attention heads of the models facebookresearch/mae defines (models_mae.py, models_vit.py); forks that add
# other sizes define their own head counts, which the weights do not reveal.
REFERENCE_HEADS = {"vit_base_patch16": 12, "vit_large_patch16": 16, "vit_huge_patch14": 16}
# timm's head counts for the usual widths: the fallback when nothing in or beside the file names them.
WIDTH_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
AGREED_WIDTHS = (768, 1024, 1280)  # ViT-B/L/H: public models agree on 12/16/16 heads; smaller ones do not
POOLINGS = ("cls", "mean", "mae_global")


def _unsafe_globals(path: Path) -> list[str]:
    """Classes and functions the pickle in ``path`` names beyond torch's and :data:`SAFE_GLOBALS`."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint (legacy format, or not torch at all): torch.load decides below
        return []
    return [n for n in names if n not in allowed]


def read_torch_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A ``.pth``/``.pt``/``.bin`` file -> (flat state dict, the reference scripts' ``args`` as a dict or {})."""
    unsafe = _unsafe_globals(path)
    if unsafe:
        raise CheckpointError(f"{path}: holds pickled Python objects ({', '.join(unsafe[:3])}) that affectmae "
                              f"never unpickles, since that could run code; {LOADABLE}; to use this file, "
                              f"convert its tensors to .safetensors (docs/training.md)")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError...; torch's advice is not for CLI users
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        detail = "" if "weights_only" in str(err) or not first else f" ({type(err).__name__}: {first[:120]})"
        raise CheckpointError(f"{path}: cannot read as a PyTorch weights file{detail}; {LOADABLE}") from None
    args: dict[str, Any] = {}
    if isinstance(obj, dict):
        if isinstance(obj.get("args"), argparse.Namespace):
            args = dict(vars(obj["args"]))
        elif isinstance(obj.get("args"), dict):
            args = dict(obj["args"])
        for key in STATE_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (or {{'model': state_dict}})")
    return {k.removeprefix("module."): v for k, v in obj.items()}, args


def read_hub_config(path: Path) -> dict[str, Any]:
    """``config.json`` beside a weights file (timm / Hugging Face Hub layout), or {} when there is none."""
    config = path.parent / "config.json"
    if not config.is_file():
        return {}
    try:
        data = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config}: unreadable model config beside {path.name} ({err})") from None
    return data if isinstance(data, dict) else {}


def _timm_heads(architecture: str) -> int | None:
    """Heads of a timm model name (built on the meta device: no memory, no random numbers)."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(architecture.split(".")[0], pretrained=False, num_classes=0)
        return int(model.blocks[0].attn.num_heads)
    except Exception:  # unknown name or not a ViT
        return None


def _heads(embed_dim: int, args: dict, config: dict, num_heads: int | None) -> tuple[int, str]:
    if num_heads:
        return int(num_heads), "set by num_heads"
    model_args = config.get("model_args") or {}
    if model_args.get("num_heads"):
        return int(model_args["num_heads"]), "config.json model_args"
    if config.get("architecture") and (heads := _timm_heads(str(config["architecture"]))):
        return heads, f"config.json architecture {config['architecture']}"
    name = re.sub(r"^mae_|_dec\d+d\d+b$", "", str(args.get("model", "")))
    if name in REFERENCE_HEADS:
        return REFERENCE_HEADS[name], f"args.model {args['model']}"
    heads = WIDTH_HEADS.get(embed_dim, max(1, embed_dim // 64))
    return heads, f"assumed (timm's count for width {embed_dim}); set num_heads if the model used another"


def _pooling(state: dict, args: dict, config: dict) -> tuple[str, str]:
    if "fc_norm.weight" in state and "norm.weight" not in state:
        return "mae_global", "fc_norm in the checkpoint"
    if config.get("global_pool") in ("avg", "token"):
        return ("mean" if config["global_pool"] == "avg" else "cls"), f"config.json global_pool {config['global_pool']}"
    if args.get("global_pool") is False or args.get("cls_token"):
        return "cls", "args.global_pool false"
    return "cls", "class token (the reference MAE's linear probe, timm's ViT default)"


def _normalisation(config: dict) -> tuple[list[float], list[float], str]:
    cfg = config.get("pretrained_cfg") or config
    mean, std = cfg.get("mean"), cfg.get("std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
        return [float(m) for m in mean], [float(s) for s in std], "config.json pretrained_cfg"
    return list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet (the reference MAE's)"


def checkpoint_hints(state: dict[str, torch.Tensor], embed_dim: int, args: dict[str, Any], config: dict[str, Any],
                     num_heads: int | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Encoder settings of a foreign checkpoint -> (settings, why each was chosen).

    settings: ``pooling``, ``num_heads``, ``mean``, ``std``; the reasons go into the encoder's metadata.
    """
    heads, why_heads = _heads(embed_dim, args, config, num_heads)
    pooling, why_pooling = _pooling(state, args, config)
    mean, std, why_norm = _normalisation(config)
    if why_heads.startswith("assumed"):  # a warning where public models of that width differ (e.g. ViT-S: 6 or 12)
        log.log(logging.INFO if embed_dim in AGREED_WIDTHS else logging.WARNING, "%d attention heads %s", heads, why_heads)
    return ({"pooling": pooling, "num_heads": heads, "mean": mean, "std": std},
            {"pooling": why_pooling, "num_heads": why_heads, "normalisation": why_norm})
