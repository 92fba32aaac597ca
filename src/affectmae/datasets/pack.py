"""The packed form of the face-image sets and of Aff-Wild2's frames: decoded once, read by every later epoch.

    summary = pack_faces(["affectnet:/data/AffectNet", ...], "packs/faces", min_side=224, workers=8)
    summary = pack_frames("/data/Aff-Wild2/cropped_aligned", "packs/aw2", workers=8)
    pack = Pack("packs/faces")                  # validated: format, version, complete, every shard's shape and size
    pack.pixels(i) -> (H, W, 3) uint8           # item i (a read-only view of a memory-mapped shard)

CLI: ``affectmae pack --images SPEC ... -o PACK`` or ``affectmae pack --frames CROPPED_ALIGNED -o PACK``; then
``pack=PACK`` for ``pretrain``, ``finetune`` and ``extract``.

What is stored is exactly what the JPEG path decodes (:func:`affectmae.datasets.decode.decode_rgb` with the
same ``min_side``, through each source's own ``load_image``), so the augmentation sees the same pixels from
either path. Layout of ``PACK/``:

- ``pack.json``: ``format`` (``affectmae-pack``), ``version``, ``kind`` (``faces`` or ``frames``), ``min_side``,
  ``decoder``, ``shard_size``, ``items``, ``sources`` (what was packed, to check a dataset against), ``complete``;
- ``frames.npz`` (frames only): ``videos`` (V,) names, ``counts`` (V,) frames per video, ``numbers`` (N,) the
  1-based frame numbers, in item order;
- per shard ``k`` of ``shard_size`` items: ``shard_k.pixels.npy`` (all pixels, flat uint8),
  ``shard_k.index.npy`` ((n, 3) int64: offset, height, width; height 0 for an image that could not be
  decoded) and ``shard_k.errors.json`` (the error message of each such image). The three files of a shard
  appear together or not at all (:func:`affectmae.io.atomic_paths`), so a killed ``pack`` run resumes by
  writing only the shards that are missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.io import OutputLayout, atomic_paths, atomic_write_text, check_output_dir, prepare_output_dir
from affectmae.progress import progress_bar

log = logging.getLogger(__name__)

PACK_FORMAT = "affectmae-pack"
PACK_VERSION = 1
PACK_FILE = "pack.json"
FRAMES_FILE = "frames.npz"
PACK_LAYOUT = OutputLayout("pack", finished=(PACK_FILE,), owned=(PACK_FILE, FRAMES_FILE, "shard_*"),
                           continues=True)


def read_versioned_json(path: Path, fmt: str, version: int, what: str, again: str) -> dict:
    """The JSON object in ``path``, checked to be a ``fmt`` file of ``version`` (``what`` and ``again`` word the
    message of a version this affectmae does not read); anything else is an InputFormatError naming ``path``."""
    try:
        meta = json.loads(Path(path).read_text())
    except (ValueError, OSError) as err:
        raise InputFormatError(path, f"unreadable ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise InputFormatError(path, f"not an {fmt} file")
    if meta.get("version") != version:
        raise InputFormatError(path, f"{what} version {meta.get('version')}, this affectmae reads version "
                               f"{version}; {again}")
    return meta


class PackError(AffectMAEError):
    """A packed folder that cannot be used: wrong format or version, unfinished, a damaged shard, or packed from
    other data than the run reads."""


def _shard_files(root: Path, k: int) -> tuple[Path, Path, Path]:
    stem = f"shard_{k:05d}"
    return root / f"{stem}.pixels.npy", root / f"{stem}.index.npy", root / f"{stem}.errors.json"


# ------------------------------------------------------------------------------------------------ writing
class _FaceItems:
    """Item i of a face collection -> its pixels (what ``FaceImages.load_image`` decodes)."""

    def __init__(self, collection: Any):
        self.collection = collection

    def __call__(self, i: int) -> np.ndarray:
        source, j = self.collection.locate(i)
        return np.asarray(source.load_image(j), dtype=np.uint8)


class _FrameItems:
    def __init__(self, frame_index: Any, videos: np.ndarray, numbers: np.ndarray, min_side: int, decoder: str):
        self.frame_index, self.videos, self.numbers = frame_index, videos, numbers
        self.min_side, self.decoder = min_side, decoder

    def __call__(self, i: int) -> np.ndarray:
        from affectmae.datasets.decode import decode_rgb

        path = self.frame_index.frame_path(str(self.videos[i]), int(self.numbers[i]) - 1)
        return decode_rgb(path, self.min_side, self.decoder)


def _write_shard(root: Path, k: int, start: int, stop: int, load: Callable[[int], np.ndarray]) -> int:
    """Decode items [start, stop) and write shard k atomically; returns how many could not be decoded."""
    chunks, index, errors, offset = [], np.zeros((stop - start, 3), np.int64), {}, 0
    for row, i in enumerate(range(start, stop)):
        try:
            pixels = load(i)
        except InputFormatError as err:
            errors[str(i)] = err.message  # the file is named again by the reader
            index[row] = (offset, 0, 0)
            continue
        index[row] = (offset, pixels.shape[0], pixels.shape[1])
        chunks.append(np.ascontiguousarray(pixels).reshape(-1))
        offset += pixels.size
    flat = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    with atomic_paths(_shard_files(root, k)) as (pix_tmp, idx_tmp, err_tmp):
        with open(pix_tmp, "wb") as fh:
            np.save(fh, flat)
        with open(idx_tmp, "wb") as fh:
            np.save(fh, index)
        err_tmp.write_text(json.dumps(errors, indent=0) + "\n")
    return len(errors)


def _write_pack(root: Path, meta: dict[str, Any], load: Callable[[int], np.ndarray], workers: int,
                overwrite: bool, extra: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    mode = check_output_dir(root, PACK_LAYOUT, overwrite=overwrite)
    if mode == "continue":
        old = json.loads((root / PACK_FILE).read_text())
        keys = ("format", "version", "kind", "min_side", "decoder", "shard_size", "items", "sources")
        differ = [key for key in keys if old.get(key) != meta.get(key)]
        if differ:
            raise PackError(f"{root} holds a pack of other data or settings ({', '.join(differ)} differ); pass "
                            "--overwrite to replace it, or choose another -o folder")
    root = prepare_output_dir(root, PACK_LAYOUT, mode)
    atomic_write_text(root / PACK_FILE, json.dumps({**meta, "complete": False}, indent=1) + "\n")
    if extra is not None:
        with atomic_paths([root / FRAMES_FILE]) as (tmp,):
            with open(tmp, "wb") as fh:
                np.savez(fh, **extra)
    n, size = meta["items"], meta["shard_size"]
    shards = [(k, k * size, min(n, (k + 1) * size)) for k in range(-(-n // size))]
    todo = [s for s in shards if _shard_problem(root, s[0], s[2] - s[1]) is not None]
    if len(todo) < len(shards):
        log.info("%s: %d of %d shards already written; writing the other %d", root, len(shards) - len(todo),
                 len(shards), len(todo))
    bad = 0
    bar = progress_bar(total=sum(stop - start for _, start, stop in todo), desc="pack", unit="image")
    if workers > 0:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [(pool.submit(_write_shard, root, k, a, b, load), b - a) for k, a, b in todo]
            for fut, count in futures:
                bad += fut.result()
                bar.update(count)
    else:
        for k, a, b in todo:
            bad += _write_shard(root, k, a, b, load)
            bar.update(b - a)
    bar.close()
    atomic_write_text(root / PACK_FILE, json.dumps({**meta, "complete": True}, indent=1) + "\n")
    log.info("packed %d images into %d shards in %s (%d could not be decoded)", n, len(shards), root, bad)
    return {"pack": str(root), "items": n, "shards": len(shards), "written": len(todo), "undecodable": bad}


def source_record(source: Any, spec: str) -> dict[str, Any]:
    """What identifies a face source's items: its spec, length and a hash of its file list (in order)."""
    paths = getattr(source, "_paths", None) or []
    digest = hashlib.sha256("\n".join(os.path.relpath(p, source.source) for p in paths).encode()).hexdigest()
    return {"spec": spec, "len": len(source), "files_sha256": digest}


def pack_faces(specs: list[str], out: str | Path, min_side: int = 224, decoder: str = "auto",
               shard_size: int = 2048, workers: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Decode every image of the face sources ``specs`` (at ``min_side``, :mod:`affectmae.datasets.decode`) into
    the packed folder ``out``; a rerun finishes a killed one."""
    from affectmae.datasets.decode import image_decoder
    from affectmae.datasets.face_images import build_face_dataset

    collection = build_face_dataset(list(specs), min_side=min_side, decoder=decoder)
    meta = {"format": PACK_FORMAT, "version": PACK_VERSION, "kind": "faces", "min_side": min_side,
            "decoder": image_decoder(decoder), "shard_size": shard_size, "items": len(collection),
            "sources": [source_record(s, spec) for s, spec in zip(collection.sources, specs, strict=True)]}
    return _write_pack(Path(out), meta, _FaceItems(collection), workers, overwrite)


def pack_frames(frames: str | Path, out: str | Path, min_side: int = 0, decoder: str = "auto",
                shard_size: int = 4096, workers: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Decode every ``%05d.jpg`` frame under the Aff-Wild2 frames root ``frames`` into the packed folder ``out``."""
    from affectmae.datasets.affwild2 import FrameIndex
    from affectmae.datasets.decode import image_decoder

    index = FrameIndex(frames)
    videos = [v for v in index.videos() if index.frame_numbers(v).size]
    if not videos:
        raise AffectMAEError(f"{index.root}: no frame images (<video>/00001.jpg) to pack")
    counts = np.array([index.frame_numbers(v).size for v in videos], np.int64)
    numbers = np.concatenate([index.frame_numbers(v) for v in videos]).astype(np.int64)
    names = np.repeat(np.array(videos), counts)
    listing = hashlib.sha256(b"".join(v.encode() + b"\0" + index.frame_numbers(v).tobytes() for v in videos))
    meta = {"format": PACK_FORMAT, "version": PACK_VERSION, "kind": "frames", "min_side": min_side,
            "decoder": image_decoder(decoder), "shard_size": shard_size, "items": int(counts.sum()),
            "sources": [{"frames": str(index.root), "videos": len(videos), "listing_sha256": listing.hexdigest()}]}
    return _write_pack(Path(out), meta, _FrameItems(index, names, numbers, min_side, decoder), workers, overwrite,
                       extra={"videos": np.array(videos), "counts": counts, "numbers": numbers})


# ------------------------------------------------------------------------------------------------ reading
def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, expected file size) from a .npy header, without reading the data."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
        header = fh.tell()
    return shape, dtype, header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _shard_problem(root: Path, k: int, count: int) -> str | None:
    """None when shard k is whole and holds ``count`` items, else what is wrong with it (one line)."""
    pix, idx, err = _shard_files(root, k)
    missing = [p.name for p in (pix, idx, err) if not p.is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    for path, want_dtype in ((pix, np.uint8), (idx, np.int64)):
        try:
            shape, dtype, size = _npy_shape(path)
        except (ValueError, OSError, SyntaxError) as exc:
            return f"{path.name}: not a readable .npy file ({exc})"
        if dtype != want_dtype:
            return f"{path.name}: dtype {dtype}, expected {np.dtype(want_dtype)}"
        found = path.stat().st_size
        if found != size:
            return f"{path.name}: truncated ({found} of {size} bytes)" if found < size else \
                f"{path.name}: {found - size} bytes beyond its data"
        if path == idx and shape != (count, 3):
            return f"{path.name}: shape {shape}, expected ({count}, 3)"
        if path == pix and len(shape) != 1:
            return f"{path.name}: shape {shape}, expected one dimension"
    return None


class Pack:
    """A finished packed folder, validated when opened (see the module doc). Picklable for DataLoader workers
    (each process maps the shards it reads)."""

    def __init__(self, path: str | Path):
        self.root = Path(path)
        meta_path = self.root / PACK_FILE
        if not meta_path.is_file():
            raise PackError(f"{self.root}: not a packed folder (no {PACK_FILE}); build one with affectmae pack")
        meta = read_versioned_json(meta_path, PACK_FORMAT, PACK_VERSION, "pack", "pack the data again")
        if not meta.get("complete"):
            raise PackError(f"{self.root}: packing did not finish; run the same affectmae pack command again to "
                            "finish it")
        self.meta, self.kind = meta, meta["kind"]
        self.items, self.shard_size = int(meta["items"]), int(meta["shard_size"])
        for k in range(-(-self.items // self.shard_size)):
            count = min(self.items, (k + 1) * self.shard_size) - k * self.shard_size
            problem = _shard_problem(self.root, k, count)
            if problem is not None:
                raise PackError(f"{_shard_files(self.root, k)[0].parent / f'shard_{k:05d}'}: {problem}; delete "
                                "the shard's files and run affectmae pack again to rewrite it")
        self._open: dict[int, tuple[np.ndarray, np.ndarray, dict[str, str]]] = {}
        self._frames: dict[str, tuple[int, np.ndarray]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}

    def __len__(self) -> int:
        return self.items

    def _shard(self, k: int) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        if k not in self._open:
            pix, idx, err = _shard_files(self.root, k)
            self._open[k] = (np.load(pix, mmap_mode="r"), np.load(idx), json.loads(err.read_text()))
            offsets, sizes = self._open[k][1][:, 0], self._open[k][1][:, 1] * self._open[k][1][:, 2] * 3
            if len(offsets) and int((offsets + sizes).max()) > self._open[k][0].size:
                raise PackError(f"{pix}: its index points past its {self._open[k][0].size} bytes; rewrite the shard")
        return self._open[k]

    def pixels(self, i: int) -> np.ndarray:
        """Item ``i`` as (H, W, 3) uint8 (read-only); InputFormatError with the packing's message for an image
        that could not be decoded when it was packed (naming the pack; callers name the original file)."""
        k, row = divmod(int(i), self.shard_size)
        flat, index, errors = self._shard(k)
        offset, h, w = (int(v) for v in index[row])
        if h == 0:
            raise InputFormatError(self.root, errors.get(str(i), f"item {i} could not be decoded when packed"))
        return flat[offset:offset + h * w * 3].reshape(h, w, 3)

    # frames packs: (video, 1-based frame number) -> item
    def frame_item(self, video: str, number: int) -> int | None:
        """The item of frame ``number`` (1-based) of ``video``, None when the pack does not hold it."""
        frames = self._frame_table()
        if video not in frames:
            return None
        start, numbers = frames[video]
        j = int(np.searchsorted(numbers, number))
        return start + j if j < len(numbers) and numbers[j] == number else None

    def frame_numbers(self, video: str) -> np.ndarray:
        frames = self._frame_table()
        return frames[video][1] if video in frames else np.zeros(0, np.int64)

    def _frame_table(self) -> dict[str, tuple[int, np.ndarray]]:
        if self.kind != "frames":
            raise PackError(f"{self.root} packs face images, not Aff-Wild2 frames")
        if self._frames is None:
            path = self.root / FRAMES_FILE
            try:
                with np.load(path, allow_pickle=False) as z:
                    videos, counts, numbers = z["videos"], z["counts"], z["numbers"]
            except (OSError, ValueError, KeyError) as err:
                raise InputFormatError(path, f"unreadable frame table ({err}); pack the frames again") from None
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self._frames = {str(v): (int(s), numbers[s:s + c]) for v, s, c in zip(videos, starts, counts, strict=True)}
        return self._frames


def attach_face_pack(collection: Any, pack: Pack) -> None:
    """Make every source of ``collection`` read its images from ``pack``; refused (one line) when the pack was
    built from other sources, another listing of them or at another ``min_side``."""
    if pack.kind != "faces":
        raise PackError(f"{pack.root} packs Aff-Wild2 frames; pretraining reads a pack of face images")
    records = [source_record(s, spec) for s, spec in zip(collection.sources, collection.specs, strict=True)]
    if records != pack.meta["sources"]:
        packed = ", ".join(f"{r['spec']} ({r['len']})" for r in pack.meta["sources"])
        given = ", ".join(f"{r['spec']} ({r['len']})" for r in records)
        raise PackError(f"{pack.root} was packed from {packed}, not from the sources given: {given} (or their files "
                        "changed); pack them again")
    start = 0
    for source in collection.sources:
        if source.min_side != pack.meta["min_side"]:
            raise PackError(f"{pack.root} holds images decoded at min_side {pack.meta['min_side']}, the run decodes "
                            f"at {source.min_side}; set decode_min_side={pack.meta['min_side']} or pack again")
        source.pack, source.pack_offset = pack, start
        start += len(source)


def run_pack(images: list[str] | None = None, frames: str | None = None, out: str = "", min_side: int | None = None,
             decoder: str = "auto", shard_size: int | None = None, workers: int = 0,
             overwrite: bool = False, fmt: str = "affectmae") -> dict[str, Any]:
    """``affectmae pack``: face sources (``images``, default ``min_side`` 224, twice the 112-px input, what
    ``pretrain``'s ``decode_min_side`` defaults to) or an Aff-Wild2 frames root (``frames``, default full size).
    ``fmt="litdata"`` (face sources): the pack in ``out/pack``, then its images as litdata chunks in
    ``out/litdata`` (:mod:`affectmae.datasets.streaming`)."""
    if bool(images) == bool(frames) or not out:
        raise AffectMAEError("pack needs either --images SPEC... or --frames CROPPED_ALIGNED, and -o PACK")
    if fmt == "litdata":
        from affectmae.datasets.streaming import require_litdata, write_stream

        if frames:
            raise AffectMAEError("--format litdata writes face-image packs (--images), for pretrain stream=DIR")
        require_litdata()  # before any decoding
        packed = run_pack(images, None, str(Path(out) / "pack"), min_side, decoder, shard_size, workers, overwrite)
        return {**packed, **write_stream(Path(out) / "pack", Path(out) / "litdata")}
    if min_side is not None and min_side < 0:
        raise AffectMAEError(f"--min-side must be >= 0, got {min_side}")
    if shard_size is not None and shard_size < 1:
        raise AffectMAEError(f"--shard-size must be >= 1, got {shard_size}")
    if images:
        return pack_faces(images, out, 224 if min_side is None else min_side, decoder, shard_size or 2048, workers,
                          overwrite)
    return pack_frames(frames, out, min_side or 0, decoder, shard_size or 4096, workers, overwrite)


def open_frames_pack(path: str | Path) -> Pack:
    """A validated pack of Aff-Wild2 frames (``finetune`` and ``extract`` read it through the frame index)."""
    pack = Pack(path)
    if pack.kind != "frames":
        raise PackError(f"{pack.root} packs face images; finetune and extract read a pack of Aff-Wild2 frames "
                        "(affectmae pack --frames)")
    return pack
