"""Batched encoding of aligned face crops for ``affectmae analyze``, optionally in a background thread.

The frame loop (:mod:`affectmae.inference.video_pass`) adds one (S, S, 3) uint8 crop per detection; only
the (D,) float16 pooled feature of each crop is kept, in the order the crops were added.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch

from affectmae.face.align import CROP_SIZE

HANDOFF = 8  # crops per hand-over to the encoder thread (a smaller unit than batch_size keeps the thread busy)


class CropEncoder:
    """Bounded crop buffer + batched encoder; features go to one growing list of (B, D) float16 blocks.

    With ``overlap`` a background thread runs the forward passes, so the frame loop decodes, detects and
    aligns the next frames meanwhile (PyTorch releases the GIL in its ops, and the detector works in its own
    process). The loop hands over every ``HANDOFF`` crops; the thread encodes whatever is queued, up to
    ``batch_size`` crops per forward pass (at most 2 batches wait, so memory stays bounded).
    ``timings["encode"]`` is then the thread's busy time, overlapping the other stages.
    """

    def __init__(self, encoder: torch.nn.Module, device: torch.device, batch_size: int, timings: dict,
                 overlap: bool = False):
        from affectmae.models.preprocess import encoder_normalisation, preprocess_frames

        self.encoder = encoder.to(device).eval()
        self.device = device
        self.img_size = int(getattr(encoder, "arch", {}).get("img_size", CROP_SIZE))
        self.preprocess = preprocess_frames
        self.normalisation = encoder_normalisation(encoder)  # (mean, std) the encoder was trained with
        self.batch_size = batch_size
        self.overlap = overlap
        self.crops: list[np.ndarray] = []
        self.blocks: list[np.ndarray] = []
        self.timings = timings
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def reset(self, timings: dict) -> None:
        """Start a new video: no crops or features pending, times go to ``timings``."""
        self._stop()
        self.crops, self.blocks, self.timings, self._error = [], [], timings, None

    def add(self, crop: np.ndarray) -> None:
        self.crops.append(crop)
        if len(self.crops) >= (min(self.batch_size, HANDOFF) if self.overlap else self.batch_size):
            self.flush()

    def flush(self) -> None:
        if not self.crops:
            return
        batch, self.crops = np.stack(self.crops), []  # (B, S, S, 3) uint8
        if not self.overlap:
            self._encode(batch)
            return
        if self._thread is None:
            self._queue = queue.Queue(maxsize=max(2, 2 * self.batch_size // HANDOFF))
            self._thread = threading.Thread(target=self._work, name="affectmae-encoder", daemon=True)
            self._thread.start()
        self._raise()
        self._queue.put(batch)

    @torch.inference_mode()
    def _encode(self, batch: np.ndarray) -> None:
        start = time.perf_counter()
        x = self.preprocess(batch, self.img_size, *self.normalisation).to(self.device)  # (B, 3, S, S)
        pooled = self.encoder.forward_features(x)["pooled"]  # (B, D)
        self.blocks.append(pooled.to(torch.float16).cpu().numpy())
        self.timings["encode"] += time.perf_counter() - start

    def _work(self) -> None:
        done = False
        while not done:
            blocks = [self._queue.get()]  # wait for work, then take what is queued, up to batch_size crops
            while blocks[-1] is not None and sum(len(b) for b in blocks) < self.batch_size:
                try:
                    blocks.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = blocks[-1] is None
            blocks = [b for b in blocks if b is not None]
            if blocks and self._error is None:  # after an error, keep draining so the frame loop never blocks
                try:
                    self._encode(np.concatenate(blocks))
                except BaseException as err:  # re-raised in the frame loop's thread
                    self._error = err

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread, self._queue = None, None

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def features(self) -> np.ndarray:
        """(N_crops, D) float16 in the order crops were added."""
        self.flush()
        self._stop()
        self._raise()
        if not self.blocks:
            return np.zeros((0, 0), dtype=np.float16)
        return np.concatenate(self.blocks)
