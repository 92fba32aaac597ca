"""The fingerprint of an encoder: what its features depend on, computed once where the encoder is loaded.

Features depend on the weights and on how a frame goes in and a feature comes out: the input size
(``img_size``), the normalisation (mean, std) and the pooling (``cls``, ``mean``, ``mae_global``). The
same weights pooled two ways, or run at two sizes, give features of one size but of different meaning, so
the fingerprint covers all of these::

    encoder_sha256           sha256 of the weights' sha256 and the input settings (the fingerprint)
    encoder_weights_sha256   sha256 of the weights alone
    encoder_input            {"img_size", "pooling", "mean", "std"}

``extract`` stores these three in ``features.json``, ``train`` copies them into each run's
``best.safetensors`` metadata (``features``) and ``export`` into ``affectmae_model.json``; ``predict``,
``export`` and a continued ``extract`` compare them (:func:`compare_fingerprints`) before any work.

The weights' sha256 depends on the tensors only (names, dtypes, shapes and bytes, in name order), not on the
file they came from: a reference-MAE ``.pth`` and the ``encoder.safetensors`` exported from it agree.

Older versions recorded the weights' sha256 alone, as ``encoder_sha256``. Such a record is read as what it
is (:func:`recorded_fingerprint`): a features.json of an older ``extract`` also holds the encoder's
``arch`` (``encoder_meta``), from which the input settings and so the full fingerprint follow; a training
run or MODEL_DIR of an older version holds the weights only. Where one side has the weights only and they
agree, the settings cannot be compared: the callers say so in a warning, and do not refuse.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Fingerprint:
    """``weights``: sha256 of the weights; ``full``: the fingerprint (weights and input settings), None where
    only the weights were recorded; ``settings``: the input settings, where known."""

    weights: str
    full: str | None = None
    settings: dict[str, Any] | None = None

    @property
    def shown(self) -> str:
        """The hex digest messages print (the fingerprint, or the weights' where that is all there is)."""
        return self.full or self.weights

    def record(self) -> dict[str, Any]:
        """The entries written into features.json, run and MODEL_DIR metadata."""
        if self.full is None:
            return {"encoder_sha256": self.weights}
        return {"encoder_sha256": self.full, "encoder_weights_sha256": self.weights, "encoder_input": self.settings}


def weights_sha256(module) -> str:
    """sha256 (hex) of ``module.state_dict()``: every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def input_settings(module) -> dict[str, Any]:
    """How frames enter ``module`` and features leave it: ``img_size``, ``pooling`` (None for encoders without
    one, e.g. the pixel baseline) and the normalisation ``mean`` / ``std`` it is fed with."""
    from affectmae.models.preprocess import encoder_normalisation

    arch = getattr(module, "arch", None) or {}
    mean, std = encoder_normalisation(module)
    return {"img_size": int(arch["img_size"]), "pooling": arch.get("pooling"),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _combine(weights: str, settings: Mapping[str, Any]) -> str:
    text = json.dumps({"weights": weights, **settings}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint_of(module) -> Fingerprint:
    """The fingerprint of a loaded encoder (before any quantisation)."""
    weights, settings = weights_sha256(module), input_settings(module)
    return Fingerprint(weights, _combine(weights, settings), settings)


def encoder_fingerprint(module) -> str:
    """The fingerprint's hex digest (``encoder_sha256``): the weights and the input settings."""
    return fingerprint_of(module).full


def recorded_fingerprint(meta: Mapping[str, Any]) -> Fingerprint | None:
    """The fingerprint a features.json, a run's ``features`` metadata or a MODEL_DIR recorded; None where none
    was (made before fingerprints existed). A record of an older version (``encoder_sha256`` only) gives the
    weights, and the full fingerprint too where the encoder's complete ``arch`` was recorded beside it."""
    sha = meta.get("encoder_sha256")
    if not sha:
        return None
    if meta.get("encoder_weights_sha256"):
        return Fingerprint(meta["encoder_weights_sha256"], sha, meta.get("encoder_input"))
    arch = (meta.get("encoder_meta") or {}).get("arch")
    if isinstance(arch, Mapping) and all(arch.get(k) is not None for k in ("img_size", "pooling", "mean", "std")):
        settings = {"img_size": int(arch["img_size"]), "pooling": arch["pooling"],
                    "mean": [float(v) for v in arch["mean"]], "std": [float(v) for v in arch["std"]]}
        return Fingerprint(sha, _combine(sha, settings), settings)
    return Fingerprint(sha)


def compare_fingerprints(a: Fingerprint, b: Fingerprint) -> str:
    """``"same"``, ``"different"``, or ``"weights only"``: the weights agree, but one side recorded nothing
    more (an older version), so pooling, input size and normalisation cannot be compared."""
    if a.weights != b.weights:
        return "different"
    if a.full is None or b.full is None:
        return "weights only"
    return "same" if a.full == b.full else "different"


def settings_difference(a: Fingerprint, b: Fingerprint) -> str:
    """``"pooling cls, not mean"``-style words for the settings in which ``a`` differs from ``b`` (same weights);
    "" when the weights differ or the settings are not known on both sides."""
    if a.weights != b.weights or not a.settings or not b.settings:
        return ""
    return "; ".join(f"{k} {a.settings.get(k)}, not {b.settings.get(k)}" for k in ("pooling", "img_size", "mean", "std")
                     if a.settings.get(k) != b.settings.get(k))


WEIGHTS_ONLY_NOTE = ("recorded the weights of its encoder only (an older affectmae), so pooling, input size and "
                     "normalisation cannot be compared; the weights agree")
