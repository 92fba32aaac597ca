"""Our own weight files: safetensors with a JSON metadata block, written atomically.

Used by inference and training alike (training adds optimizer state on top, see
``affectmae.training.state``). Nothing here unpickles anything.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from affectmae import __version__
from affectmae.errors import CheckpointError
from affectmae.io import OutputWriteError, atomic_path

META_KEY = "affectmae"
FORMAT_VERSION = 1
BEST_FILE = "best.safetensors"  # the best model of an `affectmae train` run folder (training and inference)
ENCODER_FILE = "encoder.safetensors"  # the encoder of a pretrain/finetune run folder and of a MODEL_DIR


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> None:
    """Write ``tensors`` to ``path`` (safetensors) with ``metadata`` stored as JSON in the header.

    The file appears all at once (temporary file + rename); a kill mid-write leaves the old file.
    """
    meta = {"format_version": FORMAT_VERSION, "affectmae_version": __version__, **(metadata or {})}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(contiguous, str(tmp), metadata={META_KEY: json.dumps(meta)})
        except SafetensorError as err:  # the writer's I/O errors arrive as text: "... Os { code: 28, ..."
            code = re.search(r"code: (\d+)", str(err))
            number = int(code.group(1)) if code else errno.EIO
            raise OutputWriteError(path, OSError(number, os.strerror(number))) from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    if raw is None:
        return {}
    return json.loads(raw)


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_weights`; returns ``(tensors, metadata)``."""
    meta = read_metadata(path)
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer affectmae (format {meta['format_version']}, "
            f"version {meta.get('affectmae_version')}); this is {__version__} (format {FORMAT_VERSION})"
        )
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    return tensors, meta


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``module.load_state_dict(state)`` with an error listing every missing, unexpected or misshapen key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError(f"{source}: checkpoint does not fit {type(module).__name__}; " + "; ".join(parts))
    module.load_state_dict(state)
