"""Which frames a video has, and their pixels: the input side of ``affectmae extract``.

Frame count per video: with an annotation root, the longest annotation file of that video over all tasks
and splits; otherwise (test videos) the largest frame number in ``FRAMES/<video>/``. Known Aff-Wild2 quirk:
some annotation files have one line more than there are frame images (the last frame has no image).
That frame is simply marked missing and filled, so the feature array always matches the annotation.

Frames are decoded in batches, in frame order; a corrupt JPEG is logged, counted and treated as missing.
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


def _decode_batch(frame_index, video: str, ks: list[int], present: np.ndarray, size: int) -> tuple[np.ndarray, list[int], int]:
    """Decode frames ``ks`` that exist; returns (uint8 (B, size, size, 3), decoded ks, corrupt count)."""
    from affectmae.datasets.images import load_rgb
    from affectmae.models.preprocess import resize_frame

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
        images.append(resize_frame(img, size))
        done.append(k)
    arr = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return arr, done, corrupt


def iter_decoded(frame_index, video: str, n: int, present: np.ndarray, size: int, batch_size: int,
                 threads: int = 2, prefetch: int = 4) -> Iterator[tuple[np.ndarray, list[int], int]]:
    """Yield decoded batches of one video in frame order.

    ``threads >= 1``: decode ``prefetch`` batches ahead on a thread pool (PIL releases the GIL), which hides
    decoding behind a GPU encoder. ``threads == 0``: decode each batch when it is needed. On the CPU the
    encoder's matrix products already use every core, and a decoding thread competing with them costs more
    than decoding small JPEGs in line (measurements in docs/benchmarks.md).
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

