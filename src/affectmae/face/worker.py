"""A face detector in a separate, periodically replaced process.

yuface 2023.5.1 leaks native memory on every ``detect`` call, and ``malloc_trim`` does not return it, so a
long video would grow the process without bound (figures in docs/analyze.md and docs/benchmarks.md).
:class:`WorkerDetector` runs the detector in a child process (``python -m affectmae.face.worker``, so no user
``__main__`` is re-imported, unlike multiprocessing's spawn) and starts a fresh child every ``recycle_every``
frames, which bounds the leak to what ``recycle_every`` calls leak. The child also keeps yuface's OpenMP
runtime away from PyTorch's.

Protocol over the child's stdin/stdout, little endian: request ``<III`` (height, width, 3) + raw RGB bytes;
reply ``<I`` (n) + n x 15 float32 rows (x1, y1, x2, y2, score, 5 x (x, y) landmarks).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np

from affectmae.errors import AffectMAEError
from affectmae.face.detect import YUFACE_MAX_SIDE, Detection, get_detector, resolve_detector

_REQUEST = struct.Struct("<III")
_REPLY = struct.Struct("<I")
_ROW = 15


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    return data if data is not None else b""


class WorkerDetector:
    """Same interface as the in-process detectors (``name``, ``detect(rgb)``); see the module docstring."""

    def __init__(self, name: str = "auto", recycle_every: int = 2000, **kwargs):
        self._proc: subprocess.Popen | None = None
        if recycle_every < 1:
            raise AffectMAEError(f"recycle_every must be >= 1, got {recycle_every}")
        # unknown name / nothing installed: the error comes here, without loading the detector in this process
        self.name = resolve_detector(name, kwargs.get("max_side", YUFACE_MAX_SIDE))
        self.recycle_every = recycle_every
        self.restarts = 0
        self._args = json.dumps({"name": self.name, **kwargs})
        self._calls = 0

    def _start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        self._proc = subprocess.Popen([sys.executable, "-m", "affectmae.face.worker", self._args],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self._calls = 0

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """``rgb: (H, W, 3) uint8`` -> detections sorted by score, highest first."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise AffectMAEError(f"detector input must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        if self._proc is not None and self._calls >= self.recycle_every:
            self.close()
            self.restarts += 1
        if self._proc is None:
            self._start()
        proc = self._proc
        try:
            proc.stdin.write(_REQUEST.pack(*rgb.shape))
            proc.stdin.write(np.ascontiguousarray(rgb).tobytes())
            proc.stdin.flush()
            head = _read_exact(proc.stdout, _REPLY.size)
            (n,) = _REPLY.unpack(head)
            rows = np.frombuffer(_read_exact(proc.stdout, n * _ROW * 4), dtype=np.float32).reshape(n, _ROW)
        except (BrokenPipeError, struct.error, ValueError) as err:
            stderr = proc.stderr.read().decode(errors="replace")[-2000:] if proc.poll() is not None else ""
            self.close()
            raise AffectMAEError(f"the face-detector worker process failed ({err}): {stderr.strip()}") from None
        self._calls += 1
        return [Detection(box=r[:4].copy(), score=float(r[4]), landmarks=r[5:].reshape(5, 2).copy()) for r in rows]

    def close(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            try:
                proc.stdin.close()
            except OSError:  # the worker is gone (BrokenPipeError): nothing to flush to
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()

    def __enter__(self) -> "WorkerDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self.close()


def _serve(args: dict) -> None:
    name = args.pop("name")
    detector = get_detector(name, **args)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(_REQUEST.size)
        if len(head) < _REQUEST.size:
            return  # parent closed the pipe: done
        h, w, c = _REQUEST.unpack(head)
        rgb = np.frombuffer(stdin.read(h * w * c), dtype=np.uint8).reshape(h, w, c)
        dets = detector.detect(rgb)
        rows = np.array([[*d.box, d.score, *np.asarray(d.landmarks).ravel()] for d in dets], dtype=np.float32)
        stdout.write(_REPLY.pack(len(dets)))
        stdout.write(rows.reshape(len(dets), _ROW).tobytes())
        stdout.flush()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
