"""Cut videos into overlapping fixed-length windows that cover every frame, and merge per-window
predictions back into one prediction per frame.

The reference code kept a window only while it fitted inside the video, so the tail of every video and
every video shorter than the window were never seen. Here:

- a video of ``n <= window`` frames is one segment starting at 0, padded up to ``window`` (mask False
  on the padding);
- a longer video gets windows at ``0, stride, 2*stride, ...`` while they fit, and, when that grid
  stops short of the last frame, one more window aligned to the end (``start = n - window``). This last
  window overlaps its neighbour by more than usual but needs no padding, so every window the model sees
  is full of real frames except for videos shorter than ``window``.

Overlapping predictions are merged per frame by :class:`OverlapMerger` (streaming, one window at a time)
or :func:`merge_windows` (all windows at once), either with equal weights (``"mean"``) or with triangular
weights that favour the centre of each window (``"center"``), where the model had context on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from affectmae.errors import AffectMAEError

WEIGHTINGS = ("mean", "center")


def _check_window(window: int, stride: int) -> None:
    if int(window) != window or window <= 0:
        raise AffectMAEError(f"segment window must be a positive integer, got {window!r}")
    if int(stride) != stride or stride <= 0:
        raise AffectMAEError(f"segment stride must be a positive integer, got {stride!r}")
    if stride > window:
        raise AffectMAEError(f"segment stride ({stride}) larger than the window ({window}) would skip frames")


def segment_starts(n_frames: int, window: int = 300, stride: int = 200) -> list[int]:
    """First frame (0-based) of every window of a video with ``n_frames`` frames.

    Together the windows ``[start, start + window)`` (clipped to the video) cover every frame. Examples:
    ``segment_starts(700) == [0, 200, 400]``, ``segment_starts(650) == [0, 200, 350]``,
    ``segment_starts(120) == [0]`` (one padded window).
    """
    _check_window(window, stride)
    if int(n_frames) != n_frames or n_frames <= 0:
        raise AffectMAEError(f"cannot segment a video with {n_frames!r} frames (need at least 1)")
    n_frames = int(n_frames)
    if n_frames <= window:
        return [0]
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return starts


@dataclass(frozen=True)
class Segment:
    """``length`` real frames of ``video`` starting at frame ``start`` (0-based); ``length <= window``.

    A Dataset reads frames ``[start, start + length)`` and pads them with :func:`pad_segment`.
    """

    video: Any  # video name (str) or position in the list given to make_segments (int)
    start: int
    length: int

    @property
    def stop(self) -> int:
        return self.start + self.length


def make_segments(
    lengths: Mapping[Any, int] | Sequence[int], window: int = 300, stride: int = 200
) -> list[Segment]:
    """Segments for many videos: ``lengths`` maps video name -> frame count (or is a list of counts,
    and the video is then its position). Videos keep the given order; windows run in time order."""
    items: Iterable[tuple[Any, int]] = lengths.items() if isinstance(lengths, Mapping) else enumerate(lengths)
    segments = []
    for video, n in items:
        try:
            starts = segment_starts(n, window, stride)
        except AffectMAEError as err:
            raise AffectMAEError(f"video {video!r}: {err}") from None
        segments.extend(Segment(video, s, min(window, int(n) - s)) for s in starts)
    return segments


def pad_segment(array: Any, window: int) -> tuple[Any, Any]:
    """Pad ``array: (L, ...)`` with zeros to ``(window, ...)``; returns ``(padded, mask: (window,) bool)``
    with ``mask[:L]`` True. Works on numpy arrays and torch tensors (returns the same kind)."""
    length = int(array.shape[0])
    if length == 0 or length > window:
        raise AffectMAEError(f"cannot pad a segment of {length} frames to a window of {window}")
    if isinstance(array, np.ndarray):
        padded = np.zeros((window, *array.shape[1:]), dtype=array.dtype)
        mask = np.zeros(window, dtype=bool)
    else:  # torch.Tensor; torch is imported only for torch inputs
        import torch

        padded = array.new_zeros((window, *array.shape[1:]))
        mask = torch.zeros(window, dtype=torch.bool, device=array.device)
    padded[:length] = array
    mask[:length] = True
    return padded, mask


def window_weights(length: int, weighting: str = "mean") -> np.ndarray:
    """Per-position weights of a window of ``length`` frames, float64 (length,).

    ``"mean"``: all ones. ``"center"``: triangular, ``min(i + 1, length - i)``, so the centre counts most
    and the first and last frame still count (weight 1), which keeps the video's first and last frame
    covered by a non-zero weight.
    """
    if weighting not in WEIGHTINGS:
        raise AffectMAEError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if weighting == "mean":
        return np.ones(length, dtype=np.float64)
    i = np.arange(length, dtype=np.float64)
    return np.minimum(i + 1.0, length - i)


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _uncovered_error(weights: np.ndarray) -> AffectMAEError:
    missing = np.flatnonzero(weights <= 0)
    first = ", ".join(str(int(k)) for k in missing[:5])
    return AffectMAEError(f"{missing.size} of {weights.size} frames were not covered by any window (first: {first})")


class OverlapMerger:
    """Accumulate overlapping window predictions; ``result()`` gives one (weighted mean) row per frame.

    Holds only the ``(n_frames, channels)`` weighted sums and the ``(n_frames,)`` weights (float64).
    ``add(start, preds)`` takes the predictions of a whole window, padding included: rows past the end
    of the video are ignored, and ``"center"`` weights are laid out over the full window so its centre
    is where the model's context was symmetric.
    """

    def __init__(self, n_frames: int, channels: int, weighting: str = "mean"):
        if n_frames <= 0 or channels <= 0:
            raise AffectMAEError(f"OverlapMerger needs n_frames > 0 and channels > 0, got {n_frames}, {channels}")
        window_weights(1, weighting)  # validates the name
        self.n_frames = int(n_frames)
        self.channels = int(channels)
        self.weighting = weighting
        self._sums = np.zeros((self.n_frames, self.channels), dtype=np.float64)
        self._weights = np.zeros(self.n_frames, dtype=np.float64)

    def add(self, start: int, preds: Any) -> None:
        """``preds: (L, C)`` for frames ``start .. start + L - 1``; rows at or past ``n_frames`` are dropped."""
        preds = _as_numpy(preds)
        if preds.ndim == 1 and self.channels == 1:
            preds = preds[:, None]
        if preds.ndim != 2 or preds.shape[1] != self.channels:
            raise AffectMAEError(f"expected window predictions of shape (L, {self.channels}), got {preds.shape}")
        if not 0 <= start < self.n_frames:
            raise AffectMAEError(f"window start {start} outside the video (0 .. {self.n_frames - 1})")
        weights = window_weights(preds.shape[0], self.weighting)
        stop = min(start + preds.shape[0], self.n_frames)
        keep = stop - start
        self._sums[start:stop] += preds[:keep] * weights[:keep, None]
        self._weights[start:stop] += weights[:keep]

    def result(self) -> np.ndarray:
        """Merged predictions, float32 ``(n_frames, C)``; error if any frame was never covered."""
        if np.any(self._weights <= 0):
            raise _uncovered_error(self._weights)
        return (self._sums / self._weights[:, None]).astype(np.float32)


def merge_windows(n_frames: int, starts: Sequence[int], preds: Any, weighting: str = "mean") -> np.ndarray:
    """Vectorised merge of all windows of one video: ``preds: (S, W, C)`` for windows starting at
    ``starts`` (S,) -> ``(n_frames, C)`` float32. Same result as feeding each window to OverlapMerger."""
    preds = _as_numpy(preds)
    starts = np.asarray(starts, dtype=np.int64)
    if preds.ndim != 3 or preds.shape[0] != starts.shape[0]:
        raise AffectMAEError(f"expected preds of shape (S={starts.shape[0]}, W, C), got {preds.shape}")
    if n_frames <= 0 or starts.size == 0 or starts.min() < 0 or starts.max() >= n_frames:
        raise AffectMAEError(f"window starts {starts.tolist()[:5]} do not fit a video of {n_frames} frames")
    n_windows, width, channels = preds.shape
    frame = starts[:, None] + np.arange(width)[None, :]  # (S, W)
    inside = frame < n_frames
    idx = frame[inside]  # (K,)
    w = np.broadcast_to(window_weights(width, weighting), (n_windows, width))[inside]  # (K,)
    weights = np.bincount(idx, weights=w, minlength=n_frames)
    values = preds[inside].astype(np.float64)  # (K, C)
    sums = np.stack([np.bincount(idx, weights=values[:, c] * w, minlength=n_frames) for c in range(channels)], 1)
    if np.any(weights <= 0):
        raise _uncovered_error(weights)
    return (sums / weights[:, None]).astype(np.float32)
