"""Memory settings of a training process: glibc malloc keeps freed buffers instead of returning them."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

import torch

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_malloc_tuned = False


def keep_freed_memory(device: torch.device | None = None) -> bool:
    """Keep freed heap memory in the process (glibc only; a no-op for a non-CPU ``device``, elsewhere, or
    with AFFECTMAE_MALLOC_TUNING=0).

    PyTorch's CPU allocator hands every tensor to malloc. With glibc's defaults, buffers of a few MB
    (the activations of a ViT step) are ``mmap``-ed and returned to the kernel when freed, so each step
    page-faults them in again. Serving allocations up to 32 MB from the heap and trimming the heap only
    beyond 1 GB of free memory makes the ViT MAE step of ``benchmarks/bench_pretrain.py`` faster on CPU
    (measured in docs/benchmarks.md). The price is that the resident size stays at its peak, which
    training reaches every step anyway; inference commands, whose memory must stay flat, do not call it.
    """
    global _malloc_tuned
    if device is not None and device.type != "cpu":
        return False
    if _malloc_tuned:
        return True
    if os.environ.get("AFFECTMAE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _malloc_tuned = bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
    log.debug("glibc malloc keeps freed memory: %s", _malloc_tuned)
    return _malloc_tuned
