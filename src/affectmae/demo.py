"""`affectmae demo`: every stage of the pipeline at toy scale, on data the package generates itself.

synth (real face photographs animated by affect latents; validation people unseen in training) -> pretrain
(MAE) -> finetune (EXPR) -> extract (fine-tuned, MAE-only, random-init and raw-pixel features) -> train VA,
EXPR and AU -> 5-fold cv table -> ablation table with baselines over several seeds -> export a MODEL_DIR ->
predict + score the validation set -> analyze a generated MP4 in which the face detector finds the faces.

Each stage calls the same library function as its subcommand and reads what the previous stage wrote, so
the output folder is a worked example of a full project. No network access (run time: README and
docs/benchmarks.md). Layout of ``OUT`` (default ``demo_output/``)::

    data/        synthetic Aff-Wild2 (cropped_aligned/, annotations/, faces/)
    pretrain/    MAE run folder: encoder.safetensors, reconstruction PNGs, metrics.jsonl, tensorboard/
    finetune/    EXPR fine-tuning run folder (encoder.safetensors of the best epoch, best.json)
    features/ features_mae/ features_random/ features_pixels/     one float16 array per video
    train/<task>/               temporal run folders (best.safetensors, best.json, metrics.jsonl)
    cv/ ablate/                 tables (markdown, CSV, JSON)
    model/                      MODEL_DIR for `affectmae analyze`
    predictions/                ABAW submission CSVs + scores.json
    analyze/                    predictions.csv and plots for demo_video.mp4
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
    analyze_frames: int = 150
    analyze_faces: int = 2


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
    encoder = _encoder_stages(cfg, out, timings)
    temporal = _temporal_stages(cfg, out, timings)
    deployed = _deploy_stages(cfg, out, encoder, list(temporal["runs"].values()), timings)
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
    }
    atomic_write_text(out / "demo_summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _encoder_stages(cfg: DemoConfig, out: Path, timings: dict[str, float]) -> Path:
    """synth -> pretrain -> finetune -> extract (four feature folders); returns the fine-tuned encoder."""
    data = out / "data"
    with _stage(timings, "synth"):
        generate_affwild2(data, videos=cfg.videos, frames=cfg.frames, seed=cfg.seed, faces=cfg.faces, overwrite=True,
                          source=cfg.source)
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
        # the fine-tuned encoder, then the baselines: MAE only, the same architecture with random weights, pixels
        for folder, enc in (("features", encoder), ("features_mae", Path(pretrain_dir) / ENCODER_FILE),
                            ("features_random", f"random:{encoder}"), ("features_pixels", "pixels:24")):
            extract_features(ExtractConfig(encoder=str(enc), frames=str(data / "cropped_aligned"), seed=cfg.seed,
                                           out=str(out / folder), annotations=str(data / "annotations"),
                                           overwrite=True))
    return encoder


def _temporal_stages(cfg: DemoConfig, out: Path, timings: dict[str, float]) -> dict:
    """train VA, EXPR and AU -> the cv table -> the ablation table; returns runs, scores and tables."""
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
                          seeds=[cfg.seed + s for s in cfg.ablation_seeds])
    return {"runs": runs, "validation": validation, "cv": cv, "ablation": ablation}


def _deploy_stages(cfg: DemoConfig, out: Path, encoder: Path, runs: list[Path], timings: dict[str, float]) -> dict:
    """export a MODEL_DIR -> predict + score the validation videos -> analyze a generated MP4."""
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
        video = out / "demo_video.mp4"
        make_synthetic_video(video, cfg.analyze_frames, n_faces=cfg.analyze_faces, seed=cfg.seed,
                             cut_at=cfg.analyze_frames * 2 // 3, no_face=(cfg.analyze_frames // 3, cfg.analyze_frames // 3 + 10))
        table = analyze_video(video, model_dir, out_dir=out / "analyze")
    return {"model_dir": model_dir, "written": written, "scores": scores, "table": table}
