"""The extraction job (``affectmae extract``): an encoder over every frame of every video, into a feature store.

    summary = run_extract("extract.yaml", ["batch_size=64"], out="FEATURES")   # CLI: affectmae extract
    summary = extract_features(ExtractConfig(encoder=..., frames=..., out=...))

Frames come from :mod:`affectmae.features.frames` (frame counts, decoding); the features go into the
layout of :mod:`affectmae.features.store`, one video at a time, so an interrupted run resumes where it
stopped (finished videos are skipped; a damaged one, see :func:`affectmae.features.store.video_problem`,
is extracted again). The merged config is saved as ``FEATURES/config.yaml``.

Before any work: a video to extract without a single frame image under ``frames`` is an error naming it
(its features would be filler only), unless ``allow_missing_videos=true``, which skips it; when no video
has frames, ``frames`` is wrong and that is said. The encoder's fingerprint (its weights, input size,
normalisation and pooling; :mod:`affectmae.features.fingerprint`) goes into ``features.json`` as
``encoder_sha256``, beside ``encoder_weights_sha256`` and ``encoder_input``.

``encoder`` names a checkpoint (ours, reference-MAE ``.pth`` or timm) or a baseline of the ablation table
(``pixels[:S]``, ``random:<checkpoint>``; :mod:`affectmae.models.baseline_encoders`), all through this
same code path. ``quantize="int8"`` runs the encoder with dynamically quantised Linear layers on the CPU
(speed and fidelity in docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from affectmae.config import build_config, check_config, save_config
from affectmae.errors import AffectMAEError
from affectmae.features.frames import iter_decoded, video_frame_counts
from affectmae.features.store import (
    FEATURES_FORMAT,
    FEATURES_VERSION,
    MISSING_METHODS,
    video_problem,
    write_features_meta,
    write_video_features,
)
from affectmae.io import OutputLayout, check_output_dir, prepare_output_dir
from affectmae.progress import progress_bar

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "int8")
# the output-folder rule (affectmae.io): a features folder is continued (finished videos kept) or, with
# overwrite, cleared of every feature file first
FEATURES_LAYOUT = OutputLayout("extract", finished=("features.json", "*.npy"),
                               owned=("features.json", "config.yaml", "*.npy"), continues=True)


@dataclass
class ExtractConfig:
    RENAMED: ClassVar[dict[str, str]] = {"torch_threads": "threads"}

    encoder: str = ""  # encoder checkpoint (ours, reference MAE .pth, timm), or pixels[:S] / random:<checkpoint>
    seed: int = 0  # weights of a random:<checkpoint> encoder (models/baseline_encoders.py)
    # encoder input size (px); None: the checkpoint's. Another size resamples the position embedding once
    img_size: int | None = field(default=None, metadata={"min": 16})
    pooling: str | None = None  # cls | mean | mae_global; None: the checkpoint's (models/vit.py)
    num_heads: int | None = None  # attention heads of a foreign checkpoint that does not name them
    frames: str = field(default="", metadata={"path": "dir"})  # cropped_aligned/ root: <frames>/<video>/00001.jpg
    out: str = field(default="", metadata={"path": "out_dir"})  # features folder
    # optional Aff-Wild2 annotation root (frame counts); "" = count from the frame folders
    annotations: str = field(default="", metadata={"path": "dir"})
    videos: list[str] | None = None  # optional subset of videos
    # annotated videos without a single frame image: an error naming them, unless true (then they are skipped)
    allow_missing_videos: bool = False
    batch_size: int = field(default=32, metadata={"min": 1})
    # -1 auto: 0 on CPU (decode between batches), 2 on GPU (decode ahead); see iter_decoded
    decode_threads: int = field(default=-1, metadata={"min": -1})
    # frame decoding: auto | simplejpeg | pillow on the CPU, cuda = nvJPEG on the GPU (features/frames.py)
    decoder: str = field(default="auto", metadata={"choices": ("auto", "simplejpeg", "pillow", "cuda")})
    pack: str | None = field(default=None, metadata={"path": "dir"})  # a pack of the frames (affectmae pack --frames)
    missing: str = field(default="linear", metadata={"choices": MISSING_METHODS})  # linear | nearest | zero
    threads: int = field(default=0, metadata={"min": 0})  # torch threads; 0 = torch default
    device: str = "auto"  # auto = cuda when available, else cpu
    # none | int8: dynamic int8 Linear layers (CPU only; see docs/benchmarks.md)
    quantize: str = field(default="none", metadata={"choices": QUANTIZE_MODES})
    overwrite: bool = False  # replace the features already in `out` (otherwise finished videos are kept)


def quantize_encoder(encoder, mode: str):
    """``mode="int8"``: the encoder with its Linear layers dynamically quantised to int8 (CPU only).

    ``benchmarks/bench_extract.py`` reports the speed-up and the cosine similarity to fp32 features.
    """
    import torch

    if mode == "none":
        return encoder
    if mode != "int8":
        raise AffectMAEError(f"unknown quantize mode {mode!r}; choose one of {', '.join(QUANTIZE_MODES)}")
    from affectmae.models.fast_linear import use_fast_linear

    plain = use_fast_linear(copy.deepcopy(encoder), enabled=False)  # the quantiser maps plain nn.Linear only
    return torch.ao.quantization.quantize_dynamic(plain, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def _check_settings(cfg: ExtractConfig) -> None:
    check_config(cfg)  # also when the config was made in code rather than by build_config
    if not cfg.encoder or not cfg.frames or not cfg.out:
        raise AffectMAEError("extract needs an encoder checkpoint, a frames folder and an output folder")
    if cfg.decoder == "cuda" and cfg.pack:
        raise AffectMAEError("extract: decoder=cuda decodes JPEGs; a pack holds decoded frames already (pass one)")


def load_extract_encoder(cfg: ExtractConfig, device):
    """The encoder ``cfg`` names, in eval mode on ``device`` (quantised when asked); returns
    ``(encoder, identifier, metadata, fingerprint)``: the first three as
    :func:`affectmae.models.baseline_encoders.build_extract_encoder`, the last the encoder's fingerprint before
    any quantisation (:func:`~affectmae.features.fingerprint.fingerprint_of`)."""
    from affectmae.features.fingerprint import fingerprint_of
    from affectmae.models.baseline_encoders import build_extract_encoder

    if cfg.quantize != "none" and device.type != "cpu":  # the mode itself is checked with the config
        raise AffectMAEError(f"quantize={cfg.quantize} runs on the CPU only; use device=cpu")
    built, enc_id, enc_meta = build_extract_encoder(cfg.encoder, cfg.seed, img_size=cfg.img_size,
                                                    pooling=cfg.pooling, num_heads=cfg.num_heads)
    fingerprint = fingerprint_of(built)
    return quantize_encoder(built.eval().to(device), cfg.quantize), enc_id, enc_meta, fingerprint


def _frame_encoder(encoder, device, size: int):
    """uint8 images (B, S, S, 3) -> pooled features (B, D) float32 numpy."""
    import torch

    from affectmae.models.preprocess import encoder_normalisation, preprocess_frames

    mean, std = encoder_normalisation(encoder)

    @torch.inference_mode()
    def encode(images: np.ndarray) -> np.ndarray:
        x = preprocess_frames(images, size, mean, std).to(device)
        return encoder.forward_features(x)["pooled"].float().cpu().numpy()

    return encode


def extract_features(cfg: ExtractConfig) -> dict:
    """Run the encoder over every frame of every video; resumable (finished videos are skipped).

    Returns a summary: videos done/skipped, frames, missing and corrupt frame counts, frames/s.
    """
    import torch

    from affectmae.datasets.affwild2 import FrameIndex
    from affectmae.device import select_device

    _check_settings(cfg)
    mode = check_output_dir(cfg.out, FEATURES_LAYOUT, overwrite=cfg.overwrite)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    frame_index = FrameIndex(cfg.frames)
    counts = video_frame_counts(frame_index, cfg.annotations or None, list(cfg.videos) if cfg.videos else None)
    counts, without_frames = _videos_with_frames(frame_index, counts, cfg.allow_missing_videos)
    device = select_device(cfg.device)
    if cfg.decoder == "cuda" and device.type != "cuda":
        raise AffectMAEError(f"extract: decoder=cuda needs the encoder on a GPU, not {device}")
    pack = None
    if cfg.pack:
        from affectmae.datasets.pack import open_frames_pack

        pack = open_frames_pack(cfg.pack)
    encoder, enc_id, enc_meta, fingerprint = load_extract_encoder(cfg, device)
    decode_threads = cfg.decode_threads if cfg.decode_threads >= 0 else (0 if device.type == "cpu" else 2)
    dim = int(encoder.embed_dim)
    size = int(encoder.arch["img_size"])
    root = prepare_output_dir(cfg.out, FEATURES_LAYOUT, mode)  # --overwrite clears; a killed run's .tmp files go
    cpu_gemm = _continued_cpu_gemm(root / "features.json")
    write_features_meta(root, {"cpu_gemm": cpu_gemm,
        "format": FEATURES_FORMAT, "version": FEATURES_VERSION, "encoder": enc_id, "encoder_meta": enc_meta,
        **fingerprint.record(),
        "dim": dim, "dtype": "float16", "img_size": size, "missing": cfg.missing, "quantize": cfg.quantize,
        "mask": "present: True where the frame image existed and decoded"})
    save_config(cfg, root / "config.yaml")
    encode = _frame_encoder(encoder, device, size)
    summary = _extract_videos(cfg, frame_index, counts, root, dim, size, encode, decode_threads, pack)
    return {**summary, "without_frames": without_frames}


def _videos_with_frames(frame_index, counts: dict[str, int], allow_missing: bool) -> tuple[dict[str, int], list[str]]:
    """``counts`` without the videos that have no frame image at all, and those videos' names: an error
    unless ``allow_missing`` (the rule :func:`affectmae.datasets.affwild2.videos_without_frames`, shared with
    ``finetune``)."""
    from affectmae.datasets.affwild2 import videos_without_frames

    without = videos_without_frames(frame_index, list(counts), "to extract", allow_missing)
    return {v: n for v, n in counts.items() if v not in without}, without


def _continued_cpu_gemm(meta_path: Path) -> str:
    """The CPU linear backend of the features already in the folder (a continued extraction computes the rest
    as the first part), else this process's (:mod:`affectmae.models.fast_linear`)."""
    import json

    from affectmae.models.fast_linear import adopt_cpu_gemm_backend

    recorded = json.loads(meta_path.read_text()).get("cpu_gemm") if meta_path.is_file() else None
    return adopt_cpu_gemm_backend(recorded, str(meta_path))


def _extract_videos(cfg: ExtractConfig, frame_index, counts: dict[str, int], root: Path, dim: int, size: int,
                    encode, decode_threads: int, pack=None) -> dict:
    """The videos of ``counts`` that ``root`` does not hold yet, one after the other; returns the summary."""
    todo = [v for v in counts if _needs_extraction(root, v, counts[v], dim, frame_index)]
    summary = {"videos": len(counts), "skipped_done": len(counts) - len(todo), "extracted": 0, "frames": 0,
               "missing": 0, "corrupt": 0, "per_video": {}}
    if summary["skipped_done"]:
        log.info("%d of %d videos already extracted in %s; skipping them", summary["skipped_done"], len(counts), root)
    t0 = time.perf_counter()
    bar = progress_bar(total=sum(counts[v] for v in todo), unit="frame", desc="extract")
    for video in todo:
        n = counts[video]
        present = frame_index.available(video, n)
        batches = iter_decoded(frame_index, video, n, present, size, cfg.batch_size, decode_threads, decoder=cfg.decoder,
                               pack=pack)

        def counted(batches=batches):
            for images, ks, bad in batches:
                yield images, ks, bad
                bar.update(len(ks) + bad if ks or bad else 0)

        info = write_video_features(root, video, n, dim, counted(), encode, cfg.missing)
        bar.update(n - info["present"] - info["corrupt"])
        summary["per_video"][video] = info
        summary["extracted"] += 1
        summary["frames"] += n
        summary["missing"] += info["missing"]
        summary["corrupt"] += info["corrupt"]
    bar.close()
    seconds = time.perf_counter() - t0
    summary["seconds"] = round(seconds, 3)
    summary["frames_per_s"] = round(summary["frames"] / seconds, 2) if seconds > 0 else None
    if summary["corrupt"]:
        log.warning("%d corrupt frame images were treated as missing (see warnings above)", summary["corrupt"])
    log.info("extracted %d videos (%d frames, %d without image filled by %s) into %s",
             summary["extracted"], summary["frames"], summary["missing"], cfg.missing, root)
    return summary


def _needs_extraction(root: Path, video: str, n: int, dim: int, frame_index) -> bool:
    """True unless ``root`` holds a finished, undamaged ``video`` of ``n`` frames (a damaged one is logged).
    A video stored without a single present frame while its frame images are there now (written from a
    wrong frames root by an older version) is extracted again too."""
    if not (root / f"{video}.npy").is_file():
        return True
    found = video_problem(root, video, dim, n)
    if found is not None:
        log.warning("%s: damaged (%s); extracting %s again", found[0], found[1], video)
        return True
    if not np.load(root / f"{video}.mask.npy").any() and frame_index.available(video, n).any():
        log.warning("%s: stored without any frame image, but its frames are in %s now; extracting it again",
                    video, frame_index.root)
        return True
    return False


def run_extract(config: str | Path | None = None, overrides: list[str] | dict | None = None, **explicit) -> dict:
    """``affectmae extract``: defaults < config file < ``key=value`` overrides < ``explicit`` settings."""
    return extract_features(build_config(ExtractConfig, config, overrides, **explicit))
