"""Plots of an ``analyze`` table (PNG, matplotlib Agg) and an annotated copy of the video.

Every plot shows each ``face_id`` separately (lines, or one panel per face) against time in seconds;
a table without any face still gives the figures, with a "no face detected" note, so downstream scripts
can rely on the files existing.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from affectmae.io import atomic_path
from affectmae.tasks import ACTION_UNITS, EXPRESSIONS

PLOT_NAMES = ("valence_arousal", "expressions", "action_units")  # OUT/<prefix><name>.png, in plot_all's order
MAX_PANELS = 8  # faces shown in the per-face figures (the most frequent ones)
_EXPR_COLOURS = np.array([
    [0.75, 0.75, 0.75], [0.85, 0.1, 0.1], [0.45, 0.6, 0.1], [0.55, 0.2, 0.7],
    [1.0, 0.75, 0.0], [0.15, 0.35, 0.85], [0.0, 0.75, 0.75], [0.55, 0.4, 0.3],
])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display needed; a backend the user chose stays
    import matplotlib.pyplot as plt

    return plt


def _faces(df: pd.DataFrame) -> list[int]:
    seen = df[df["face_detected"]]
    counts = seen["face_id"].value_counts()
    return sorted(counts.index[:MAX_PANELS].tolist())


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _no_face(ax) -> None:
    ax.text(0.5, 0.5, "no face detected", ha="center", va="center", transform=ax.transAxes, fontsize=12)


def plot_valence_arousal(df: pd.DataFrame, path: str | Path) -> Path:
    """Valence (top) and arousal (bottom) over time, one line per face."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    faces = _faces(df)
    for ax, column in zip(axes, ("valence", "arousal"), strict=True):
        for fid in faces:
            sub = df[df["face_id"] == fid]
            # gaps in a track stay gaps: reindex on frames so matplotlib breaks the line
            full = sub.set_index("frame")[["time_s", column]].reindex(range(sub["frame"].min(), sub["frame"].max() + 1))
            ax.plot(full["time_s"].interpolate(), full[column], label=f"face {fid}", linewidth=1.2)
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="0.6", linewidth=0.6)
        ax.set_ylabel(column)
        if not faces:
            _no_face(ax)
    axes[-1].set_xlabel("time (s)")
    if faces:
        axes[0].legend(loc="upper right", fontsize=8, ncol=min(len(faces), 4))
    fig.suptitle("Valence and arousal")
    return _save(fig, Path(path))


def plot_expressions(df: pd.DataFrame, path: str | Path) -> Path:
    """Expression timeline: one row per face, each frame coloured by its predicted expression."""
    plt = _pyplot()
    faces = _faces(df)
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.5 * max(len(faces), 1)))  # inches
    n_frames = int(df["frame"].max()) + 1 if len(df) else 1
    image = np.ones((max(len(faces), 1), n_frames, 3))
    lookup = {name: i for i, name in enumerate(EXPRESSIONS)}
    for row, fid in enumerate(faces):
        sub = df[(df["face_id"] == fid) & (df["expression"] != "")]
        idx = sub["expression"].map(lookup).to_numpy(dtype=int)
        image[row, sub["frame"].to_numpy()] = _EXPR_COLOURS[idx]
    t_end = float(df["time_s"].max()) if len(df) else 1.0
    ax.imshow(image, aspect="auto", interpolation="nearest", extent=(0, max(t_end, 1e-3), len(image) - 0.5, -0.5))
    ax.set_yticks(range(len(faces)), [f"face {f}" for f in faces])
    ax.set_xlabel("time (s)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=_EXPR_COLOURS[i]) for i in range(len(EXPRESSIONS))]
    height = 1.0 + 0.5 * max(len(faces), 1)
    ax.legend(handles, EXPRESSIONS, loc="upper center", bbox_to_anchor=(0.5, -0.45 / height * 2), ncol=8, fontsize=8)
    if not faces:
        _no_face(ax)
    ax.set_title("Expression")
    return _save(fig, Path(path))


def plot_action_units(df: pd.DataFrame, path: str | Path) -> Path:
    """AU probability heat map (AUs x time), one panel per face."""
    plt = _pyplot()
    faces = _faces(df)
    fig, axes = plt.subplots(max(len(faces), 1), 1, figsize=(10, 0.5 + 2.2 * max(len(faces), 1)), squeeze=False)
    n_frames = int(df["frame"].max()) + 1 if len(df) else 1
    t_end = float(df["time_s"].max()) if len(df) else 1.0
    columns = [f"{au}_prob" for au in ACTION_UNITS]
    image = None
    # strict=False: with no faces there is still one (empty) row of axes
    for ax, fid in zip(axes[:, 0], faces, strict=False):
        sub = df[df["face_id"] == fid]
        grid = np.full((len(ACTION_UNITS), n_frames), np.nan)
        grid[:, sub["frame"].to_numpy()] = sub[columns].to_numpy(dtype=float).T
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", vmin=0, vmax=1, cmap="viridis",
                          extent=(0, max(t_end, 1e-3), len(ACTION_UNITS) - 0.5, -0.5))
        ax.set_yticks(range(len(ACTION_UNITS)), ACTION_UNITS, fontsize=7)
        ax.set_ylabel(f"face {fid}")
    if not faces:
        _no_face(axes[0, 0])
    axes[-1, 0].set_xlabel("time (s)")
    if image is not None:
        fig.colorbar(image, ax=axes[:, 0].tolist(), label="probability")
    fig.suptitle("Action units")
    return _save(fig, Path(path))


def plot_all(df: pd.DataFrame, out_dir: str | Path, prefix: str = "") -> list[Path]:
    """The three figures as ``out_dir/<prefix>valence_arousal.png``, ``...expressions.png``, ``...action_units.png``."""
    out_dir = Path(out_dir)
    plots = (plot_valence_arousal, plot_expressions, plot_action_units)
    return [plot(df, out_dir / f"{prefix}{name}.png") for plot, name in zip(plots, PLOT_NAMES, strict=True)]


def write_annotated_video(video: str | Path, df: pd.DataFrame, out_path: str | Path) -> Path:
    """Re-decode ``video`` and draw each face's box, id, expression and valence/arousal; writes an MP4."""
    from affectmae.media.video import VideoReader, VideoWriter

    faces = df[df["face_detected"]].groupby("frame")
    by_frame = {int(k): g for k, g in faces}
    with VideoReader(video) as reader:
        width, height = reader.info.width // 2 * 2, reader.info.height // 2 * 2
        with VideoWriter(out_path, (width, height), fps=reader.info.fps) as writer:
            for frame in reader.frames():
                img = np.ascontiguousarray(frame.rgb[:height, :width])
                draw_faces(img, [row._asdict() for row in by_frame.get(frame.index, pd.DataFrame()).itertuples()])
                writer.write(img)
    return Path(out_path)


def draw_faces(img: np.ndarray, rows: list[dict]) -> np.ndarray:
    """Draw each face row's box, id, top expression and valence/arousal on ``img (H, W, 3) uint8`` in place."""
    for row in rows:
        if not row["face_detected"]:
            continue
        colour = tuple(int(255 * c) for c in _EXPR_COLOURS[EXPRESSIONS.index(row["expression"])]) \
            if row["expression"] else (255, 255, 255)
        p1, p2 = (int(row["x1"]), int(row["y1"])), (int(row["x2"]), int(row["y2"]))
        cv2.rectangle(img, p1, p2, colour, 2)
        label = f"{row['face_id']} {row['expression']} v{row['valence']:+.2f} a{row['arousal']:+.2f}"
        cv2.putText(img, label, (p1[0], max(p1[1] - 5, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return img
