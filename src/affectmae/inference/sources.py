"""Where ``affectmae live`` reads frames from: a camera, a network stream, standard input or a file.

    source = open_source("/dev/video0")                # a camera (or "0": /dev/video0)
    source = open_source("rtsp://host/stream")         # anything FFmpeg opens by URL: rtsp, http(s), udp, tcp, ...
    source = open_source("-", input_format="matroska") # a container on standard input (None: FFmpeg probes it)
    source = open_source("-", raw_size=(640, 360), fps=25)   # raw rgb24 frames on standard input
    source = open_source("clip.mp4", realtime=True)    # a file played at its own frame rate (else: as fast as read)
    for frame in source.frames():                      # media.video.Frame: index, time_s, rgb (H, W, 3) uint8
        ...
    source.close()

Opening checks what can be checked at once and raises :class:`~affectmae.errors.AffectMAEError` with one line
naming the source: a camera that does not exist, a URL that does not answer within ``timeout`` seconds, a
standard input that is not a video. A source that breaks later (a stream cut mid-frame, damaged data) ends its
``frames()`` with such an error once the frames before it were given. Times are the stream's own
timestamps (seconds from the first frame, always increasing), or index / fps where it has none.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import BinaryIO, Iterator

import av
import numpy as np

from affectmae.errors import AffectMAEError
from affectmae.media.video import Frame, VideoReader

log = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp", "file")
_URL = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)


def source_kind(source: str) -> str:
    """"stdin", "camera", "url" or "file" for a SOURCE as given on the command line."""
    if source == "-":
        return "stdin"
    if source.isdigit() or source.startswith("/dev/video"):
        return "camera"
    match = _URL.match(source)
    if match and match.group(1).lower() in URL_SCHEMES:
        return "url"
    return "file"


def open_source(source: str, realtime: bool = False, input_format: str | None = None,
                raw_size: tuple[int, int] | None = None, fps: float | None = None, timeout: float = 10.0,
                stdin: BinaryIO | None = None) -> "FileSource | StreamSource | RawSource":
    """The frame source for ``source``; see the module docstring. ``stdin``: the stream ``-`` reads
    (default: this process's standard input)."""
    kind = source_kind(source)
    if kind == "file":
        return FileSource(source, realtime)
    if kind == "stdin":
        pipe = stdin if stdin is not None else _stdin()
        if raw_size is not None:
            return RawSource(pipe, raw_size, fps or 25.0)
        return StreamSource(pipe, "standard input", input_format, {}, fps, timeout)
    if kind == "camera":
        device = f"/dev/video{source}" if source.isdigit() else source
        if sys.platform.startswith("linux"):
            if not os.path.exists(device):
                present = sorted(str(p) for p in Path("/dev").glob("video*"))
                raise AffectMAEError(f"camera {device}: no such device ({'cameras here: ' + ', '.join(present) if present else 'no camera found under /dev'})")
            return StreamSource(device, f"camera {device}", input_format or "v4l2", {}, fps, timeout)
        name = source.removeprefix("/dev/video")
        return StreamSource(name, f"camera {name}", input_format or ("avfoundation" if sys.platform == "darwin" else "dshow"),
                            {}, fps, timeout)
    options = {"rtsp_transport": "tcp"} if source.lower().startswith("rtsp") else {}
    return StreamSource(source, source, input_format, options, fps, timeout)


class FileSource:
    """A video file through :class:`~affectmae.media.video.VideoReader` (rotation, reordered timestamps),
    optionally played at its own rate: frame k is handed out no earlier than its time after the first."""

    def __init__(self, path: str | Path, realtime: bool = False):
        self.name = str(path)
        self.realtime = realtime
        self.reader = VideoReader(path)
        self.fps = self.reader.info.fps
        self.error: str | None = None

    def frames(self) -> Iterator[Frame]:
        start = None
        for frame in self.reader.frames():
            if self.realtime:
                now = time.perf_counter()
                start = now - frame.time_s if start is None else start
                wait = start + frame.time_s - now
                if wait > 0:
                    time.sleep(wait)
            yield frame
        if self.reader.truncated:
            self.error = f"{self.name}: the video ends early ({self.reader.error or 'fewer packets than its header says'})"

    def summary(self) -> dict:
        return self.reader.summary()

    def close(self) -> None:
        self.reader.close()


class StreamSource:
    """A live container read by PyAV: a camera, a URL or a pipe. Frames are handed out as they are decoded
    (no look-ahead); damaged packets are skipped and counted; a read error ends the stream with ``error``."""

    def __init__(self, target, name: str, input_format: str | None, options: dict, fps: float | None,
                 timeout: float):
        self.name = name
        self.error: str | None = None
        self.n_corrupt = 0
        self.n_decoded = 0
        try:
            self.container = av.open(target, mode="r", format=input_format, options=options,
                                     timeout=(timeout, timeout) if timeout else None)
        except (av.FFmpegError, OSError, ValueError) as err:
            raise AffectMAEError(f"{name}: cannot open the stream: {_reason(err)}") from None
        if not self.container.streams.video:
            self.container.close()
            raise AffectMAEError(f"{name}: the stream has no video")
        self.stream = self.container.streams.video[0]
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.fps = float(fps or (rate if rate else 25.0))

    def frames(self) -> Iterator[Frame]:
        index, first, last = 0, None, None
        try:
            for packet in self.container.demux(self.stream):
                try:
                    decoded = packet.decode()
                except av.InvalidDataError:
                    self.n_corrupt += 1
                    continue
                for frame in decoded:
                    t = frame.time
                    if t is None:
                        t = index / self.fps
                    else:
                        first = t if first is None else first
                        t -= first
                    if last is not None and t <= last:
                        t = last + 1.0 / self.fps
                    last = t
                    self.n_decoded += 1
                    yield Frame(index, float(t), frame.to_ndarray(format="rgb24"))
                    index += 1
        except av.FFmpegError as err:
            self.error = f"{self.name}: the stream broke off after {index} frames: {_reason(err)}"
        if index == 0 and self.error is None:
            self.error = f"{self.name}: the stream ended before its first frame"

    def summary(self) -> dict:
        return {"frames_decoded": self.n_decoded, "frames_corrupt": self.n_corrupt, "decode_error": self.error}

    def close(self) -> None:
        self.container.close()


class RawSource:
    """Raw ``rgb24`` frames of a given size on a pipe (``ffmpeg ... -f rawvideo -pix_fmt rgb24 -``), timed
    index / fps. Input that stops inside a frame ends the stream with ``error`` (the frames before it count)."""

    def __init__(self, pipe: BinaryIO, size: tuple[int, int], fps: float):
        width, height = size
        if width < 1 or height < 1:
            raise AffectMAEError(f"raw frame size must be positive, got {width}x{height}")
        self.name = "standard input"
        self.pipe, self.size, self.fps = pipe, (int(width), int(height)), float(fps)
        self.error: str | None = None
        self.n_decoded = 0

    def frames(self) -> Iterator[Frame]:
        width, height = self.size
        need = width * height * 3
        while True:
            data = _read_up_to(self.pipe, need)
            if len(data) < need:
                if data:
                    self.error = (f"standard input ended inside frame {self.n_decoded} ({len(data)} of {need} bytes of a "
                                  f"{width}x{height} rgb24 frame)")
                elif self.n_decoded == 0:
                    self.error = "standard input ended before its first frame"
                return
            rgb = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
            yield Frame(self.n_decoded, self.n_decoded / self.fps, rgb)
            self.n_decoded += 1

    def summary(self) -> dict:
        return {"frames_decoded": self.n_decoded, "decode_error": self.error}

    def close(self) -> None:
        pass


def _stdin() -> BinaryIO:
    """Standard input as an unbuffered binary file: a reader thread blocked in it does not hold the lock of
    Python's buffered ``sys.stdin.buffer``, which would abort the interpreter's shutdown."""
    try:
        return os.fdopen(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    except (AttributeError, OSError, ValueError):  # replaced by something without a file descriptor
        return sys.stdin.buffer


def _read_up_to(pipe: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = pipe.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"640x360"`` -> (640, 360); None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match:
        raise AffectMAEError(f"raw frame size must look like WIDTHxHEIGHT (e.g. 640x360), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _reason(err: BaseException) -> str:
    """An FFmpeg error as one short line (its message, without the repeated file name)."""
    text = getattr(err, "strerror", None) or str(err)
    return " ".join(str(text).split())
