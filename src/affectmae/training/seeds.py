"""Deterministic seeds: the same (seed, epoch, sample index) always gives the same random choices."""

from __future__ import annotations


def step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``parts`` (e.g. epoch, sample index)."""
    h = 1469598103934665603
    for value in (seed, *parts):
        h = ((h ^ (int(value) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 64)
    return h & 0x7FFFFFFFFFFFFFFF
