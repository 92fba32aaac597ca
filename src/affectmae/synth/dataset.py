"""``affectmae synth``: a small, learnable, temporal dataset in exactly the Aff-Wild2 layout.

Layout written under ``out`` (read back by :mod:`affectmae.datasets.affwild2`, the same reader as real data)::

    cropped_aligned/<video>/00001.jpg ...      112x112 JPEG frames, 1-based; short runs are absent ("no face")
    annotations/<Challenge>/{Train_Set,Validation_Set}/<video>.txt
                                               real headers; VA "%.3f" floats, EXPR ints, AU 0/1; invalid runs
                                               (-5 VA, -1 EXPR, -1 AU rows); not every video has every task
    faces/00001.jpg ...                        single faces from random latents (MAE pretraining images)
    latents/<video>.npz                        ground truth: latent, observed, pose, light, occlusion, blur,
                                               drive (see Trajectory), present (frame image exists)
    latents/faces.npz                          latent, observed (N, 14) and files (N,) of the faces/ images
    synth_info.json                            seed, parameters, per-video split/tasks/frames/missing/invalid;
                                               "complete": false while (or if interrupted while) writing

The last two videos are a two-person pair ``<name>_left`` / ``<name>_right`` (same length, different people
and latents) when ``videos >= 3``. Every video has its own random stream (``default_rng([seed, i])``), so the
output is a deterministic function of the arguments: the same seed gives byte-identical annotation files.

The pieces: :mod:`affectmae.synth.plan` (names, splits, tasks, lengths), :mod:`affectmae.synth.latents`
(trajectories and labels), :mod:`affectmae.synth.people` (cartoon or photo faces) and
:mod:`affectmae.synth.oracle` (ceilings; ``oracle_scores`` is importable from here too)::

    run_synth(config=None, overrides=None, **explicit) -> SynthSummary   # the `affectmae synth` entry point
    generate_affwild2(out, videos=10, frames=300, seed=0, faces=300, size=112, overwrite=False,
                      source="cartoon", photos=()) -> SynthSummary
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from affectmae.config import build_config
from affectmae.errors import AffectMAEError
from affectmae.io import atomic_write_bytes, atomic_write_text
from affectmae.progress import progress_bar
from affectmae.synth.latents import LATENT_NAMES, Trajectory, labels_from_latents, sample_trajectory
from affectmae.synth.oracle import oracle_scores
from affectmae.synth.people import FaceSource
from affectmae.synth.plan import VideoPlan, plan_videos
from affectmae.tasks import EXPRESSIONS, SPLITS, TASKS

__all__ = ["SynthConfig", "run_synth", "generate_affwild2", "SynthSummary", "format_annotation", "oracle_scores"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_OUTPUTS = ("cropped_aligned", "annotations", "faces", "latents", "synth_info.json", "pseudo_labels.json")
_JPEG = [cv2.IMWRITE_JPEG_QUALITY, 90]


@dataclass
class SynthSummary:
    """What ``generate_affwild2`` wrote."""

    root: str
    seed: int
    videos: list[str]
    splits: dict[str, list[str]]  # "train"/"val" -> video names
    tasks: dict[str, dict[str, list[str]]]  # task -> split -> video names with an annotation file
    frames: int  # annotated frames over all videos
    missing_frames: int  # annotated frames without an image
    invalid_rows: dict[str, int]  # task -> rows carrying the invalid marker
    expr_counts: dict[str, int]  # valid EXPR labels per class
    faces: int
    seconds: float = 0.0
    people: dict[str, list[str]] | None = None  # photos: "train"/"val" -> person keys (None for cartoons)
    identities: dict[str, list[str]] | None = None  # photos: "train"/"val" -> identity names (None for cartoons)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SynthConfig:
    """Settings of ``affectmae synth`` (the arguments of :func:`generate_affwild2`)."""

    out: str | None = None  # output folder (must be empty or absent, unless overwrite)
    videos: int = field(default=10, metadata={"min": 1})  # annotation stems, a _left/_right pair counting as two
    frames: int = field(default=300, metadata={"min": 1})  # mean frames per video; each is 0.75-1.25x this
    seed: int = 0
    faces: int = field(default=300, metadata={"min": 0})  # single face images in out/faces for pretraining
    size: int = field(default=112, metadata={"min": 16})  # image side in pixels, as Aff-Wild2 crops
    source: str = field(default="cartoon", metadata={"choices": ("cartoon", "photos")})  # cartoon | photos
    photos: list[str] = field(default_factory=list)  # folders or files of face photographs for source=photos
    train_people: int = field(default=0, metadata={"min": 0})  # photos: use only N training people (0: all)
    exclude_people: list[str] = field(default_factory=list)  # photos: identities left out entirely (e.g. franck)
    overwrite: bool = False  # replace a dataset previously written by `affectmae synth`


def run_synth(config: str | Path | None = None, overrides: list[str] | dict | None = None, **explicit) -> SynthSummary:
    """Defaults < config file < ``key=value`` overrides < explicit arguments that are not None; then generate."""
    cfg = build_config(SynthConfig, config, overrides, **explicit)
    if not cfg.out:
        raise AffectMAEError("synth needs an output folder: OUT on the command line or out: in the config")
    return generate_affwild2(
        cfg.out, videos=cfg.videos, frames=cfg.frames, seed=cfg.seed, faces=cfg.faces, size=cfg.size,
        overwrite=cfg.overwrite, source=cfg.source, photos=cfg.photos, train_people=cfg.train_people,
        exclude_people=cfg.exclude_people,
    )


def _runs_mask(n: int, count: int, min_len: int, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) bool with ``count`` random runs of ``min_len..max_len`` frames set (runs may touch)."""
    mask = np.zeros(n, dtype=bool)
    for _ in range(count):
        length = int(min(rng.integers(min_len, max_len + 1), max(1, n // 4)))
        start = int(rng.integers(0, max(1, n - length)))
        mask[start : start + length] = True
    return mask


def format_annotation(task: str, rows: np.ndarray, invalid: np.ndarray) -> str:
    """The text of an Aff-Wild2 annotation file. rows: (N, label_width) labels; invalid: (N,) bool."""
    spec = TASKS[task]
    lines = [",".join(spec.columns)]
    if spec.kind == "regression":
        body = [",".join(f"{v + 0.0:.3f}" for v in np.round(row, 3)) for row in rows]
        marker = ",".join(["-5"] * spec.num_outputs)
    else:
        body = [",".join(str(int(v)) for v in row) for row in rows]
        marker = ",".join(["-1"] * spec.label_width)
    lines += [marker if bad else text for text, bad in zip(body, invalid, strict=True)]
    return "\n".join(lines) + "\n"


def _prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise AffectMAEError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        ours = (out / "synth_info.json").is_file()
        if not overwrite:
            hint = " (pass --overwrite to replace this synthetic dataset)" if ours else ""
            raise AffectMAEError(f"output folder {out} is not empty{hint}")
        if not ours:
            raise AffectMAEError(f"output folder {out} is not empty and holds no synth_info.json; refusing to overwrite it")
        for name in _OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def encode_jpeg(rgb: np.ndarray) -> bytes:
    """``rgb (H, W, 3)`` uint8 -> the bytes of a JPEG at the quality of the dataset's frames."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), _JPEG)
    if not ok:  # pragma: no cover - OpenCV built without JPEG support
        raise AffectMAEError("OpenCV could not encode a JPEG image")
    return buf.tobytes()


def _write_frames(folder: Path, traj: Trajectory, present: np.ndarray, faces: FaceSource, person, size: int, rng) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t in np.flatnonzero(present):
        img = faces.render(
            person, traj.observed[t], rng, size, pose=traj.pose[t], light=traj.light[t],
            occlusion=int(traj.occlusion[t]), blur=float(traj.blur[t]),
        )
        (folder / f"{t + 1:05d}.jpg").write_bytes(encode_jpeg(img))


def _write_faces(folder: Path, count: int, seed: int, size: int, faces: FaceSource) -> dict[str, np.ndarray]:
    """``count`` single faces, each a (training) person at a random moment of a short trajectory; returns
    their latents."""
    rng = np.random.default_rng([seed, 1_000_003])
    folder.mkdir(parents=True, exist_ok=True)
    latent = np.zeros((count, len(LATENT_NAMES)), np.float32)
    observed = np.zeros_like(latent)
    for i in progress_bar(range(count), desc="synth faces", unit="face", leave=False):
        traj = sample_trajectory(60, rng, occlusion_rate=0.0, blur_rate=0.0)
        t = int(rng.integers(60))
        latent[i], observed[i] = traj.latent[t], traj.observed[t]
        person = faces.person("train", i, rng)
        img = faces.render(person, traj.observed[t], rng, size, pose=traj.pose[t], light=traj.light[t])
        (folder / f"{i + 1:05d}.jpg").write_bytes(encode_jpeg(img))
    files = np.array([f"{i + 1:05d}.jpg" for i in range(count)])
    return {"latent": latent, "observed": observed, "files": files}


def generate_affwild2(
    out: str | Path,
    videos: int = 10,
    frames: int = 300,
    seed: int = 0,
    faces: int = 300,
    size: int = 112,
    overwrite: bool = False,
    source: str = "cartoon",
    photos: list[str] | tuple = (),
    train_people: int = 0,
    exclude_people: list[str] | tuple = (),
) -> SynthSummary:
    """Write a synthetic Aff-Wild2 dataset to ``out`` (layout in the module docstring) and return a summary.

    ``frames`` is the mean video length (each video has 0.75-1.25 x ``frames`` frames); ``videos`` counts
    annotation stems, the ``_left``/``_right`` pair as two. With ``videos >= 3`` every task has at least two
    train videos and one validation video. ``source="photos"`` animates real face photographs (the packaged
    ones plus ``photos`` folders/files; :mod:`affectmae.synth.photos`) instead of drawing cartoon faces;
    validation videos then show only people who appear in no training video and no ``faces/`` image, and
    ``train_people`` > 0 keeps only that many training people (the validation people stay those of the seed).
    ``exclude_people``: identities (names as in ``synth_info.json``'s ``identity_split``, e.g. ``franck``) that
    appear nowhere, e.g. the person of a real video the model is evaluated on; they are removed before the split.
    """
    if videos < 1 or frames < 1 or faces < 0 or size < 16:
        raise AffectMAEError(f"need videos >= 1, frames >= 1, faces >= 0, size >= 16 (got {videos}, {frames}, {faces}, {size})")
    if videos < 3:
        log.warning("%d video(s): no _left/_right pair, and not every task gets 2 train + 1 validation videos", videos)
    start_time = time.perf_counter()
    out = Path(out)
    people = FaceSource(source, seed, photos, train_people=train_people, exclude_people=exclude_people)  # before touching `out`: a missing photo source changes nothing on disk
    _prepare_output(out, overwrite)
    plan = plan_videos(videos, frames, seed)
    info = {
        "format_version": FORMAT_VERSION,
        "generator": "affectmae synth",
        "complete": False,  # until the end, so an interrupted run can be replaced with --overwrite
        "parameters": {"videos": videos, "frames": frames, "seed": seed, "faces": faces, "size": size,
                       "source": source, "photos": [str(p) for p in photos], "train_people": train_people,
                       "exclude_people": list(exclude_people)},
        "people": people.info,
    }
    atomic_write_text(out / "synth_info.json", json.dumps(info, indent=2) + "\n")
    first_with_task: set[str] = set()
    info_videos = []
    expr_counts = np.zeros(len(EXPRESSIONS), dtype=np.int64)
    seen = {split: 0 for split in SPLITS}  # people handed out per split, so consecutive videos differ
    for video in progress_bar(plan, desc="synth videos", unit="video"):
        entry, video_expr = _write_video(out, video, seed, size, people, seen, first_with_task)
        info_videos.append(entry)
        expr_counts += video_expr
    face_latents = _write_faces(out / "faces", faces, seed, size, people)
    atomic_write_bytes(out / "latents" / "faces.npz", _npz_bytes(face_latents))
    summary = _summarize(out, seed, faces, people, info_videos, expr_counts)
    info.update(
        complete=True, latent_names=list(LATENT_NAMES), videos=info_videos, splits=summary.splits,
        tasks=summary.tasks, expr_counts=summary.expr_counts,
    )
    atomic_write_text(out / "synth_info.json", json.dumps(info, indent=2) + "\n")
    summary.seconds = round(time.perf_counter() - start_time, 2)
    log.info(
        "wrote %d videos (%d frames, %d without a face image) and %d face images to %s in %.1f s",
        len(plan), summary.frames, summary.missing_frames, faces, out, summary.seconds,
    )
    return summary


def _write_video(out: Path, video: VideoPlan, seed: int, size: int, people: FaceSource, seen: dict[str, int],
                 first_with_task: set[str]) -> tuple[dict, np.ndarray]:
    """Frames, annotation files and latents of one planned video, from its own random stream.

    Returns the video's ``synth_info.json`` entry and its count of valid EXPR labels per class. ``seen`` (people
    handed out per split) and ``first_with_task`` (tasks already written once) are updated.
    """
    name, n = video.name, video.n_frames
    rng = np.random.default_rng([seed, video.index + 1])
    traj = sample_trajectory(n, rng)
    person = people.person(video.split, seen[video.split], rng)
    seen[video.split] += 1
    missing = _runs_mask(n, 1 + int(rng.random() < 0.3), 2, 10, rng) if n >= 20 else np.zeros(n, bool)
    present = ~missing
    _write_frames(out / "cropped_aligned" / name, traj, present, people, person, size, rng)
    invalid_counts, expr_counts = _write_annotations(out, video, traj, rng, first_with_task)
    atomic_write_bytes(out / "latents" / f"{name}.npz", _npz_bytes({**asdict(traj), "present": present}))
    entry = {"name": name, "split": video.split, "tasks": list(video.tasks), "frames": n,
             "missing_frames": int(missing.sum()), "invalid_rows": invalid_counts, "person": people.name(person),
             "identity": people.identity(person)}
    return entry, expr_counts


def _write_annotations(out: Path, video: VideoPlan, traj: Trajectory, rng: np.random.Generator,
                       first_with_task: set[str]) -> tuple[dict[str, int], np.ndarray]:
    """One annotation file per task of ``video``, each with random invalid runs (the first file of each task
    has one for sure). Returns invalid rows per task and valid EXPR labels per class."""
    n = video.n_frames
    va, expr, au = labels_from_latents(traj.latent)
    invalid_counts = {}
    expr_counts = np.zeros(len(EXPRESSIONS), dtype=np.int64)
    for task in video.tasks:
        forced = task not in first_with_task
        first_with_task.add(task)
        count = 1 if forced and n >= 10 else int(rng.random() < 0.5 and n >= 10)
        invalid = _runs_mask(n, count, 3, 15, rng)
        rows = {"va": va, "expr": expr[:, None], "au": au}[task]
        text = format_annotation(task, rows, invalid)
        path = out / "annotations" / TASKS[task].challenge_dir / SPLITS[video.split] / f"{video.name}.txt"
        atomic_write_text(path, text)
        invalid_counts[task] = int(invalid.sum())
        if task == "expr":
            expr_counts += np.bincount(expr[~invalid], minlength=len(EXPRESSIONS))
    return invalid_counts, expr_counts


def _summarize(out: Path, seed: int, faces: int, people: FaceSource, info_videos: list[dict],
               expr_counts: np.ndarray) -> SynthSummary:
    splits = {s: [v["name"] for v in info_videos if v["split"] == s] for s in SPLITS}
    task_splits = {t: {s: [v["name"] for v in info_videos if v["split"] == s and t in v["tasks"]] for s in SPLITS} for t in TASKS}
    return SynthSummary(
        root=str(out), seed=seed, videos=[v["name"] for v in info_videos], splits=splits, tasks=task_splits,
        frames=sum(v["frames"] for v in info_videos), missing_frames=sum(v["missing_frames"] for v in info_videos),
        invalid_rows={t: sum(v["invalid_rows"].get(t, 0) for v in info_videos) for t in TASKS},
        expr_counts={c: int(k) for c, k in zip(EXPRESSIONS, expr_counts, strict=True)}, faces=faces,
        people=people.info.get("split"), identities=people.info.get("identity_split"),
    )


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
