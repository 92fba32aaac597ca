"""Batched encoding of aligned face crops for ``affectmae analyze``, optionally in a background thread.

The frame loop (:mod:`affectmae.inference.video_pass`) adds one (S, S, 3) uint8 crop per detection; only
the (D,) float16 pooled feature of each crop is kept, in the order the crops were added, and it is kept
on disk: every encoded batch is appended to an anonymous temporary file (:class:`FeatureRows`), so the
process holds no per-frame features however long the video (768 bytes per face and frame for ViT-S).
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time

import numpy as np
import torch

from affectmae.face.align import CROP_SIZE

HANDOFF = 8  # crops per hand-over to the encoder thread (a smaller unit than batch_size keeps the thread busy)


class FeatureRows:
    """(N, D) float16 feature rows in an anonymous temporary file (in ``$TMPDIR``; gone when closed).

    :meth:`append` adds (B, D) blocks at the end; :meth:`read` returns the rows at given increasing
    indices, reading only the byte span between the first and the last one.
    """

    def __init__(self, directory: str | None = None):
        self._file = tempfile.TemporaryFile(dir=directory)
        self.n_rows = 0
        self.dim = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.dim)

    def __len__(self) -> int:
        return self.n_rows

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=np.float16)
        if self.n_rows == 0:
            self.dim = int(block.shape[1])
        self._file.write(block.tobytes())
        self.n_rows += len(block)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows at ``rows (k,)`` (increasing indices) -> (k, D) float16."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros((0, self.dim), dtype=np.float16)
        self._file.flush()
        first, last = int(rows[0]), int(rows[-1])
        width = 2 * self.dim
        data = os.pread(self._file.fileno(), (last - first + 1) * width, first * width)
        span = np.frombuffer(data, dtype=np.float16).reshape(-1, self.dim)
        return span[rows - first]

    def read_all(self) -> np.ndarray:
        return self.read(np.arange(self.n_rows)) if self.n_rows else np.zeros((0, 0), dtype=np.float16)

    def close(self) -> None:
        self._file.close()


class CropEncoder:
    """Bounded crop buffer + batched encoder; features are appended to a :class:`FeatureRows` file.

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
        self.rows: FeatureRows | None = None  # this video's features (opened by reset or the first batch)
        self.timings = timings
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def reset(self, timings: dict) -> None:
        """Start a new video: no crops or features pending, times go to ``timings``. The previous video's
        :class:`FeatureRows` are left to whoever took them (:meth:`feature_rows`)."""
        self._stop()
        if self.rows is not None:  # a video that ended with an error
            self.rows.close()
        self.crops, self.rows, self.timings, self._error = [], None, timings, None

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
        if self.rows is None:
            self.rows = FeatureRows()
        self.rows.append(pooled.to(torch.float16).cpu().numpy())
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

    def feature_rows(self) -> FeatureRows | None:
        """Encode what is pending and hand over the features on disk, (N_crops, D) float16 in the order
        crops were added (None without crops); the caller closes them."""
        self.flush()
        self._stop()
        self._raise()
        rows, self.rows = self.rows, None
        return rows

    def features(self) -> np.ndarray:
        """(N_crops, D) float16 in the order crops were added, in memory."""
        rows = self.feature_rows()
        if rows is None:
            return np.zeros((0, 0), dtype=np.float16)
        try:
            return rows.read_all()
        finally:
            rows.close()
