"""Device choice and mixed precision, shared by training, extraction and analysis.

``select_device("auto")`` picks CUDA when present, else the CPU. ``autocast`` gives bf16 on GPUs that
support it and does nothing on the CPU, where bf16 without native instructions is several times slower
than fp32 (docs/benchmarks.md).
"""
from __future__ import annotations

import contextlib

import torch

from affectmae.errors import AffectMAEError


def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else cpu; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AffectMAEError(f"unknown device {name!r}; use cpu, cuda or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AffectMAEError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs that support it; a no-op elsewhere."""
    if enabled and bf16_supported(device):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
