"""The feature store: one float16 ``(N, D)`` array and one ``(N,)`` mask per video (``affectmae extract``).

Layout of a features folder::

    FEATURES/features.json        {"format": "affectmae-features", "version": 1, "encoder": ..., "encoder_meta": ...,
                                   "encoder_sha256": ..., "encoder_weights_sha256": ..., "encoder_input": ...,
                                   "dim": D, "dtype": "float16", "missing": "linear", "mask": "present"}
    FEATURES/<video>.npy          (N, D) float16, one row per frame (frame k is image %05d.jpg % (k + 1))
    FEATURES/<video>.mask.npy     (N,) bool, True where the frame image existed and was decoded

``encoder_sha256`` is the encoder's fingerprint (:mod:`affectmae.features.fingerprint`: its weights, input size,
normalisation and pooling): training runs record it and ``predict`` / ``export`` refuse features, runs and
encoders whose fingerprints differ. A video's two files count as finished only when their headers and
sizes match features.json (:func:`video_problem`); ``extract`` redoes a damaged video, and reading one
is a one-line error naming the file.

``encoder`` in features.json names what made the features: the resolved checkpoint path, ``pixels:<S>``
(grey S x S pixels) or ``random:<checkpoint>@seed<k>`` (that architecture with random weights); the
baselines of the ablation table are extracted through this same code path
(:mod:`affectmae.models.baseline_encoders`). ``FEATURES/config.yaml`` records the extract settings.

Frames without an image (no face found, or a corrupt JPEG, which is counted and reported) get a
feature anyway, so every frame has a prediction later: ``missing="linear"`` interpolates in time between
the nearest present frames (copying the nearest one before the first / after the last present frame),
``"nearest"`` copies the nearest present frame and ``"zero"`` leaves zeros. The mask is kept either way;
the temporal model can also replace those rows by a learned "missing" embedding
(``TemporalConfig.missing_embedding``).

The extraction job that writes this layout is :mod:`affectmae.features.extract`; frame counts and decoding
are in :mod:`affectmae.features.frames`. This module does not import torch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FEATURES_FORMAT = "affectmae-features"
FEATURES_VERSION = 1
MISSING_METHODS = ("linear", "nearest", "zero")


# ----------------------------------------------------------------------------------------------- reading
def read_npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, offset of the data) from a ``.npy`` file's header, without reading the
    data; InputFormatError naming the file when it is not a ``.npy`` file."""
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
        except ValueError as err:
            raise InputFormatError(path, f"not a .npy file ({err})") from None
        return tuple(shape), bool(fortran), np.dtype(dtype), fh.tell()


def _array_problem(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """What is wrong with the ``.npy`` file at ``path`` against the expected shape and dtype, or None."""
    if not path.is_file():
        return "missing"
    got_shape, fortran, got_dtype, offset = read_npy_header(path)
    if got_dtype != dtype:
        return f"dtype {got_dtype}, expected {dtype}"
    if fortran or len(got_shape) != len(shape) or any(w >= 0 and g != w for g, w in zip(got_shape, shape, strict=True)):
        want = tuple("N" if w < 0 else w for w in shape)
        return f"shape {got_shape}{' (Fortran order)' if fortran else ''}, expected {want}".replace("'", "")
    size, expected = path.stat().st_size, offset + int(np.prod(got_shape)) * dtype.itemsize
    if size != expected:
        return f"{'truncated' if size < expected else 'too long'}: {size} bytes, the header needs {expected}"
    return None


def video_problem(root: Path, video: str, dim: int, n: int | None = None,
                  dtype: str = "float16") -> tuple[Path, str] | None:
    """Whether ``root/<video>.npy`` and its mask form a finished, undamaged video: None if so, else
    ``(file, what is wrong)``. Checked from the headers and file sizes: dtype, ``(N, dim)`` shape (``N == n``
    when ``n`` is given), a data part as long as the header says, and a ``(N,)`` bool mask beside it."""
    feats = root / f"{video}.npy"
    problem = _array_problem(feats, (-1 if n is None else n, dim), np.dtype(dtype))
    if problem is not None:
        return feats, problem
    mask = root / f"{video}.mask.npy"
    problem = _array_problem(mask, (read_npy_header(feats)[0][0],), np.dtype(bool))
    return None if problem is None else (mask, problem)


class NpyRows:
    """Rows of a 2-D ``.npy`` file read and written with ``pread``/``pwrite``, never memory-mapped, so
    the process's resident memory does not grow with the file (a memory map keeps every page it touched).

    ``rows[k]`` -> (D,), ``rows[a:b]`` -> (b - a, D) (new arrays); ``rows[a:b] = values`` writes in place
    (mode ``"r+"``). ``shape``, ``dtype``, ``ndim`` and ``len()`` work as for an array.
    """

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        shape, fortran, dtype, self._offset = read_npy_header(self.path)
        if len(shape) != 2 or fortran:
            raise InputFormatError(self.path, f"expected a C-ordered (N, D) array, got shape {shape}")
        self._fh = open(self.path, "rb" if mode == "r" else "r+b")
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), 2
        self._row_bytes = self.shape[1] * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def _range(self, key) -> tuple[int, int, bool]:
        if isinstance(key, (int, np.integer)):
            k = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= k < self.shape[0]:
                raise IndexError(f"row {key} out of range for {self.shape[0]} rows")
            return k, k + 1, True
        if isinstance(key, slice) and key.step in (None, 1):
            a, b, _ = key.indices(self.shape[0])
            return a, max(a, b), False
        raise TypeError("NpyRows supports an int or a contiguous slice")

    def __getitem__(self, key) -> np.ndarray:
        a, b, single = self._range(key)
        raw = os.pread(self._fh.fileno(), (b - a) * self._row_bytes, self._offset + a * self._row_bytes)
        rows = np.frombuffer(raw, dtype=self.dtype).reshape(b - a, self.shape[1]).copy()
        return rows[0] if single else rows

    def __setitem__(self, key, values) -> None:
        a, b, _ = self._range(key)
        values = np.broadcast_to(np.asarray(values, dtype=self.dtype), (b - a, self.shape[1]))
        os.pwrite(self._fh.fileno(), np.ascontiguousarray(values).tobytes(), self._offset + a * self._row_bytes)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)

    def close(self) -> None:
        self._fh.close()

    def __del__(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()


class FeatureStore:
    """Read access to a features folder.

    ``load(video) -> (features (N, D) float16 memory map, present (N,) bool)``; ``rows(video)`` gives the
    same features as :class:`NpyRows` (read on demand, flat memory), which training and predict use.
    Every access checks the video's files first (:meth:`check`), so a truncated or otherwise damaged file
    is a one-line error naming it, never a crash or wrong numbers.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "features.json"
        if not meta_path.is_file():
            raise AffectMAEError(f"{self.root} is not a features folder (no features.json); run `affectmae extract` first")
        try:
            self.meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise InputFormatError(meta_path, f"invalid JSON ({err.msg})", line=err.lineno) from None
        if self.meta.get("format") != FEATURES_FORMAT or self.meta.get("version", 0) > FEATURES_VERSION:
            raise InputFormatError(meta_path, f"not an affectmae features file of version <= {FEATURES_VERSION}")
        try:
            self.dim = int(self.meta["dim"])
        except (KeyError, TypeError, ValueError):
            raise InputFormatError(meta_path, f"no feature size: 'dim' is {self.meta.get('dim')!r}") from None
        self.dtype = str(self.meta.get("dtype", "float16"))

    def videos(self) -> list[str]:
        """Videos whose extraction finished, sorted."""
        return sorted(p.name[:-4] for p in self.root.glob("*.npy") if not p.name.endswith(".mask.npy"))

    def __contains__(self, video: str) -> bool:
        return (self.root / f"{video}.npy").is_file()

    def check(self, video: str) -> int:
        """The number of frames of ``video``, after checking its two files (:func:`video_problem`):
        AffectMAEError when it has no features, InputFormatError naming the damaged file otherwise."""
        path = self.root / f"{video}.npy"
        if not path.is_file():
            raise AffectMAEError(f"no features for video {video!r} in {self.root} (expected {path.name})")
        found = video_problem(self.root, video, self.dim, dtype=self.dtype)
        if found is not None:
            raise InputFormatError(found[0], f"damaged feature file ({found[1]}); run `affectmae extract` "
                                             f"again to redo this video")
        return read_npy_header(path)[0][0]

    def load(self, video: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """features: (N, D) float16 (memory-mapped unless ``mmap=False``); present: (N,) bool."""
        self.check(video)
        feats = np.load(self.root / f"{video}.npy", mmap_mode="r" if mmap else None)
        present = np.load(self.root / f"{video}.mask.npy")
        return feats, present.astype(bool)

    def rows(self, video: str) -> tuple["NpyRows", np.ndarray]:
        """features: (N, D) float16 rows read on demand; present: (N,) bool."""
        self.check(video)
        return NpyRows(self.root / f"{video}.npy"), np.load(self.root / f"{video}.mask.npy").astype(bool)

    def n_frames(self, video: str) -> int:
        return self.check(video)


# ------------------------------------------------------------------------------------- missing frames
def _runs(missing: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of every run of True in ``missing`` (N,)."""
    padded = np.concatenate([[False], missing, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def fill_missing(features: np.ndarray, present: np.ndarray, method: str = "linear", chunk: int = 4096) -> np.ndarray:
    """Fill the rows of ``features`` (N, D) where ``present`` (N,) is False, in place; returns ``features``.

    Works run by run in chunks of ``chunk`` rows, so a memory-mapped array is never loaded whole.
    With no present frame at all the rows are left as zeros.
    """
    if method not in MISSING_METHODS:
        raise AffectMAEError(f"unknown missing-frame method {method!r}; choose one of {', '.join(MISSING_METHODS)}")
    n = features.shape[0]
    if present.all():
        return features
    if method == "zero" or not present.any():
        for a, b in _runs(~present):
            for s in range(a, b, chunk):
                features[s : min(b, s + chunk)] = 0
        return features
    for a, b in _runs(~present):
        left = np.asarray(features[a - 1], dtype=np.float32) if a > 0 else None
        right = np.asarray(features[b], dtype=np.float32) if b < n else None
        for s in range(a, b, chunk):
            e = min(b, s + chunk)
            t = np.arange(s, e)
            if left is None or right is None:
                row = left if right is None else right
                features[s:e] = row[None, :]
            elif method == "nearest":
                use_left = (t - (a - 1)) <= (b - t)
                features[s:e] = np.where(use_left[:, None], left[None, :], right[None, :])
            else:
                w = ((t - (a - 1)) / (b - (a - 1)))[:, None].astype(np.float32)
                features[s:e] = (1 - w) * left[None, :] + w * right[None, :]
    return features


# ------------------------------------------------------------------------------------------- writing
def write_video_features(root: Path, video: str, n: int, dim: int, batches, encode, missing: str) -> dict:
    """Stream ``batches`` through ``encode`` into ``root/<video>.npy`` via a temp file, then rename.

    ``batches`` yields ``(uint8 images (B, S, S, 3), frame indices, corrupt count)``; ``encode`` maps the
    images to ``(B, dim)`` float. The mask file is written before the feature file appears, so an existing
    ``<video>.npy`` always means a finished video.
    """
    final = root / f"{video}.npy"
    present = np.zeros(n, dtype=bool)
    corrupt = 0
    with atomic_path(final) as tmp:
        header = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))  # header + sparse file
        del header
        arr = NpyRows(tmp, mode="r+")  # rows go in with pwrite: resident memory stays flat
        try:
            for images, ks, bad in batches:
                corrupt += bad
                if ks:
                    feats = encode(images).astype(np.float16)
                    ks_arr = np.asarray(ks)
                    breaks = np.flatnonzero(np.diff(ks_arr) != 1) + 1
                    runs = zip(np.split(np.arange(len(ks)), breaks), np.split(ks_arr, breaks), strict=True)
                    for run_idx, run in runs:
                        arr[int(run[0]) : int(run[-1]) + 1] = feats[run_idx]
                    present[ks_arr] = True
            fill_missing(arr, present, missing)
            os.fsync(arr._fh.fileno())
        finally:
            arr.close()
        with atomic_path(root / f"{video}.mask.npy") as mtmp:
            with open(mtmp, "wb") as fh:
                np.save(fh, present)
    return {"frames": n, "present": int(present.sum()), "missing": int(n - present.sum()), "corrupt": corrupt}



def write_features_meta(root: Path, meta: dict) -> None:
    """Write ``root/features.json``; a folder already holding features of another encoder (other identifier,
    fingerprint, feature size or quantisation) is refused, so one folder never mixes two encoders' features."""
    from affectmae.features.fingerprint import WEIGHTS_ONLY_NOTE, compare_fingerprints, recorded_fingerprint

    meta_path = root / "features.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        before, now = recorded_fingerprint(old), recorded_fingerprint(meta)
        verdict = compare_fingerprints(before, now) if before is not None and now is not None else "same"
        if (old.get("encoder") != meta["encoder"] or old.get("dim") != meta["dim"] or verdict == "different"
                or old.get("quantize", "none") != meta["quantize"]):
            raise AffectMAEError(f"{root} already holds features of another encoder ({old.get('encoder')}, dim "
                                 f"{old.get('dim')}, quantize {old.get('quantize', 'none')}, sha256 "
                                 f"{before.shown[:12] if before else None}); use a new output folder")
        if verdict == "weights only":
            log.warning("%s %s; continuing it with the same encoder", meta_path, WEIGHTS_ONLY_NOTE)
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
