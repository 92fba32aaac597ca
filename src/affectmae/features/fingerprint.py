"""The fingerprint of an encoder: the sha256 of its weights, computed once where the encoder is loaded.

``extract`` stores it in ``features.json`` (``encoder_sha256``), ``train`` copies it into each run's
``best.safetensors`` metadata (``features.encoder_sha256``) and ``export`` into ``affectmae_model.json``.
Two encoders of the same architecture but different weights give features of the same size; only the
fingerprint tells them apart, so ``predict`` and ``export`` compare it before any work.

It depends on the tensors only (names, dtypes, shapes and bytes, in name order), not on the file they
came from: a reference-MAE ``.pth`` and the ``encoder.safetensors`` exported from it have one fingerprint.
"""

from __future__ import annotations

import hashlib


def encoder_fingerprint(module) -> str:
    """sha256 (hex) of ``module.state_dict()``: every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
