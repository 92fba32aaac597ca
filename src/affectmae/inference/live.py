"""Live analysis: frames from a camera, a stream or a file in, one row per (frame, face) out as each frame is
analysed, with a temporal model that only looks back.

    with Analyzer("MODEL_DIR") as analyzer:                  # a streaming model (`train causal=true`)
        live = analyzer.stream("/dev/video0")                # or a URL, "-" (stdin), a file (realtime=True)
        for row in live:                                     # dicts with the columns of analyze's table
            ...
        live.summary()                                       # frames, drops, latency p50/p95/max (ms)

Three threads, two stages. The reader takes frames from the source as they come and stamps their arrival; it
hands them on through a queue of at most ``queue`` frames. When the queue is full the **oldest** waiting frame
is dropped, so work never piles up and the newest frame is analysed next (``drop=False`` makes the reader wait
instead, for files analysed as fast as possible: ``analyze --causal``). Frames are dropped there and nowhere
else. Stage 1 (its own thread) takes one frame at a time: cut check, face detection (a full frame every
``detect_every``-th frame, patches around the previous frame's faces in between, nothing held back),
alignment, tracking, then the encoder's patch embedding and first k blocks on the faces; it hands them to
stage 2 through a queue of one frame, waiting while it is full. Stage 2 (the thread iterating the stream)
runs the encoder's other blocks and one step of each track's
:class:`~affectmae.inference.model.EnsembleStream`, and gives the rows. ``encoder_split``: k, or ``"auto"``
to balance the two stages' busy time frame by frame (:mod:`.encoder_split`; the rows do not depend on k). So stage 1 of frame t + 1 runs beside
stage 2 of frame t and a frame costs the slower stage, not the sum; each stage keeps frame order, so the rows
are those of running them one after the other (:mod:`.live_frames`). While the stream runs PyTorch and OpenCV
use one thread each (stage 2 and stage 1 are the two cores' work; the detector's own process uses one).
Rows come out in frame order; a dropped frame is one row with ``analyzed=False``, ``face_detected=False``,
``face_id=-1`` and no values. Latency is the time from a frame's arrival to the moment its last row has been
taken by the consumer (written, in the CLI).

What differs from ``analyze``: ``face_id`` is the track id (linking tracks into people needs the whole
video); a face entering between key frames is found at the next key frame; every frame is analysed
(no ``stride``). ``analyze --causal`` runs this same loop over a file without dropping, so its table equals
what ``live`` writes for that file when nothing was dropped.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from affectmae.errors import AffectMAEError
from affectmae.inference.live_frames import FrameAnalyzer, _empty_row


class StreamStalled(AffectMAEError):
    """The source delivered no frame for ``timeout`` seconds."""


def require_streaming(model, model_dir) -> None:
    """A one-line error unless every temporal head of ``model`` only looks back."""
    if not model.streaming:
        raise AffectMAEError(f"{model_dir}: {', '.join(model.two_way_heads())} looks both ways (or counts window "
                             "positions); live and analyze --causal need a model trained with "
                             "`affectmae train ... causal=true`")


class _FrameQueue:
    """At most ``size`` items between two threads (the reader and stage 1, stage 1 and stage 2). ``drop``: a
    new item pushes out the oldest waiting one (kept in ``dropped`` for its row); else the producer waits for
    room. After :meth:`close` (the consumer has stopped) both sides return at once."""

    def __init__(self, size: int, drop: bool):
        self.size, self.drop = max(1, int(size)), drop
        self.items: deque = deque()
        self.dropped: list = []
        self.ended = False
        self.error: BaseException | None = None
        self.stop = False
        self.cond = threading.Condition()

    def put(self, item) -> bool:
        """False when the consumer has stopped (the reader should end)."""
        with self.cond:
            while not self.drop and len(self.items) >= self.size and not self.stop:
                self.cond.wait()
            if self.stop:
                return False
            while len(self.items) >= self.size:
                self.dropped.append(self.items.popleft())
            self.items.append(item)
            self.cond.notify_all()
            return True

    def wait_room(self) -> bool:
        """Wait until an item can be put without waiting; False when the consumer has stopped."""
        with self.cond:
            while len(self.items) >= self.size and not self.stop:
                self.cond.wait()
            return not self.stop

    def finish(self, error: BaseException | None = None) -> None:
        with self.cond:
            self.ended, self.error = True, error
            self.cond.notify_all()

    def get(self, timeout: float) -> tuple[list, object | None]:
        """(frames dropped since the last call, the next frame or None at the end). Raises StreamStalled."""
        deadline = time.monotonic() + timeout if timeout > 0 else None
        with self.cond:
            while not self.items and not self.ended and not self.stop:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise StreamStalled(f"no frame for {timeout:g} s")
                self.cond.wait(left)
            if self.stop:
                return [], None
            dropped, self.dropped = self.dropped, []
            item = self.items.popleft() if self.items else None
            self.cond.notify_all()
            return dropped, item

    def close(self) -> None:
        with self.cond:
            self.stop = True
            self.cond.notify_all()


@dataclass
class LiveStats:
    """What a live run counts; :meth:`summary` is the dict written at the end."""

    source: str
    started: float = field(default_factory=time.perf_counter)
    frames_analyzed: int = 0
    frames_dropped: int = 0
    rows: int = 0
    latencies: list = field(default_factory=list)  # seconds, per analysed frame
    busy: dict = field(default_factory=lambda: {"stage1": 0.0, "stage2": 0.0})  # seconds each stage worked
    faces: set = field(default_factory=set)
    ended: str = "running"
    first_time: float | None = None
    last_time: float | None = None

    def summary(self) -> dict:
        lat = np.asarray(self.latencies) * 1000.0
        seconds = time.perf_counter() - self.started
        received = self.frames_analyzed + self.frames_dropped

        def pct(q):
            return round(float(np.percentile(lat, q)), 1) if len(lat) else None

        return {
            "source": self.source, "ended": self.ended, "frames": received,
            "frames_analyzed": self.frames_analyzed, "frames_dropped": self.frames_dropped,
            "dropped_share": round(self.frames_dropped / received, 4) if received else 0.0,
            "rows": self.rows, "faces": len(self.faces),
            "latency_ms": {"p50": pct(50), "p95": pct(95), "max": round(float(lat.max()), 1) if len(lat) else None,
                           "mean": round(float(lat.mean()), 1) if len(lat) else None},
            "seconds": round(seconds, 3),
            "frames_per_s": round(received / seconds, 2) if seconds > 0 else None,
            "analyzed_per_s": round(self.frames_analyzed / seconds, 2) if seconds > 0 else None,
            "busy_ms_per_frame": {k: round(1000 * v / max(self.frames_analyzed, 1), 2) for k, v in self.busy.items()},
            "stream_seconds": round(self.last_time - self.first_time, 3) if self.first_time is not None else 0.0,
        }


class LiveStream:
    """Rows of one source as they are analysed (iterate once); see the module docstring.

    ``source``: a SOURCE string (:func:`~affectmae.inference.sources.open_source`, with ``source_options``)
    or an opened source object. ``timeout``: seconds without a frame after which the stream counts as
    stalled (:class:`StreamStalled`). ``on_frame(frame, rows)``: called after each analysed frame's rows
    (the overlay video). :meth:`summary` says what happened.
    """

    def __init__(self, analyzer, source, drop: bool = True, queue: int = 2, timeout: float = 10.0,
                 max_frames: int = 0, on_frame=None, encoder_split: str | int = "auto", **source_options):
        from affectmae.inference.sources import open_source

        require_streaming(analyzer.model, analyzer.model_dir)
        self.analyzer = analyzer
        if isinstance(source, (str, os.PathLike)):
            self.source = open_source(str(source), timeout=timeout, **source_options)
        else:
            self.source = source
        self.stats = LiveStats(self.source.name)
        self.drop, self.queue_size, self.timeout = drop, queue, timeout
        self.max_frames, self.on_frame = max_frames, on_frame
        self.frames = FrameAnalyzer(analyzer, self.source.name, encoder_split)
        self._queue = _FrameQueue(queue, drop)  # reader -> stage 1: frames, dropped here only
        self._handoff = _FrameQueue(1, drop=False)  # stage 1 -> stage 2: one frame's faces, never dropped
        self._threads: list[threading.Thread] = []

    def _read(self) -> None:
        error = None
        try:
            for frame in self.source.frames():
                if not self._queue.put((frame, time.perf_counter())):
                    break
                if self.max_frames and frame.index + 1 >= self.max_frames:
                    break
            if self.source.error:
                error = AffectMAEError(self.source.error)
        except AffectMAEError as err:
            error = err
        except Exception as err:  # reported in the analysis thread, as one line
            error = AffectMAEError(f"{self.source.name}: reading stopped: {err}")
        self._queue.finish(error)

    def _stage_one(self) -> None:
        """Frames from the reader -> (dropped frames before it, the frame, its arrival, its faces) to stage 2.
        A frame is taken from the reader only when stage 2 has room for it, so while stage 2 is busy the
        frames wait (and are dropped) at the input, and the one taken next is the oldest kept there."""
        error = None
        try:
            while self._handoff.wait_room():
                dropped, item = self._queue.get(self.timeout)
                if item is None:
                    if dropped:
                        self._handoff.put((dropped, None, None, None))
                    break
                start = time.perf_counter()
                faces = self.frames.prepare(item[0])
                self.stats.busy["stage1"] += time.perf_counter() - start
                self._handoff.put((dropped, item[0], item[1], faces))
            error = self._queue.error
        except BaseException as err:  # StreamStalled, a detector that failed: raised in stage 2, in order
            error = err
        self._handoff.finish(error)

    def __iter__(self) -> Iterator[dict]:
        stats = self.stats
        self._threads = [threading.Thread(target=self._stage_one, name="affectmae-live-stage1", daemon=True),
                         threading.Thread(target=self._read, name="affectmae-live-reader", daemon=True)]
        try:
            with _one_thread_each():
                for thread in self._threads:  # stage 1 first: waiting for the first frame when it comes
                    thread.start()
                yield from self._stage_two()
        except KeyboardInterrupt:
            stats.ended = "interrupted"
            raise
        except GeneratorExit:
            stats.ended = "stopped"
            raise
        except BaseException:
            if stats.ended == "running":
                stats.ended = "error"
            raise
        finally:
            self.close()

    def _stage_two(self) -> Iterator[dict]:
        stats = self.stats
        while True:
            _, got = self._handoff.get(0)
            if got is None:
                break
            dropped, frame, arrival, faces = got
            for old, _ in dropped:
                stats.frames_dropped += 1
                self._seen(old)
                stats.rows += 1
                yield _empty_row(self.source.name, old, analyzed=False)
            if frame is None:
                continue
            start = time.perf_counter()
            self._seen(frame)
            rows = self.frames.finish(faces)
            stats.frames_analyzed += 1
            for row in rows:
                if row["face_detected"]:
                    stats.faces.add(row["face_id"])
                stats.rows += 1
                yield row
            if self.on_frame is not None:
                self.on_frame(frame, rows)
            done = time.perf_counter()
            stats.latencies.append(done - arrival)
            stats.busy["stage2"] += done - start
            self.frames.split.stage_two_done(done - start)
        error = self._handoff.error
        if isinstance(error, StreamStalled):
            stats.ended = "stalled"
            raise StreamStalled(f"{self.source.name}: no frame for {self.timeout:g} s; the stream stopped "
                                "delivering")
        if error is not None:
            stats.ended = "error"
            raise error
        stats.ended = "end of stream"

    def _seen(self, frame) -> None:
        if self.stats.first_time is None:
            self.stats.first_time = frame.time_s
        self.stats.last_time = frame.time_s

    def summary(self) -> dict:
        out = self.stats.summary()
        out.update({"queue": self.queue_size, "drop": self.drop, "detections": self.frames.detections,
                    "tracks": self.frames.tracker.next_id, "detector": self.analyzer.detector.name,
                    "detector_calls": dict(self.frames.keyframes.calls), "encoder_split": self.frames.split.summary(),
                    "seconds_per_stage": {k: round(v, 4) for k, v in self.frames.timings.items()}})
        source_summary = getattr(self.source, "summary", None)
        if source_summary is not None:
            out["source_summary"] = source_summary()
        return out

    def close(self) -> None:
        self._queue.close()
        self._handoff.close()
        stage_one, reader = self._threads or (None, None)
        if stage_one is not None:
            stage_one.join(timeout=10.0)  # it ends within one frame's work; the detector is closed after it
            reader.join(timeout=2.0)
        if reader is None or not reader.is_alive():
            self.source.close()  # a reader stuck in a blocking read (a pipe) is left to end with the process


@contextmanager
def _one_thread_each():
    """PyTorch (stage 2's encoder and temporal step) and OpenCV (stage 1's resizing and alignment) at one
    thread each while the stream runs, so the two stages use one core each; restored afterwards."""
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
