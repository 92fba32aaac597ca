"""The feature store: one float16 ``(N, D)`` array and one ``(N,)`` mask per video (``affectmae extract``).

Layout of a features folder::

    FEATURES/features.json        {"format": "affectmae-features", "version": 1, "encoder": ..., "encoder_meta": ...,
                                   "dim": D, "dtype": "float16", "missing": "linear", "mask": "present"}
    FEATURES/<video>.npy          (N, D) float16, one row per frame (frame k is image %05d.jpg % (k + 1))
    FEATURES/<video>.mask.npy     (N,) bool, True where the frame image existed and was decoded

``encoder`` in features.json names what made the features: the resolved checkpoint path, ``pixels:<S>``
(grey S x S pixels) or ``random:<checkpoint>@seed<k>`` (that architecture with random weights); the
baselines of the ablation table are extracted through this same code path
(:mod:`affectmae.models.baseline_encoders`).

Frames without an image (no face found, or a corrupt JPEG, which is counted and reported) get a
feature anyway, so every frame has a prediction later: ``missing="linear"`` interpolates in time between
the nearest present frames (copying the nearest one before the first / after the last present frame),
``"nearest"`` copies the nearest present frame and ``"zero"`` leaves zeros. The mask is kept either way;
the temporal model can also replace those rows by a learned "missing" embedding
(``TemporalConfig.missing_embedding``).

Frame count per video: with ``annotations``, the longest annotation file of that video over all tasks and
splits; otherwise (test videos) the largest frame number in ``FRAMES/<video>/``. Known Aff-Wild2 quirk:
some annotation files have one line more than there are frame images (the last frame has no image).
That frame is simply marked missing and filled, so the feature array always matches the annotation.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FEATURES_FORMAT = "affectmae-features"
FEATURES_VERSION = 1
MISSING_METHODS = ("linear", "nearest", "zero")


# ----------------------------------------------------------------------------------------------- reading
class NpyRows:
    """Rows of a 2-D ``.npy`` file read and written with ``pread``/``pwrite``, never memory-mapped, so
    the process's resident memory does not grow with the file (a memory map keeps every page it touched).

    ``rows[k]`` -> (D,), ``rows[a:b]`` -> (b - a, D) (new arrays); ``rows[a:b] = values`` writes in place
    (mode ``"r+"``). ``shape``, ``dtype``, ``ndim`` and ``len()`` work as for an array.
    """

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        self._fh = open(self.path, "rb" if mode == "r" else "r+b")
        try:
            version = np.lib.format.read_magic(self._fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(self._fh)
        except ValueError as err:
            self._fh.close()
            raise InputFormatError(self.path, f"not a .npy file ({err})") from None
        if len(shape) != 2 or fortran:
            self._fh.close()
            raise InputFormatError(self.path, f"expected a C-ordered (N, D) array, got shape {shape}")
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), 2
        self._offset = self._fh.tell()
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
        self.dim = int(self.meta["dim"])

    def videos(self) -> list[str]:
        """Videos whose extraction finished, sorted."""
        return sorted(p.name[:-4] for p in self.root.glob("*.npy") if not p.name.endswith(".mask.npy"))

    def __contains__(self, video: str) -> bool:
        return (self.root / f"{video}.npy").is_file()

    def load(self, video: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """features: (N, D) float16 (memory-mapped unless ``mmap=False``); present: (N,) bool."""
        path = self.root / f"{video}.npy"
        if not path.is_file():
            raise AffectMAEError(f"no features for video {video!r} in {self.root} (expected {path.name})")
        feats = np.load(path, mmap_mode="r" if mmap else None)
        present = np.load(self.root / f"{video}.mask.npy")
        if feats.ndim != 2 or feats.shape[1] != self.dim or present.shape != (feats.shape[0],):
            raise InputFormatError(path, f"shape {feats.shape} / mask {present.shape} do not match dim {self.dim}")
        return feats, present.astype(bool)

    def rows(self, video: str) -> tuple["NpyRows", np.ndarray]:
        """features: (N, D) float16 rows read on demand; present: (N,) bool."""
        feats, present = self.load(video)
        n = feats.shape[0]
        del feats
        rows = NpyRows(self.root / f"{video}.npy")
        if len(rows) != n:  # pragma: no cover - same file
            raise InputFormatError(rows.path, "changed while reading")
        return rows, present

    def n_frames(self, video: str) -> int:
        path = self.root / f"{video}.npy"
        if not path.is_file():
            raise AffectMAEError(f"no features for video {video!r} in {self.root} (expected {path.name})")
        return len(NpyRows(path))


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


# ---------------------------------------------------------------------------------------- frame counts
def annotation_lengths(annotation_root: str | Path) -> dict[str, int]:
    """Longest annotation (number of frames) per video over every task and split found under the root."""
    from affectmae.datasets.annotations import has_split, load_annotations
    from affectmae.tasks import SPLITS, TASKS

    lengths: dict[str, int] = {}
    for name in TASKS:
        for split in SPLITS:
            if not has_split(annotation_root, name, split):
                continue  # e.g. a dataset with only the AU challenge
            for vl in load_annotations(annotation_root, name, split):
                lengths[vl.video] = max(lengths.get(vl.video, 0), int(vl.labels.shape[0]))
    if not lengths:
        raise AffectMAEError(f"no annotation files found under {annotation_root} "
                             f"(expected e.g. VA_Estimation_Challenge/Train_Set/<video>.txt)")
    return lengths


def video_frame_counts(frame_index, annotation_root: str | Path | None = None,
                       videos: list[str] | None = None) -> dict[str, int]:
    """Frames per video: from the annotations when given (union over tasks), else from the frame folders
    (largest frame number). ``frame_index`` is a :class:`affectmae.datasets.affwild2.FrameIndex`."""
    counts: dict[str, int] = {}
    if annotation_root:
        counts = annotation_lengths(annotation_root)
    names = set(videos) if videos else set(counts) | set(frame_index.videos())
    out = {}
    for video in sorted(names):
        nums = frame_index.frame_numbers(video)
        on_disk = int(nums.max()) if nums.size else 0
        n = counts.get(video, on_disk)
        if n == 0:
            raise AffectMAEError(f"video {video!r}: no annotation and no frame images in {frame_index.root / video}")
        if on_disk > n:
            log.warning("video %s: frame images up to %d but the annotation has %d lines; images past %d are ignored",
                        video, on_disk, n, n)
        out[video] = n
    if not out:
        raise AffectMAEError(f"no videos to extract: {frame_index.root} has no video folders")
    return out


# ------------------------------------------------------------------------------------------- decoding
def _decode_batch(frame_index, video: str, ks: list[int], present: np.ndarray, size: int) -> tuple[np.ndarray, list[int], int]:
    """Decode frames ``ks`` that exist; returns (uint8 (B, size, size, 3), decoded ks, corrupt count)."""
    from PIL import Image

    from affectmae.datasets.images import load_rgb

    images, done, corrupt = [], [], 0
    for k in ks:
        if not present[k]:
            continue
        try:
            img = load_rgb(frame_index.frame_path(video, k))
        except InputFormatError as err:
            log.warning("%s", err)
            corrupt += 1
            continue
        if img.shape[:2] != (size, size):
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
        images.append(img)
        done.append(k)
    arr = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return arr, done, corrupt


def iter_decoded(frame_index, video: str, n: int, present: np.ndarray, size: int, batch_size: int,
                 threads: int = 2, prefetch: int = 4) -> Iterator[tuple[np.ndarray, list[int], int]]:
    """Yield decoded batches of one video in frame order.

    ``threads >= 1``: decode ``prefetch`` batches ahead on a thread pool (PIL releases the GIL), which hides
    decoding behind a GPU encoder. ``threads == 0``: decode each batch when it is needed. On the CPU the
    encoder's matrix products already use every core, and a decoding thread competing with them cost more
    (extract at 0.84 of the encoder alone, 2 cores) than decoding 112 px JPEGs in line (about 0.4 ms a frame).
    """
    batches = [list(range(s, min(n, s + batch_size))) for s in range(0, n, batch_size)]
    if threads == 0:
        for ks in batches:
            yield _decode_batch(frame_index, video, ks, present, size)
        return
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending = []
        it = iter(batches)
        for ks in it:
            pending.append(pool.submit(_decode_batch, frame_index, video, ks, present, size))
            if len(pending) >= prefetch:
                break
        for ks in it:
            yield pending.pop(0).result()
            pending.append(pool.submit(_decode_batch, frame_index, video, ks, present, size))
        for fut in pending:
            yield fut.result()


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


@dataclass
class ExtractConfig:
    encoder: str = ""  # encoder checkpoint (ours, reference MAE .pth, timm), or pixels[:S] / random:<checkpoint>
    seed: int = 0  # weights of a random:<checkpoint> encoder (models/baseline_encoders.py)
    frames: str = ""  # cropped_aligned/ root: <frames>/<video>/00001.jpg
    out: str = ""  # features folder
    annotations: str = ""  # optional Aff-Wild2 annotation root (frame counts); "" = count from the frame folders
    videos: list[str] | None = None  # optional subset of videos
    batch_size: int = 32
    decode_threads: int = -1  # -1 auto: 0 on CPU (decode between batches), 2 on GPU (decode ahead); see iter_decoded
    missing: str = "linear"  # linear | nearest | zero
    torch_threads: int = 0  # 0 = torch default
    device: str = "auto"  # auto = cuda when available, else cpu
    quantize: str = "none"  # none | int8: dynamic int8 Linear layers (CPU; faster, see docs/benchmarks.md)


QUANTIZE_MODES = ("none", "int8")


def quantize_encoder(encoder, mode: str):
    """``mode="int8"``: the encoder with its Linear layers dynamically quantised to int8 (CPU only).

    ``benchmarks/bench_extract.py`` reports the speed-up and the cosine similarity to fp32 features.
    """
    import torch

    if mode == "none":
        return encoder
    if mode != "int8":
        raise AffectMAEError(f"unknown quantize mode {mode!r}; choose one of {', '.join(QUANTIZE_MODES)}")
    from affectmae.models.fast_linear import use_fast_linear

    plain = use_fast_linear(copy.deepcopy(encoder), enabled=False)  # the quantiser maps plain nn.Linear only
    return torch.ao.quantization.quantize_dynamic(plain, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def extract_features(cfg: ExtractConfig) -> dict:
    """Run the encoder over every frame of every video; resumable (finished videos are skipped).

    Returns a summary: videos done/skipped, frames, missing and corrupt frame counts, frames/s.
    """
    import time

    import torch
    from tqdm import tqdm

    from affectmae.datasets.affwild2 import FrameIndex
    from affectmae.models.baseline_encoders import build_extract_encoder
    from affectmae.models.vit import preprocess_frames

    if cfg.missing not in MISSING_METHODS:
        raise AffectMAEError(f"unknown missing-frame method {cfg.missing!r}; choose one of {', '.join(MISSING_METHODS)}")
    if not cfg.encoder or not cfg.frames or not cfg.out:
        raise AffectMAEError("extract needs an encoder checkpoint, a frames folder and an output folder")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    frame_index = FrameIndex(cfg.frames)
    counts = video_frame_counts(frame_index, cfg.annotations or None, list(cfg.videos) if cfg.videos else None)
    from affectmae.device import select_device

    device = select_device(cfg.device)
    if cfg.quantize not in QUANTIZE_MODES:
        raise AffectMAEError(f"unknown quantize mode {cfg.quantize!r}; choose one of {', '.join(QUANTIZE_MODES)}")
    if cfg.quantize != "none":
        if device.type != "cpu":
            raise AffectMAEError(f"quantize={cfg.quantize} runs on the CPU only; use device=cpu")
    built, enc_id, enc_meta = build_extract_encoder(cfg.encoder, cfg.seed)
    encoder = quantize_encoder(built.eval().to(device), cfg.quantize)
    decode_threads = cfg.decode_threads if cfg.decode_threads >= 0 else (0 if device.type == "cpu" else 2)
    dim = int(encoder.embed_dim)
    size = int(encoder.arch["img_size"])
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"format": FEATURES_FORMAT, "version": FEATURES_VERSION, "encoder": enc_id,
            "encoder_meta": enc_meta, "dim": dim, "dtype": "float16", "img_size": size, "missing": cfg.missing,
            "quantize": cfg.quantize,
            "mask": "present: True where the frame image existed and decoded"}
    meta_path = root / "features.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if (old.get("encoder") != meta["encoder"] or old.get("dim") != dim
                or old.get("quantize", "none") != cfg.quantize):
            raise AffectMAEError(f"{root} already holds features of another encoder ({old.get('encoder')}, dim "
                                 f"{old.get('dim')}, quantize {old.get('quantize', 'none')}); use a new output folder")
    atomic_write_text(meta_path, json.dumps(meta, indent=2))

    @torch.inference_mode()
    def encode(images: np.ndarray) -> np.ndarray:
        x = preprocess_frames(images, size).to(device)
        return encoder.forward_features(x)["pooled"].float().cpu().numpy()

    todo = [v for v in counts if not (root / f"{v}.npy").is_file()]
    summary = {"videos": len(counts), "skipped_done": len(counts) - len(todo), "extracted": 0, "frames": 0,
               "missing": 0, "corrupt": 0, "per_video": {}}
    if summary["skipped_done"]:
        log.info("%d of %d videos already extracted in %s; skipping them", summary["skipped_done"], len(counts), root)
    t0 = time.perf_counter()
    bar = tqdm(total=sum(counts[v] for v in todo), unit="frame", desc="extract", disable=None)
    for video in todo:
        n = counts[video]
        present = frame_index.available(video, n)
        batches = iter_decoded(frame_index, video, n, present, size, cfg.batch_size, decode_threads)

        def counted(batches=batches):
            for images, ks, bad in batches:
                yield images, ks, bad
                bar.update(len(ks) + bad if ks or bad else 0)

        info = write_video_features(root, video, n, dim, counted(), encode, cfg.missing)
        bar.update(n - info["present"] - info["corrupt"])
        summary["per_video"][video] = info
        summary["extracted"] += 1
        summary["frames"] += n
        summary["missing"] += info["missing"]
        summary["corrupt"] += info["corrupt"]
    bar.close()
    seconds = time.perf_counter() - t0
    summary["seconds"] = round(seconds, 3)
    summary["frames_per_s"] = round(summary["frames"] / seconds, 2) if seconds > 0 else None
    if summary["corrupt"]:
        log.warning("%d corrupt frame images were treated as missing (see warnings above)", summary["corrupt"])
    log.info("extracted %d videos (%d frames, %d without image filled by %s) into %s",
             summary["extracted"], summary["frames"], summary["missing"], cfg.missing, root)
    return summary
