"""The encoder split between the two stages of ``affectmae live``: stage 1 runs the preprocessing, the patch
embedding and the first ``k`` transformer blocks on the crops it aligned, stage 2 the other blocks, the final
norm and the pooling (:meth:`~affectmae.models.vit.ViTEncoder.forward_tokens`, the blocks one by one,
``pool_tokens``).

    split = EncoderSplit(crop_encoder, "auto")     # or "0".."depth": a fixed k
    k = split.choose(spent, n_faces)               # stage 1, after tracking: how many blocks it runs
    tokens = split.head(crops, k)                  # stage 1
    feats = split.tail(tokens, k)                  # stage 2: (N, D), float16-rounded as analyze stores them
    split.stage_two_done(busy)                     # stage 2's busy seconds on the frame (rows written)

The same ops run in the same order at one thread, so the features do not depend on ``k``
(``tests/test_live.py`` compares them bit for bit). ``auto`` chooses ``k`` per frame to balance the stages:
with ``b`` the running mean of one block's seconds on one face (timed in both stages) and ``r`` the running
mean of stage 2's busy time besides its blocks (temporal step, rows, writing them), stage 1, which has spent
``s`` on the frame so far, takes the ``k`` that brings ``s + k b n`` closest to ``r + (depth - k) b n`` for
``n`` faces. A frame with a full-frame detection (slower than the patches around known faces) thus runs
fewer blocks in stage 1. An encoder without transformer blocks (the pixel baseline) runs whole in stage 2.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch

from affectmae.errors import AffectMAEError

MEAN_WEIGHT = 0.1  # weight of the newest measurement in the running means


def _running(mean: float | None, value: float) -> float:
    return value if mean is None else mean + MEAN_WEIGHT * (value - mean)


class EncoderSplit:
    """See the module docstring. ``setting``: ``"auto"`` or a fixed number of blocks for stage 1.
    ``counts``: frames with faces per ``k``."""

    def __init__(self, crop_encoder, setting: str | int = "auto"):
        self.crops = crop_encoder
        module = crop_encoder.encoder
        splittable = hasattr(module, "forward_tokens") and hasattr(module, "blocks")
        self.depth = len(module.blocks) if splittable else 0
        setting = str(setting).strip().lower()
        if setting == "auto":
            self.fixed = None
        else:
            try:
                self.fixed = int(setting)
            except ValueError:
                raise AffectMAEError(f"encoder_split must be auto or a number of blocks, got {setting!r}") from None
            if not 0 <= self.fixed <= self.depth:
                raise AffectMAEError(f"encoder_split={self.fixed}: the encoder has {self.depth} blocks "
                                     f"(0-{self.depth}, or auto)")
        self.setting = setting
        self.block_seconds: float | None = None  # one block on one face
        self.rest_seconds: float | None = None  # stage 2 besides its blocks
        self.counts: Counter = Counter()
        self._tail_blocks = 0.0  # seconds stage 2 spent in blocks on the frame it is finishing

    def choose(self, spent: float, n_faces: int) -> int:
        """Stage 1's number of blocks for a frame with ``n_faces`` faces, ``spent`` seconds into it."""
        if self.fixed is not None:
            k = self.fixed
        elif self.block_seconds is None or self.rest_seconds is None or n_faces == 0:
            k = 0
        else:
            per_block = self.block_seconds * n_faces
            k = round((self.rest_seconds + self.depth * per_block - spent) / (2 * per_block))
            k = min(max(k, 0), self.depth)
        self.counts[k] += 1
        return k

    def _observe_blocks(self, seconds: float, blocks: int, n_faces: int) -> None:
        if blocks and n_faces:
            self.block_seconds = _running(self.block_seconds, seconds / (blocks * n_faces))

    @torch.inference_mode()
    def head(self, crops: list[np.ndarray], k: int) -> torch.Tensor:
        """Stage 1: (N, S, S, 3) uint8 crops -> the tokens after block k (the preprocessed images when the
        encoder has no blocks)."""
        enc = self.crops
        x = enc.preprocess(np.stack(crops), enc.img_size, *enc.normalisation).to(enc.device)  # (N, 3, S, S)
        if not self.depth:
            return x
        x = enc.encoder.forward_tokens(x)
        start = time.perf_counter()
        x = _blocks(enc.encoder, x, 0, k)
        self._observe_blocks(time.perf_counter() - start, k, len(crops))
        return x

    @torch.inference_mode()
    def tail(self, tokens: torch.Tensor, k: int) -> np.ndarray:
        """Stage 2: :meth:`head`'s tokens -> (N, D) features, rounded to float16 as analyze stores them."""
        module = self.crops.encoder
        if not self.depth:
            self._tail_blocks = 0.0
            pooled = module.forward_features(tokens)["pooled"]
        else:
            start = time.perf_counter()
            x = _blocks(module, tokens, k, self.depth)
            self._tail_blocks = time.perf_counter() - start
            self._observe_blocks(self._tail_blocks, self.depth - k, len(tokens))
            pooled = module.pool_tokens(x)
        return pooled.to(torch.float16).float().cpu().numpy()

    def stage_two_done(self, busy: float) -> None:
        """Stage 2's busy seconds on the frame just finished (its blocks included; they are taken out)."""
        self.rest_seconds = _running(self.rest_seconds, max(busy - self._tail_blocks, 0.0))

    def summary(self) -> dict:
        frames = sum(self.counts.values())
        mean_k = sum(k * c for k, c in self.counts.items()) / frames if frames else None
        return {"setting": self.setting, "depth": self.depth,
                "k_frames": {str(k): self.counts[k] for k in sorted(self.counts)},
                "k_mean": None if mean_k is None else round(mean_k, 2),
                "block_ms": None if self.block_seconds is None else round(1000 * self.block_seconds, 2)}


def _blocks(module, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    for block in module.blocks[start:stop]:
        x = block(x)
    return x
