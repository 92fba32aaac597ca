"""Streaming video decoding and encoding with PyAV.

Frames are decoded one at a time, so memory stays flat however long the video is. Rotation metadata
(the display matrix that phones write) is applied, so portrait phone videos come out upright. A corrupt
or truncated stream stops with a warning; the frames decoded up to that point are kept and the reader's
``summary()`` says what happened. A missing file or a file that is not a video raises
:class:`~affectmae.errors.AffectMAEError` naming the file.

    with VideoReader("clip.mp4") as reader:
        for frame in reader.frames(stride=2):   # frame.index, frame.time_s, frame.rgb (H, W, 3) uint8
            ...
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np

from affectmae.errors import AffectMAEError, InputFormatError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int  # after rotation (what the user sees)
    height: int
    fps: float
    n_frames: int  # from the container header; 0 when it does not say
    rotation: int  # counter-clockwise degrees applied to stored frames to make them upright (0/90/180/270)
    codec: str


# Frames are held back this many frames so that their timestamps can be sorted: the decoder hands frames out
# in display order, but some streams carry the timestamps in decode order (MPEG-4 Part 2 with packed
# B-frames in AVI, as DivX/Xvid write: 1, 3, 2, 5, 4, ...). B-frame reordering depth is at most 4 in practice.
REORDER_WINDOW = 8


class _DisplayClock:
    """Presentation times for frames that arrive in display order while their pts may not.

    ``add(t)`` each decoded frame's ``frame.time`` (None when unknown) as it arrives; ``next_time(index)``
    gives the next frame's time in seconds from the first frame: the smallest pts seen and not yet used
    (a frame is emitted only once ``REORDER_WINDOW`` later ones were added, or at the end). Times always
    increase: a repeated or late pts becomes the previous time + 1/fps; a stream without pts uses index/fps.
    """

    def __init__(self, fps: float):
        self.fps = fps
        self._heap: list[float] = []
        self._start: float | None = None
        self._last: float | None = None
        self._last_added: float | None = None
        self.n_reordered = 0  # pts smaller than the one before it in arrival order

    def add(self, time: float | None) -> None:
        if time is None:
            return
        time = float(time)
        if self._last_added is not None and time < self._last_added:
            self.n_reordered += 1
        self._last_added = time
        heapq.heappush(self._heap, time)

    def next_time(self, index: int) -> float:
        if self._heap:
            t = heapq.heappop(self._heap)
            if self._start is None:
                self._start = t
            t -= self._start
        else:
            t = index / self.fps
        if self._last is not None and t <= self._last:
            t = self._last + 1.0 / self.fps
        self._last = t
        return t


@dataclass
class Frame:
    index: int  # 0-based display order
    time_s: float  # presentation time in seconds from the first frame
    rgb: np.ndarray | None  # (H, W, 3) uint8, upright; None for frames skipped by ``stride``


def rotate_upright(rgb: np.ndarray, rotation: float) -> np.ndarray:
    """Rotate a stored frame by ``rotation`` degrees counter-clockwise (PyAV's ``VideoFrame.rotation``).

    ``rgb: (H, W, C)``; returns ``(H, W, C)`` for 0/180 and ``(W, H, C)`` for 90/270. Angles are rounded
    to the nearest multiple of 90 (phones write only those).
    """
    quarter = int(round(float(rotation) / 90.0)) % 4
    if quarter == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=quarter))


def _frame_rotation(frame: av.VideoFrame, stream_default: int) -> int:
    rot = getattr(frame, "rotation", None)  # PyAV >= 14 reads the display matrix side data
    if rot is None:
        return stream_default
    return int(round(rot / 90.0)) * 90 % 360


def _parse_clock(text: str) -> float:
    """``"HH:MM:SS.fraction"`` (Matroska's per-track DURATION tag) -> seconds; 0.0 when it is not one."""
    try:
        h, m, sec = text.strip().split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return 0.0


def _header_duration(container: av.container.InputContainer, s: av.video.stream.VideoStream) -> float:
    """The video stream's duration (seconds) as the file's header announces it, 0.0 when it does not say:
    the stream's own duration (MP4, AVI), else its DURATION tag (Matroska/WebM write one per track and no
    frame count), else the container's duration when the video is the only stream."""
    if s.duration is not None and s.time_base is not None:
        return float(s.duration * s.time_base)
    tagged = _parse_clock((s.metadata or {}).get("DURATION", ""))
    if tagged > 0:
        return tagged
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / av.time_base
    return 0.0


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise AffectMAEError(f"video not found: {path}")
    if path.is_dir():
        raise AffectMAEError(f"{path}: is a directory, expected a video file")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        hint = ""
        if path.suffix.lower() in (".mp4", ".mov", ".m4v"):
            hint = " (an MP4/MOV cut short before its index was written cannot be read; re-export or re-download it)"
        raise InputFormatError(path, f"not a readable video: {err}{hint}") from None
    if not container.streams.video:
        container.close()
        raise InputFormatError(path, "contains no video stream")
    return container


class VideoReader:
    """Decode ``path`` frame by frame. Use as a context manager, iterate ``frames()`` once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._container = _open(self.path)
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg
        self.n_decoded = 0
        self.n_packets = 0  # non-empty packets read from the container
        self.n_reordered = 0  # frames whose pts arrived out of display order
        self.n_corrupt = 0
        self.truncated = False
        self.error: str | None = None
        self.info = self._probe()

    def _probe(self) -> VideoInfo:
        s = self._stream
        rate = s.average_rate or s.guessed_rate or s.base_rate
        fps = float(rate) if rate else 25.0
        n = int(s.frames or 0) or int(round(_header_duration(self._container, s) * fps))
        rotation = 0
        meta_rot = (s.metadata or {}).get("rotate")
        if meta_rot is not None:
            try:
                rotation = (-int(float(meta_rot))) % 360  # legacy tag is clockwise
            except ValueError:
                rotation = 0
        width, height = s.codec_context.width, s.codec_context.height
        # Peek at the first frame for the display matrix; re-open afterwards so decoding starts clean.
        try:
            first = next(self._container.decode(s))
            rotation = _frame_rotation(first, rotation)
        except (StopIteration, av.FFmpegError):
            pass
        self._container.close()
        self._container = _open(self.path)
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(self.path, int(width), int(height), fps, n, rotation, s.codec_context.name)

    def frames(self, stride: int = 1) -> Iterator[Frame]:
        """Yield every frame in display order; only every ``stride``-th (index % stride == 0) carries pixels.

        Skipped frames are still decoded (codecs need them) but not converted to RGB, which is the
        costly part. Timestamps come from the stream (``pts``), or ``index / fps`` when it has none, and
        always increase (see :data:`REORDER_WINDOW`). A packet the decoder rejects is skipped and counted
        (``summary()["frames_corrupt"]``); a read error of the container ends the stream with a warning.
        """
        if stride < 1:
            raise AffectMAEError(f"stride must be >= 1, got {stride}")
        s = self._stream
        clock = _DisplayClock(self.info.fps)
        pending: deque = deque()  # decoded frames waiting for their timestamp (at most REORDER_WINDOW)
        index = 0

        def emit(frame: av.VideoFrame) -> Frame:
            nonlocal index
            time_s = clock.next_time(index)
            rgb = None
            if index % stride == 0:
                rgb = frame.to_ndarray(format="rgb24")
                rgb = rotate_upright(rgb, _frame_rotation(frame, self.info.rotation))
            out = Frame(index, time_s, rgb)
            index += 1
            return out

        try:
            for packet in self._container.demux(s):
                if packet.size:
                    self.n_packets += 1
                try:
                    decoded = packet.decode()
                except av.InvalidDataError as err:  # one damaged packet: skip it, keep going
                    self.n_corrupt += 1
                    log.debug("%s: skipping an undecodable packet: %s", self.path, err)
                    continue
                for frame in decoded:
                    if getattr(frame, "is_corrupt", False):
                        self.n_corrupt += 1
                    self.n_decoded += 1
                    clock.add(frame.time)
                    pending.append(frame)
                    if len(pending) > REORDER_WINDOW:
                        yield emit(pending.popleft())
        except av.FFmpegError as err:
            self.truncated = True
            self.error = str(err)
            log.warning("%s: decoding stopped after %d frames: %s; keeping the frames decoded so far",
                        self.path, self.n_decoded, err)
        while pending:
            yield emit(pending.popleft())
        self.n_reordered = clock.n_reordered
        if clock.n_reordered:
            log.info("%s: %d frame timestamps arrived out of display order (e.g. packed B-frames in AVI); "
                     "they were put back in order", self.path, clock.n_reordered)
        # The header's frame count is a promise about packets: fewer packets than promised means the file
        # ends early. Fewer *frames* than packets is normal (edit lists, discarded leading B-frames).
        if self.info.n_frames and self.n_packets < self.info.n_frames * 0.98 - 1 and not self.truncated:
            self.truncated = True
            log.warning("%s: the header announces %d frames but only %d packets could be read (truncated or damaged "
                        "file, %d frames); keeping the frames decoded so far", self.path, self.info.n_frames, self.n_packets,
                        self.n_decoded)
        if self.n_corrupt:
            log.warning("%s: %d damaged packets or frames were skipped or flagged by the decoder",
                        self.path, self.n_corrupt)

    def summary(self) -> dict:
        return {
            "frames_decoded": self.n_decoded,
            "frames_expected": self.info.n_frames,
            "packets": self.n_packets,
            "timestamps_reordered": self.n_reordered,
            "frames_corrupt": self.n_corrupt,  # packets skipped + frames flagged corrupt
            "truncated": self.truncated,
            "decode_error": self.error,
        }

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def probe_video(path: str | Path) -> VideoInfo:
    """Size (upright), fps, frame count, rotation and codec of a video, without decoding it all."""
    with VideoReader(path) as reader:
        return reader.info


def pick_codec(preferred: Iterable[str] = ("libx264", "mpeg4")) -> str:
    """First encoder in ``preferred`` that PyAV's bundled FFmpeg has."""
    for name in preferred:
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
                return name
            except (av.FFmpegError, ValueError):
                continue
    raise AffectMAEError(f"none of the video encoders {list(preferred)} is available in PyAV's FFmpeg")


class VideoWriter:
    """Write RGB frames ``(H, W, 3) uint8`` to an MP4 (H.264 if available, else MPEG-4 Part 2).

    ``rotation`` stores a display matrix (counter-clockwise degrees, as read back by
    :class:`VideoReader`); ``faststart`` puts the index at the start of the file.
    """

    def __init__(self, path: str | Path, size: tuple[int, int], fps: float = 25.0, codec: str | None = None,
                 rotation: int = 0, faststart: bool = False, crf: int = 23):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        width, height = size
        if width % 2 or height % 2:
            raise AffectMAEError(f"video size must be even for yuv420p, got {width}x{height}")
        self.codec = codec or pick_codec()
        options = {"movflags": "+faststart"} if faststart else {}
        self._container = av.open(str(self.path), mode="w", options=options)
        self._stream = self._container.add_stream(self.codec, rate=_rate(fps))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        if self.codec == "libx264":
            self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        else:
            self._stream.bit_rate = 2_000_000
        if rotation:
            if not hasattr(self._stream, "set_display_rotation"):
                raise AffectMAEError("this PyAV cannot write rotation metadata (needs PyAV >= 15)")
            self._stream.set_display_rotation(rotation)
        self.size = size
        self.n_written = 0

    def write(self, rgb: np.ndarray) -> None:
        if rgb.shape[:2] != (self.size[1], self.size[0]):
            raise AffectMAEError(f"frame of shape {rgb.shape} does not match the video size {self.size}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.n_written += 1

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self._container.close()


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
