"""Which frames a video has, and their pixels: the input side of ``affectmae extract``.

Frame count per video: with an annotation root, the longest annotation file of that video over all tasks
and splits; otherwise (test videos) the largest frame number in ``FRAMES/<video>/``. Known Aff-Wild2 quirk:
some annotation files have one line more than there are frame images (the last frame has no image).
That frame is simply marked missing and filled, so the feature array always matches the annotation.

Frames are decoded in batches, in frame order; a corrupt JPEG is logged, counted and treated as missing.
Frames are decoded whole (:func:`affectmae.datasets.decode.decode_rgb`: simplejpeg or Pillow, the same
pixels as before), so features do not change. ``decoder="cuda"`` decodes each batch on the GPU (``torchvision.io.decode_jpeg(device="cuda")``,
nvJPEG); ``pack`` reads the frames from a packed folder (:mod:`affectmae.datasets.pack`) instead.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from affectmae.errors import AffectMAEError, InputFormatError

log = logging.getLogger(__name__)


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
    (largest frame number). ``frame_index`` is a :class:`affectmae.datasets.affwild2.FrameIndex`.

    A folder under the frames root that is neither annotated nor named in ``videos`` and holds no frame image
    is not a video (a frames root given one level too high holds such folders): it is left out, so the
    annotated videos are the ones looked up, and their missing frames reported by the caller."""
    counts: dict[str, int] = {}
    if annotation_root:
        counts = annotation_lengths(annotation_root)
    named = set(videos) if videos else set()
    names = named or set(counts) | set(frame_index.videos())
    out, not_videos = {}, []
    for video in sorted(names):
        nums = frame_index.frame_numbers(video)
        on_disk = int(nums.max()) if nums.size else 0
        n = counts.get(video, on_disk)
        if n == 0 and video not in named:
            not_videos.append(video)
            continue
        if n == 0:
            raise AffectMAEError(f"video {video!r}: no annotation and no frame images in {frame_index.root / video}")
        if on_disk > n:
            log.warning("video %s: frame images up to %d but the annotation has %d lines; images past %d are ignored",
                        video, on_disk, n, n)
        out[video] = n
    if not_videos:
        log.info("%s: %d folders without annotation or frame images are not videos (e.g. %s)", frame_index.root,
                 len(not_videos), not_videos[0])
    if not out:
        found = f" (its folders {', '.join(not_videos[:5])} hold no frame images)" if not_videos else ""
        raise AffectMAEError(f"no videos to extract: {frame_index.root} has no video folders{found}")
    return out


def _decode_batch(frame_index, video: str, ks: list[int], present: np.ndarray, size: int, decoder: str = "auto",
                  pack=None) -> tuple[np.ndarray, list[int], int]:
    """Decode frames ``ks`` that exist; returns (uint8 (B, size, size, 3), decoded ks, corrupt count)."""
    from affectmae.datasets.affwild2 import read_packed_frame
    from affectmae.datasets.decode import decode_rgb
    from affectmae.models.preprocess import resize_frame

    if decoder == "cuda" and pack is None:
        return _decode_batch_cuda(frame_index, video, ks, present, size)
    images, done, corrupt = [], [], 0
    for k in ks:
        if not present[k]:
            continue
        path = frame_index.frame_path(video, k)
        try:
            img = read_packed_frame(pack, video, k, path) if pack is not None else decode_rgb(path, 0, decoder)
        except InputFormatError as err:
            log.warning("%s", err)
            corrupt += 1
            continue
        images.append(resize_frame(img, size))
        done.append(k)
    arr = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return arr, done, corrupt


def _decode_batch_cuda(frame_index, video: str, ks: list[int], present: np.ndarray, size: int):
    """:func:`_decode_batch` with nvJPEG: the batch's files decoded together on the GPU, resized there when they
    are not ``size`` (the interpolation of :func:`~affectmae.models.preprocess.resize_frame`); returns a cuda
    uint8 tensor (B, size, size, 3). A batch nvJPEG refuses (a corrupt file in it) is decoded on the CPU, which
    names and counts the corrupt file as that path does."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    from affectmae.models.preprocess import INTERPOLATION

    done = [k for k in ks if present[k]]
    if not done:
        return torch.zeros((0, size, size, 3), dtype=torch.uint8, device="cuda"), [], 0
    data = [torch.frombuffer(bytearray(frame_index.frame_path(video, k).read_bytes()), dtype=torch.uint8)
            for k in done]
    try:
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda")  # list of (3, H, W) uint8 on the GPU
    except RuntimeError:
        arr, done_cpu, corrupt = _decode_batch(frame_index, video, ks, present, size, "auto")
        return torch.from_numpy(arr).cuda(), done_cpu, corrupt
    out = []
    for img in decoded:
        if tuple(img.shape[-2:]) != (size, size):
            x = F.interpolate(img[None].float(), size=(size, size), mode=INTERPOLATION.value, align_corners=False,
                              antialias=True)
            img = x[0].round_().clamp_(0, 255).to(torch.uint8)
        out.append(img)
    return torch.stack(out).permute(0, 2, 3, 1), done, 0


def iter_decoded(frame_index, video: str, n: int, present: np.ndarray, size: int, batch_size: int,
                 threads: int = 2, prefetch: int = 4, decoder: str = "auto",
                 pack=None) -> Iterator[tuple[np.ndarray, list[int], int]]:
    """Yield decoded batches of one video in frame order.

    ``threads >= 1``: decode ``prefetch`` batches ahead on a thread pool (PIL releases the GIL), which hides
    decoding behind a GPU encoder. ``threads == 0``: decode each batch when it is needed. On the CPU the
    encoder's matrix products already use every core, and a decoding thread competing with them costs more
    than decoding small JPEGs in line (measurements in docs/benchmarks.md).
    """
    batches = [list(range(s, min(n, s + batch_size))) for s in range(0, n, batch_size)]
    if threads == 0:
        for ks in batches:
            yield _decode_batch(frame_index, video, ks, present, size, decoder, pack)
        return
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending = []
        it = iter(batches)
        for ks in it:
            pending.append(pool.submit(_decode_batch, frame_index, video, ks, present, size, decoder, pack))
            if len(pending) >= prefetch:
                break
        for ks in it:
            yield pending.pop(0).result()
            pending.append(pool.submit(_decode_batch, frame_index, video, ks, present, size, decoder, pack))
        for fut in pending:
            yield fut.result()

