"""The plan of a synthetic dataset: video names, train/validation splits, tasks and lengths.

Cheap and deterministic (no rendering): ``plan_videos(videos, frames, seed)`` is what
:func:`affectmae.synth.dataset.generate_affwild2` writes, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from affectmae.tasks import TASKS


def _video_names(videos: int) -> list[tuple[str, int]]:
    """(video name, source index): the last two share a source and form a ``_left``/``_right`` pair."""
    if videos >= 3:
        names = [(f"synth{i + 1:03d}", i) for i in range(videos - 2)]
        return names + [(f"synth{videos - 1:03d}_left", videos - 2), (f"synth{videos - 1:03d}_right", videos - 2)]
    return [(f"synth{i + 1:03d}", i) for i in range(videos)]


def _assign_splits(names: list[tuple[str, int]], rng: np.random.Generator) -> dict[str, str]:
    """Split by source video (a pair stays together, in train); about 30 % of the sources go to val."""
    sources = sorted({src for _, src in names})
    paired = {src for _, src in names if sum(s == src for _, s in names) > 1}
    n_val = 0 if len(sources) < 2 else max(1, round(0.3 * len(sources)))
    candidates = [s for s in sources if s not in paired]
    val = set(rng.choice(candidates, size=min(n_val, len(candidates)), replace=False).tolist())
    return {name: ("val" if src in val else "train") for name, src in names}


def _assign_tasks(split_of: dict[str, str], rng: np.random.Generator) -> dict[str, list[str]]:
    """Each video gets every task, then some train videos lose one while every task keeps >= 2 of them.

    Validation videos keep all three tasks, so the (small) validation split scores every task on the same frames.
    """
    tasks = {name: list(TASKS) for name in split_of}
    for name in rng.permutation(sorted(split_of)).tolist():
        for task in list(TASKS):
            if rng.random() >= 0.25 or len(tasks[name]) == 1 or split_of[name] != "train":
                continue
            holders = sum(task in tasks[v] for v, s in split_of.items() if s == "train")
            if holders > 2:
                tasks[name].remove(task)
    return tasks


@dataclass(frozen=True)
class VideoPlan:
    """One annotation stem of the synthetic dataset: its split, tasks and length (before any rendering)."""

    name: str
    index: int  # position in the plan; the video's random stream is default_rng([seed, index + 1])
    source: int  # the raw video it comes from (a _left/_right pair shares one)
    split: str  # "train" | "val"
    tasks: tuple[str, ...]
    n_frames: int


def plan_videos(videos: int, frames: int, seed: int) -> list[VideoPlan]:
    """Names, splits, tasks and lengths of the videos ``generate_affwild2`` writes; cheap and deterministic."""
    rng = np.random.default_rng([seed, 0])
    names = _video_names(videos)
    split_of = _assign_splits(names, rng)
    tasks_of = _assign_tasks(split_of, rng)
    lengths = {src: max(1, int(round(frames * rng.uniform(0.75, 1.25)))) for _, src in names}
    return [
        VideoPlan(name, i, src, split_of[name], tuple(tasks_of[name]), lengths[src])
        for i, (name, src) in enumerate(names)
    ]
