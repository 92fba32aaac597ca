"""Face images streamed from shards on shared or object storage (several nodes), in litdata's format.

    write_stream("packs/faces", "streams/faces")       # a finished faces pack (datasets/pack.py) -> litdata chunks
    faces = StreamFaces("streams/faces")              # or "s3://bucket/faces" (litdata downloads chunks to a cache)
    faces[i] -> (pixels (H, W, 3) uint8, -1)          # item i of the pack (the same pixels)
    sampler = StreamBatchSampler(faces.chunk_sizes, global_batch, rank, world_size, accum_steps, seed)
                                                      # training/stream_sampler.py

CLI: ``affectmae pack --images SPEC... -o OUT --format litdata`` packs the images (``OUT/pack``, resumable) and
writes the chunks to ``OUT/litdata``; ``pretrain stream=OUT/litdata`` reads them. litdata is an optional extra
(``pip install 'affectmae[streaming]'``), imported only here.

Why litdata: docs/training.md ("Several nodes") has the measurement (read rate per core of the same packed
images: litdata 0.2.76 37,000/s, webdataset 1.0.2 3,300/s) and the maintenance record. Each item holds only
integers and raw pixel bytes; the chunk index is checked to declare exactly those serializers before
litdata reads a chunk, so nothing is ever unpickled.

Sharding and shuffling across ranks (:class:`affectmae.training.stream_sampler.StreamBatchSampler`): every epoch the chunks are shuffled by
``(seed, epoch)`` and dealt to the ranks in turn, each rank shuffles the items of its own chunks, and all ranks
take the same number of items (the rest is dropped for that epoch, ``drop_last``). A rank therefore reads only
its own chunks in an epoch, the ranks' items are disjoint, and together they cover the set up to that
remainder. Rank and world size come from the training processes (torch.distributed, as every sampler here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from affectmae.datasets.pack import read_versioned_json
from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.io import atomic_write_text

STREAM_FORMAT = "affectmae-stream-litdata"
STREAM_VERSION = 1
STREAM_FILE = "stream.json"
#: litdata's serializer names for an item {"index": int, "height": int, "width": int, "pixels": bytes}
DATA_FORMAT = ["int", "int", "int", "bytes"]


def require_litdata() -> Any:
    try:
        import litdata
    except ImportError:
        raise AffectMAEError("streaming shards need the optional extra: pip install 'affectmae[streaming]' "
                             "(litdata)") from None
    return litdata


def write_stream(pack: str | Path, out: str | Path, chunk_bytes: str = "64MB") -> dict[str, Any]:
    """Write the readable images of the finished faces pack ``pack`` as litdata chunks in ``out``.

    The chunks are written into ``out.partial`` and moved to ``out`` when complete; a killed run starts over
    (it reads the pack: no decoding)."""
    require_litdata()
    from litdata.streaming.writer import BinaryWriter

    from affectmae.datasets.pack import Pack, PackError

    source = Pack(pack)
    if source.kind != "faces":
        raise PackError(f"{source.root} packs Aff-Wild2 frames; --format litdata writes face-image packs")
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = BinaryWriter(str(tmp), chunk_bytes=chunk_bytes)
    kept = 0
    for i in range(len(source)):
        try:
            pixels = source.pixels(i)
        except InputFormatError:  # not decodable when packed: the pack keeps its message
            continue
        writer.add_item(kept, {"index": i, "height": int(pixels.shape[0]), "width": int(pixels.shape[1]),
                               "pixels": pixels.tobytes()})
        kept += 1
    writer.done()
    writer.merge()
    meta = {"format": STREAM_FORMAT, "version": STREAM_VERSION, "items": kept, "pack_items": len(source),
            "min_side": source.meta["min_side"], "sources": source.meta["sources"]}
    atomic_write_text(tmp / STREAM_FILE, json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"stream": str(out), "stream_items": kept, "chunks": len(_read_index(out)["chunks"])}


def _read_index(root: Path) -> dict[str, Any]:
    path = root / "index.json"
    try:
        index = json.loads(path.read_text())
        fmt = index["config"]["data_format"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputFormatError(path, f"not a litdata chunk index ({err}); write it with affectmae pack --format "
                               "litdata") from None
    if fmt != DATA_FORMAT:
        raise InputFormatError(path, f"items declared as {fmt}, expected {DATA_FORMAT} (anything else could "
                               "unpickle); write it with affectmae pack --format litdata")
    return index


class StreamFaces(Dataset):
    """The images of a stream written by :func:`write_stream`, validated when opened: ``(pixels, -1)`` items."""

    def __init__(self, path: str | Path):
        self.root = Path(path)
        meta_path = self.root / STREAM_FILE
        if not meta_path.is_file():
            raise AffectMAEError(f"{self.root}: not a stream folder (no {STREAM_FILE}); write one with affectmae "
                                 "pack --format litdata")
        meta = read_versioned_json(meta_path, STREAM_FORMAT, STREAM_VERSION, "stream", "write it again")
        index = _read_index(self.root)
        self.meta = meta
        self.chunk_sizes = [int(c["chunk_size"]) for c in index["chunks"]]
        if sum(self.chunk_sizes) != meta["items"]:
            raise InputFormatError(self.root / "index.json", f"{sum(self.chunk_sizes)} items in its chunks, "
                                   f"{STREAM_FILE} says {meta['items']}; write the stream again")
        self._data: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}  # each DataLoader worker opens its own reader

    def __len__(self) -> int:
        return int(self.meta["items"])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if self._data is None:
            self._data = require_litdata().StreamingDataset(str(self.root))
        item = self._data[int(i)]
        h, w = int(item["height"]), int(item["width"])
        pixels = np.frombuffer(item["pixels"], dtype=np.uint8)
        if pixels.size != h * w * 3:
            raise InputFormatError(self.root, f"item {i}: {pixels.size} pixel bytes for {h}x{w}x3; write the stream "
                                   "again")
        return pixels.reshape(h, w, 3), -1
