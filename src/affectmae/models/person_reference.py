"""Person normalisation references (``TemporalConfig.person_norm``): the mean feature of a face track.

:func:`person_reference` is one mean over the whole track (offline models); :func:`causal_reference` gives
every frame the mean over the frames up to it (streaming models, which must not look ahead).
"""

from __future__ import annotations

import numpy as np
import torch


def person_reference(features: np.ndarray | torch.Tensor, present: np.ndarray | None = None,
                     chunk: int = 4096) -> np.ndarray:
    """The mean feature of one video (face track) over its frames with a face (all frames when none has
    one): (N, D) -> (D,) float32. Read ``chunk`` rows at a time, so a memory-mapped array stays on disk."""
    n, d = int(features.shape[0]), int(features.shape[1])
    total, count = np.zeros(d, np.float64), 0
    use_all = present is None or not np.any(present)
    for start in range(0, n, chunk):
        rows = np.asarray(features[start : start + chunk], dtype=np.float64)
        if not use_all:
            rows = rows[np.asarray(present[start : start + chunk], dtype=bool)]
        total += rows.sum(axis=0)
        count += len(rows)
    return (total / max(count, 1)).astype(np.float32)


def causal_reference(features: np.ndarray | torch.Tensor, present: np.ndarray | None = None,
                     start: tuple | None = None) -> np.ndarray:
    """The person reference of a streaming model, one per frame: for frame t the mean feature over frames
    0..t with a face (over all frames 0..t while none had one). (N, D) -> (N, D) float32.

    ``start``: the running sums before frame 0 (``(sum with a face (D,), count, sum of all (D,), count)``,
    float64), for a part of a longer sequence; :class:`~affectmae.models.causal_stream.CausalStream`
    computes the same frame by frame.
    """
    x = np.asarray(features[:], dtype=np.float64)
    n, d = x.shape
    p = np.ones(n, bool) if present is None else np.asarray(present, dtype=bool)
    s_p, c_p, s_a, c_a = start if start is not None else (np.zeros(d), 0, np.zeros(d), 0)
    sum_p = s_p + np.cumsum(x * p[:, None], axis=0)
    cnt_p = c_p + np.cumsum(p)
    sum_a = s_a + np.cumsum(x, axis=0)
    cnt_a = c_a + np.arange(1, n + 1)
    ref = np.where((cnt_p > 0)[:, None], sum_p / np.maximum(cnt_p, 1)[:, None], sum_a / cnt_a[:, None])
    return ref.astype(np.float32)
