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

Generation uses :mod:`affectmae.synth.latents` (``sample_trajectory``, ``labels_from_latents``) and
:mod:`affectmae.synth.cartoon` (``render_face``, ``sample_identity``), re-exported here::

    generate_affwild2(out, videos=10, frames=300, seed=0, faces=300, size=112, overwrite=False) -> SynthSummary
    plan_videos(videos, frames, seed) -> list[VideoPlan]        # names, splits, tasks, lengths (no rendering)
    oracle_scores(root, split="val") -> {"latent"|"frame"|"temporal": {"va"|"expr"|"au": score}}
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from affectmae.errors import AffectMAEError
from affectmae.io import atomic_write_bytes, atomic_write_text
from affectmae.synth.cartoon import FaceIdentity, render_face, sample_identity
from affectmae.synth.latents import (
    LATENT_NAMES,
    LATENT_REGION,
    OCCLUSION_LOWER,
    OCCLUSION_UPPER,
    Trajectory,
    labels_from_latents,
    sample_trajectory,
)
from affectmae.tasks import EXPRESSIONS, SPLITS, TASKS

__all__ = [
    "generate_affwild2", "plan_videos", "VideoPlan", "SynthSummary", "format_annotation",
    "oracle_scores", "oracle_predictions",
    "sample_trajectory", "labels_from_latents", "Trajectory", "LATENT_NAMES",
    "render_face", "sample_identity", "FaceIdentity",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_OUTPUTS = ("cropped_aligned", "annotations", "faces", "latents", "synth_info.json")
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

    def to_dict(self) -> dict:
        return asdict(self)


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


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), _JPEG)
    if not ok:  # pragma: no cover - OpenCV built without JPEG support
        raise AffectMAEError("OpenCV could not encode a JPEG image")
    return buf.tobytes()


class _Faces:
    """Who is drawn and how: cartoon people (a new random identity per video) or animated real photographs.

    With photographs the people are split once: ``val_fraction`` of them (at least 2) appear only in validation
    videos; training videos and the pretraining ``faces/`` images use the others. Rendering goes through
    :func:`render_face` or :func:`~affectmae.synth.photos.render_photo_face` with the same arguments.
    """

    def __init__(self, source: str, seed: int, photos=(), val_fraction: float = 0.25):
        self.source = source
        self.info: dict = {"source": source}
        self.people: dict[str, list] = {}
        if source == "cartoon":
            return
        if source != "photos":
            raise AffectMAEError(f"unknown synth source {source!r}; choose cartoon or photos")
        from affectmae.synth import photos as photo_faces

        paths = photo_faces.find_face_photos(list(photos))
        people = photo_faces.load_photo_people(paths)
        if len(people) < 4:
            raise AffectMAEError(
                f"synth --source photos found {len(people)} usable face(s) in {len(paths)} image(s); it needs at "
                f"least 4 people (2 for training, 2 unseen for validation). Install the packaged photos with "
                f"`{photo_faces.INSTALL_HINT}` or pass folders of face photographs with --photos")
        order = np.random.default_rng([seed, 7]).permutation(len(people))
        n_val = max(2, int(round(val_fraction * len(people))))
        self.people = {"val": [people[i] for i in order[:n_val]], "train": [people[i] for i in order[n_val:]]}
        self.info.update(
            photos=len(paths), fingerprint=photo_faces.people_fingerprint(people),
            split={split: [p.key for p in group] for split, group in self.people.items()},
            sources=sorted({p.source for p in people}),
        )

    def person(self, split: str, k: int, rng: np.random.Generator):
        """The k-th person of ``split`` (cycling), or a new cartoon identity."""
        if self.source == "cartoon":
            return sample_identity(rng)
        group = self.people[split]
        return group[k % len(group)]

    def name(self, person) -> str | None:
        return getattr(person, "key", None)

    def render(self, person, params, rng, size, **nuisances) -> np.ndarray:
        if self.source == "cartoon":
            return render_face(params, rng, size, identity=person, **nuisances)
        from affectmae.synth.photos import render_photo_face

        return render_photo_face(person, params, rng, size, **nuisances)


def _write_frames(folder: Path, traj: Trajectory, present: np.ndarray, faces: _Faces, person, size: int, rng) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t in np.flatnonzero(present):
        img = faces.render(
            person, traj.observed[t], rng, size, pose=traj.pose[t], light=traj.light[t],
            occlusion=int(traj.occlusion[t]), blur=float(traj.blur[t]),
        )
        (folder / f"{t + 1:05d}.jpg").write_bytes(_jpeg(img))


def _write_faces(folder: Path, count: int, seed: int, size: int, faces: _Faces) -> dict[str, np.ndarray]:
    """``count`` single faces, each a (training) person at a random moment of a short trajectory; returns
    their latents."""
    rng = np.random.default_rng([seed, 1_000_003])
    folder.mkdir(parents=True, exist_ok=True)
    latent = np.zeros((count, len(LATENT_NAMES)), np.float32)
    observed = np.zeros_like(latent)
    for i in tqdm(range(count), desc="synth faces", disable=None, leave=False):
        traj = sample_trajectory(60, rng, occlusion_rate=0.0, blur_rate=0.0)
        t = int(rng.integers(60))
        latent[i], observed[i] = traj.latent[t], traj.observed[t]
        person = faces.person("train", i, rng)
        img = faces.render(person, traj.observed[t], rng, size, pose=traj.pose[t], light=traj.light[t])
        (folder / f"{i + 1:05d}.jpg").write_bytes(_jpeg(img))
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
) -> SynthSummary:
    """Write a synthetic Aff-Wild2 dataset to ``out`` (layout in the module docstring) and return a summary.

    ``frames`` is the mean video length (each video has 0.75-1.25 x ``frames`` frames); ``videos`` counts
    annotation stems, the ``_left``/``_right`` pair as two. With ``videos >= 3`` every task has at least two
    train videos and one validation video. ``source="photos"`` animates real face photographs (the packaged
    ones plus ``photos`` folders/files; :mod:`affectmae.synth.photos`) instead of drawing cartoon faces;
    validation videos then show only people who appear in no training video and no ``faces/`` image.
    """
    if videos < 1 or frames < 1 or faces < 0 or size < 16:
        raise AffectMAEError(f"need videos >= 1, frames >= 1, faces >= 0, size >= 16 (got {videos}, {frames}, {faces}, {size})")
    if videos < 3:
        log.warning("%d video(s): no _left/_right pair, and not every task gets 2 train + 1 validation videos", videos)
    start_time = time.perf_counter()
    out = Path(out)
    people = _Faces(source, seed, photos)  # before touching `out`: a missing photo source changes nothing on disk
    _prepare_output(out, overwrite)
    plan = plan_videos(videos, frames, seed)
    info = {
        "format_version": FORMAT_VERSION,
        "generator": "affectmae synth",
        "complete": False,  # until the end, so an interrupted run can be replaced with --overwrite
        "parameters": {"videos": videos, "frames": frames, "seed": seed, "faces": faces, "size": size,
                       "source": source, "photos": [str(p) for p in photos]},
        "people": people.info,
    }
    atomic_write_text(out / "synth_info.json", json.dumps(info, indent=2) + "\n")
    first_with_task: set[str] = set()

    info_videos, invalid_total = [], {t: 0 for t in TASKS}
    expr_counts = np.zeros(len(EXPRESSIONS), dtype=np.int64)
    n_frames_total = n_missing_total = 0
    seen = {split: 0 for split in SPLITS}  # people handed out per split, so consecutive videos differ
    for video in tqdm(plan, desc="synth videos", disable=None):
        name, n = video.name, video.n_frames
        rng = np.random.default_rng([seed, video.index + 1])
        traj = sample_trajectory(n, rng)
        person = people.person(video.split, seen[video.split], rng)
        seen[video.split] += 1
        missing = _runs_mask(n, 1 + int(rng.random() < 0.3), 2, 10, rng) if n >= 20 else np.zeros(n, bool)
        present = ~missing
        _write_frames(out / "cropped_aligned" / name, traj, present, people, person, size, rng)
        va, expr, au = labels_from_latents(traj.latent)
        invalid_counts = {}
        for task in video.tasks:
            forced = task not in first_with_task
            first_with_task.add(task)
            count = 1 if forced and n >= 10 else int(rng.random() < 0.5 and n >= 10)
            invalid = _runs_mask(n, count, 3, 15, rng)
            rows = {"va": va, "expr": expr[:, None], "au": au}[task]
            text = format_annotation(task, rows, invalid)
            path = out / "annotations" / TASKS[task].challenge_dir / SPLITS[video.split] / f"{name}.txt"
            atomic_write_text(path, text)
            invalid_counts[task] = int(invalid.sum())
            invalid_total[task] += int(invalid.sum())
            if task == "expr":
                expr_counts += np.bincount(expr[~invalid], minlength=len(EXPRESSIONS))
        atomic_write_bytes(out / "latents" / f"{name}.npz", _npz_bytes({**asdict(traj), "present": present}))
        n_frames_total += n
        n_missing_total += int(missing.sum())
        info_videos.append(
            {"name": name, "split": video.split, "tasks": list(video.tasks), "frames": n,
             "missing_frames": int(missing.sum()), "invalid_rows": invalid_counts, "person": people.name(person)}
        )
    face_latents = _write_faces(out / "faces", faces, seed, size, people)
    atomic_write_bytes(out / "latents" / "faces.npz", _npz_bytes(face_latents))

    splits = {s: [v["name"] for v in info_videos if v["split"] == s] for s in SPLITS}
    task_splits = {t: {s: [v["name"] for v in info_videos if v["split"] == s and t in v["tasks"]] for s in SPLITS} for t in TASKS}
    summary = SynthSummary(
        root=str(out), seed=seed, videos=[v["name"] for v in info_videos], splits=splits, tasks=task_splits,
        frames=n_frames_total, missing_frames=n_missing_total, invalid_rows=invalid_total,
        expr_counts={c: int(k) for c, k in zip(EXPRESSIONS, expr_counts, strict=True)}, faces=faces,
        people=people.info.get("split"),
    )
    info.update(
        complete=True, latent_names=list(LATENT_NAMES), videos=info_videos, splits=splits, tasks=task_splits,
        expr_counts=summary.expr_counts,
    )
    atomic_write_text(out / "synth_info.json", json.dumps(info, indent=2) + "\n")
    summary.seconds = round(time.perf_counter() - start_time, 2)
    log.info(
        "wrote %d videos (%d frames, %d without a face image) and %d face images to %s in %.1f s",
        len(plan), n_frames_total, n_missing_total, faces, out, summary.seconds,
    )
    return summary


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ oracle
def _hidden_mask(occlusion: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(T, 14) bool: latents not visible in frame t (region under the occluder, or no image at all)."""
    hidden = np.zeros((len(occlusion), len(LATENT_NAMES)), dtype=bool)
    hidden[occlusion == OCCLUSION_UPPER] = LATENT_REGION == 0
    hidden[occlusion == OCCLUSION_LOWER] = LATENT_REGION == 1
    hidden[~present] = True
    return hidden


def _nan_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of (T, C) along T that ignores NaNs (normalised convolution); NaN where no support."""
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    seen = ~np.isnan(x)
    filled = np.where(seen, x, 0.0)
    num = np.stack([np.convolve(filled[:, c], kernel, mode="same") for c in range(x.shape[1])], axis=1)
    den = np.stack([np.convolve(seen[:, c].astype(float), kernel, mode="same") for c in range(x.shape[1])], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-3, num / den, np.nan)


def oracle_predictions(latents: dict[str, np.ndarray], kind: str, sigma: float = 3.0) -> np.ndarray:
    """Latent estimate (T, 14) of one video for an oracle of ``kind``.

    - ``"latent"``: the true latent (labels are a function of it, so every score is 1 by construction);
    - ``"frame"``: per frame, the drawn parameters (latent + observation noise) where visible; latents hidden
      by an occluder or a missing image fall back to the video's mean drawn value;
    - ``"temporal"``: the visible drawn parameters smoothed over time (Gaussian, ``sigma`` frames, ignoring
      hidden values), so neighbours fill occlusions and missing frames and the noise averages out.
    """
    if kind == "latent":
        return np.asarray(latents["latent"], dtype=np.float64)
    observed = np.asarray(latents["observed"], dtype=np.float64).copy()
    observed[_hidden_mask(latents["occlusion"], latents["present"])] = np.nan
    prior = np.nan_to_num(np.nanmean(observed, axis=0)) if np.isfinite(observed).any() else np.zeros(observed.shape[1])
    if kind == "temporal":
        observed = _nan_smooth(observed, sigma)
    elif kind != "frame":
        raise ValueError(f"unknown oracle kind {kind!r}")
    return np.where(np.isnan(observed), prior[None, :], observed)


def oracle_scores(root: str | Path, split: str = "val") -> dict[str, dict[str, float]]:
    """Official metrics of the three oracles of :func:`oracle_predictions` on one split of a synthetic dataset.

    Labels are read with the ordinary Aff-Wild2 reader; every annotated frame with a valid label counts once,
    including frames whose image is missing. Returns ``{"latent"|"frame"|"temporal": {"va"|"expr"|"au": score}}``.
    """
    from affectmae.datasets.affwild2 import load_annotations  # imports torch; `affectmae synth` itself does not need it
    from affectmae.evaluation.metrics import evaluate

    root = Path(root)
    scores: dict[str, dict[str, float]] = {kind: {} for kind in ("latent", "frame", "temporal")}
    for task in TASKS:
        videos = load_annotations(root / "annotations", task, split)
        preds: dict[str, list[np.ndarray]] = {kind: [] for kind in scores}
        true, valid = [], []
        for labels in videos:
            path = root / "latents" / f"{labels.video}.npz"
            if not path.is_file():
                raise AffectMAEError(f"{path}: latents missing; oracle_scores needs a dataset written by `affectmae synth`")
            with np.load(path) as data:
                latents = {k: data[k] for k in data.files}
            if len(latents["latent"]) != labels.n_frames:
                raise AffectMAEError(f"{path}: {len(latents['latent'])} frames, but {labels.source} has {labels.n_frames}")
            for kind in scores:
                va, expr, au = labels_from_latents(oracle_predictions(latents, kind))
                preds[kind].append({"va": va, "expr": expr, "au": au}[task])
            true.append(labels.labels)
            valid.append(labels.valid)
        for kind in scores:
            result = evaluate(task, np.concatenate(preds[kind]), np.concatenate(true), np.concatenate(valid))
            scores[kind][task] = round(float(result["score"]), 4)
    return scores
