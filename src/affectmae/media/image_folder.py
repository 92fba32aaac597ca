"""A folder of images read as a video: its image files in name order are the frames.

The reader has the interface of :class:`affectmae.media.video.VideoReader` (``info``, ``frames(stride)``,
``summary()``, a context manager), so the face pass of ``analyze`` runs on it unchanged::

    with ImageFolderReader("frames/") as reader:     # 00001.jpg, 00002.jpg, ... (any names, sorted)
        for frame in reader.frames(stride=2):        # frame.index, frame.time_s (index / fps), frame.rgb
            ...

An image that cannot be decoded becomes a frame without pixels (``rgb`` None, as a frame skipped by
``stride``), is counted in ``summary()["frames_corrupt"]`` and logged; an empty folder is an error naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from affectmae.datasets.images import IMAGE_EXTENSIONS, load_rgb
from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.media.video import Frame, VideoInfo

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0  # frame times of an image sequence: index / fps


def folder_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                  key=lambda p: p.name)


class ImageFolderReader:
    """Read the images of ``folder`` as the frames of a video at ``fps``; see the module docstring."""

    def __init__(self, folder: str | Path, fps: float = DEFAULT_FPS):
        self.path = Path(folder)
        if not self.path.is_dir():
            raise AffectMAEError(f"image folder not found: {self.path}")
        self.files = folder_images(self.path)
        if not self.files:
            raise InputFormatError(self.path, f"holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        first = load_rgb(self.files[0])
        self.info = VideoInfo(self.path, int(first.shape[1]), int(first.shape[0]), float(fps), len(self.files), 0,
                              "images")
        self.n_decoded = 0
        self.n_corrupt = 0

    def frames(self, stride: int = 1) -> Iterator[Frame]:
        """Every image in name order; only every ``stride``-th (index % stride == 0) is decoded."""
        if stride < 1:
            raise AffectMAEError(f"stride must be >= 1, got {stride}")
        for index, path in enumerate(self.files):
            rgb = None
            if index % stride == 0:
                try:
                    rgb = load_rgb(path)
                except InputFormatError as err:
                    self.n_corrupt += 1
                    log.warning("%s; it counts as a frame without a face", err)
            self.n_decoded += 1
            yield Frame(index, index / self.info.fps, rgb)

    def summary(self) -> dict:
        return {"frames_decoded": self.n_decoded, "frames_expected": self.info.n_frames, "packets": self.n_decoded,
                "timestamps_reordered": 0, "frames_corrupt": self.n_corrupt, "truncated": False,
                "decode_error": None}

    def close(self) -> None:
        pass

    def __enter__(self) -> "ImageFolderReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_frames(path: str | Path):
    """A reader of ``path``: :class:`ImageFolderReader` for a folder, else a
    :class:`~affectmae.media.video.VideoReader` (which names a missing or unreadable file)."""
    from affectmae.media.video import VideoReader

    return ImageFolderReader(path) if Path(path).is_dir() else VideoReader(path)
