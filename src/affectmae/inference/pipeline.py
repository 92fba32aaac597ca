"""Raw video -> per-frame affect table (``affectmae analyze``).

    with Analyzer("runs/model", batch_size=32, stride=1, device="auto") as analyzer:   # loads once
        for video in videos:
            df = analyzer.analyze(video, out_dir="out")
    df = analyze_video("clip.mp4", "runs/model", out_dir="out")   # one video: the same, in one call

Stages, all streaming (frames are never accumulated, so memory stays flat for hour-long videos):

1. decode (:class:`affectmae.media.video.VideoReader`; rotation applied; every ``stride``-th frame analysed)
2. detect faces (:func:`affectmae.face.detect.get_detector`): the whole frame every ``detect_every``-th
   analysed frame, patches around known faces in between (:mod:`.keyframes`; holds <= detect_every frames),
3. align each face to a 112x112 crop and describe its appearance (:mod:`.reid`), 4. cut detection +
   tracking into tracks, 5. encode crops with the ViT encoder, in a background thread with ``overlap``;
   only the (D,) float16 feature of each face is kept,
6. after the stream ends, run the temporal model over each track (``AffectModel.predict_sequence``, which
   merges overlapping windows), link tracks into people (one ``face_id`` per person across cuts, with
   ``reid``), then expand to every frame (linear interpolation between analysed frames).

The table has one row per (frame, face); a frame without any face gets one row with ``face_detected=False``,
``face_id=-1`` and NaN predictions. Its columns are described in :mod:`affectmae.inference.table`.

This module holds the settings and the loaded model; the pass over one video is
:mod:`affectmae.inference.video_pass`, the crop encoder :mod:`affectmae.inference.crop_encoder` and many
videos in one run (the ``affectmae analyze`` command) :mod:`affectmae.inference.batch`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from affectmae.device import select_device
from affectmae.errors import AffectMAEError
from affectmae.face.detect import get_detector
from affectmae.face.keyframes import KeyframeDetector
from affectmae.face.worker import WorkerDetector
from affectmae.inference.crop_encoder import CropEncoder
from affectmae.inference.table import (  # noqa: F401 (re-exported)
    AU_PROB_COLUMNS,
    BOX_COLUMNS,
    EXPR_COLUMNS,
    LANDMARK_COLUMNS,
    TABLE_COLUMNS,
    build_table,
    write_table,
)
from affectmae.inference.video_pass import STAGES, analyze_one
from affectmae.io import writing
from affectmae.models.fast_linear import adopt_cpu_gemm_backend

log = logging.getLogger(__name__)


@dataclass
class AnalyzeConfig:
    """Settings of ``affectmae analyze``. The first and last groups say what to analyse and where to write
    (:func:`affectmae.inference.batch.run_analyze`); they do not change the table."""

    inputs: list[str] = field(default_factory=list)  # video files, folders of videos or glob patterns
    model_dir: str = ""  # MODEL_DIR from `affectmae export` or `demo`
    out: str = field(default="", metadata={"path": "out_dir"})  # output folder
    batch_size: int = 32  # crops per encoder forward pass (the only frames-sized buffer)
    stride: int = 1  # analyse every k-th frame, interpolate the rest
    max_frames: int = field(default=0, metadata={"min": 0})  # only the first N frames of each video (0: all of them)
    device: str = "auto"  # cpu | cuda | auto
    detector: str = "auto"
    min_face: int = field(default=32, metadata={"min": 1})  # pixels, shorter box side
    min_score: float = field(default=0.5, metadata={"min": 0, "max": 1})
    # frames are downscaled to this longer side for detection (speed vs small faces); None: 960, and 320 with
    # `causal` (live and analyze --causal: the latency budget of 40 ms a frame; docs/analyze.md, *Live*)
    detect_max_side: int | None = field(default=None, metadata={"min": 64})
    detect_every: int = 5  # full-frame detection every k-th analysed frame; patches around known faces between
    max_faces: int = field(default=0, metadata={"min": 0})  # keep the N most confident faces per frame (0: all)
    max_age: int = field(default=25, metadata={"min": 0})  # frames a face may be missed and keep its id
    cut_threshold: float = field(default=0.5, metadata={"min": 0})  # histogram distance that counts as a shot cut
    reid: bool = True  # link tracks of one person (across cuts and long gaps) into one face_id by appearance
    reid_threshold: float = field(default=0.82, metadata={"min": -1, "max": 1})  # cosine similarity of mean track descriptors needed to link (inference/reid.py)
    reid_min_appearance: float = field(default=0.6, metadata={"min": -1, "max": 1})  # with reid: a detection less similar than this to a track never continues it
    align_margin: float | None = field(default=None, metadata={"min": 0.2, "max": 5})  # > 1 zooms the crop out; None: MODEL_DIR's "align_margin", else 1.0
    plots: bool = True
    overlap: bool = True  # encode in a background thread while the next frames are decoded and detected
    detector_worker: bool = True  # detect in a child process, replaced every detector_recycle_frames (yuface leaks)
    detector_recycle_frames: int = field(default=2000, metadata={"min": 1})
    column_names: str = "affectmae"  # CSV column names: affectmae | openface (AU12_c, confidence, success, ...)
    shard: str | None = None  # "K/N": only the K-th of N equal parts of the inputs (K = 1..N)
    video_out: bool = False  # also write OUT/<stem>.annotated.mp4
    overwrite: bool = False  # re-analyse videos already finished in OUT
    # as `affectmae live` computes it (inference/live.py): every frame from the past only, nothing held back,
    # face_id = track id; needs a streaming model (`train causal=true`)
    causal: bool = False


def model_align_margin(model_dir: str | Path) -> float:
    """The crop margin a MODEL_DIR was trained with (optional ``"align_margin"`` in affectmae_model.json).

    Models trained on Aff-Wild2 ``cropped_aligned`` frames use the template as is (1.0); a model trained on
    differently framed crops (e.g. the synthetic renderer's) records the margin that reproduces them.
    """
    meta = json.loads((Path(model_dir) / "affectmae_model.json").read_text())
    margin = meta.get("align_margin", 1.0)
    if not isinstance(margin, (int, float)) or not 0.2 <= margin <= 5:
        raise AffectMAEError(f"{model_dir}/affectmae_model.json: align_margin must be a number in [0.2, 5], got {margin!r}")
    return float(margin)


def video_outputs(out_dir: str | Path, stem: str | None = None, video_out: str | Path | None = None) -> list[Path]:
    """Every file :meth:`Analyzer.analyze` may write for one video into ``out_dir``, the summary (the mark of
    a finished video) first: ``<stem>.summary.json``, ``.csv``, ``.parquet``, ``.config.yaml``, the plots (or
    ``summary.json``, ``predictions.csv``, ... without ``stem``), and ``video_out``."""
    from affectmae.inference.plots import PLOT_NAMES

    out_dir = Path(out_dir)
    prefix = f"{stem}." if stem else ""
    names = [f"{prefix}summary.json", f"{stem}.csv" if stem else "predictions.csv",
             f"{stem or 'predictions'}.parquet", f"{prefix}config.yaml", *(f"{prefix}{n}.png" for n in PLOT_NAMES)]
    return [out_dir / n for n in names] + ([Path(video_out)] if video_out is not None else [])


def remove_outputs(paths: list[Path]) -> None:
    """Remove ``paths`` in order (those that exist)."""
    for path in paths:
        with writing(path):
            path.unlink(missing_ok=True)


DETECT_MAX_SIDE, LIVE_DETECT_MAX_SIDE = 960, 320


def detection_size(cfg: AnalyzeConfig) -> int:
    """``cfg.detect_max_side``, or its default: 960 offline, 320 for the causal (live) loop."""
    if cfg.detect_max_side is not None:
        return cfg.detect_max_side
    return LIVE_DETECT_MAX_SIDE if cfg.causal else DETECT_MAX_SIDE


def face_detectors(cfg: AnalyzeConfig) -> tuple:
    """(detector, :class:`KeyframeDetector` around it) with ``cfg``'s detector settings; the detector runs in a
    child process with ``cfg.detector_worker`` (a ``WorkerDetector``: ``close()`` it when done)."""
    det_args = dict(min_score=cfg.min_score, min_face=cfg.min_face, max_side=detection_size(cfg))
    if cfg.detector_worker:
        detector = WorkerDetector(cfg.detector, recycle_every=cfg.detector_recycle_frames, **det_args)
    else:
        detector = get_detector(cfg.detector, **det_args)
    return detector, KeyframeDetector(detector, every=cfg.detect_every, min_face=cfg.min_face)


class Analyzer:
    """A loaded MODEL_DIR and a running face detector, reused for many videos.

    ``Analyzer(model_dir, config=None, **settings)``: ``settings`` are :class:`AnalyzeConfig` fields and
    override ``config``. :meth:`analyze` runs one video; :meth:`close` (or ``with``) stops the detector
    worker. Loading the model and starting the worker happen once here (their cost: docs/analyze.md).
    """

    def __init__(self, model_dir: str | Path, config: AnalyzeConfig | None = None, **settings):
        from affectmae.inference.model import load_model_dir

        cfg = config or AnalyzeConfig()
        settings = {k: v for k, v in settings.items() if v is not None}
        unknown = set(settings) - {f.name for f in dataclasses.fields(AnalyzeConfig)}
        if unknown:
            raise AffectMAEError(f"unknown analyze settings: {', '.join(sorted(unknown))}")
        cfg = dataclasses.replace(cfg, **settings)
        if cfg.stride < 1 or cfg.batch_size < 1 or cfg.detect_every < 1:
            raise AffectMAEError(f"stride, batch_size and detect_every must be >= 1, got {cfg.stride}, "
                                 f"{cfg.batch_size} and {cfg.detect_every}")
        if cfg.column_names not in ("affectmae", "openface"):
            raise AffectMAEError(f"column_names must be 'affectmae' or 'openface', got {cfg.column_names!r}")
        self.device = select_device(cfg.device)
        self.model_dir = Path(model_dir)
        self.model = load_model_dir(model_dir)
        model_json = self.model_dir / "affectmae_model.json"  # encode crops as the training features were encoded
        adopt_cpu_gemm_backend(json.loads(model_json.read_text()).get("cpu_gemm"), str(model_json))
        if cfg.align_margin is None:
            cfg = dataclasses.replace(cfg, align_margin=model_align_margin(model_dir))
        cfg = dataclasses.replace(cfg, detect_max_side=detection_size(cfg))
        self.config = cfg
        if cfg.causal:
            from affectmae.inference.live import require_streaming

            require_streaming(self.model, model_dir)
        self.detector, self._keyframes = face_detectors(cfg)
        self._encoder = CropEncoder(self.model.encoder, self.device, cfg.batch_size, dict.fromkeys(STAGES, 0.0),
                                 overlap=cfg.overlap)

    def analyze(self, video: str | Path, out_dir: str | Path | None = None, video_out: str | Path | None = None,
                stem: str | None = None, progress=None) -> pd.DataFrame:
        """Analyse ``video``; returns the per-(frame, face) table (run summary in ``df.attrs["summary"]``).

        With ``out_dir``: writes ``predictions.csv``, ``summary.json``, ``config.yaml`` and the PNG plots,
        or ``<stem>.csv``, ``<stem>.summary.json``, ``<stem>.config.yaml``, ``<stem>.<plot>.png`` when ``stem``
        is given (the batch layout). ``video_out``: an annotated MP4. ``progress``: a tqdm-like object whose
        ``update(1)`` is called per decoded frame (default: a bar for this video).
        """
        if self.config.causal:
            from affectmae.inference.live_run import analyze_causal as one
        else:
            one = analyze_one
        if out_dir is None:
            return one(video, self, out_dir, video_out, stem, progress)
        outputs = video_outputs(out_dir, stem, video_out)
        remove_outputs(outputs)  # nothing of an earlier analysis (plots, parquet) stays beside the new table
        try:
            return one(video, self, out_dir, video_out, stem, progress)
        except BaseException:
            remove_outputs(outputs)  # a table without its summary must not look finished
            raise

    def stream(self, source, realtime: bool = False, drop: bool = True, queue: int = 2, timeout: float = 10.0,
               max_frames: int = 0, encoder_split: str | int = "auto", **source_options):
        """Rows of a live ``source`` as each frame is analysed: a
        :class:`~affectmae.inference.live.LiveStream` (iterate it for row dicts with the table's columns;
        ``.summary()`` afterwards: frames, drops, latency). ``source``: a camera (``/dev/video0`` or ``0``), a
        URL, ``-`` (standard input; ``input_format``, ``raw_size=(W, H)``, ``fps``) or a file (``realtime``:
        at its own rate). The model must be a streaming one (``affectmae train ... causal=true``).
        ``encoder_split``: how many encoder blocks the detection stage runs (``"auto"``: balanced as it goes)."""
        from affectmae.inference.live import LiveStream

        return LiveStream(self, source, drop=drop, queue=queue, timeout=timeout, max_frames=max_frames,
                          encoder_split=encoder_split, realtime=realtime, **source_options)

    def close(self) -> None:
        self._encoder.reset(self._encoder.timings)  # stops the encoder thread
        if isinstance(self.detector, WorkerDetector):
            self.detector.close()

    def __enter__(self) -> "Analyzer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def analyze_video(video: str | Path, model_dir: str | Path, out_dir: str | Path | None = None,
                  batch_size: int | None = None, stride: int | None = None, device: str | None = None,
                  config: AnalyzeConfig | None = None, video_out: str | Path | None = None,
                  **overrides) -> pd.DataFrame:
    """Analyse one ``video`` with the model in ``model_dir`` (an :class:`Analyzer` used once).

    With ``out_dir``: writes ``predictions.csv`` (and ``.parquet`` if pyarrow is installed),
    ``summary.json``, ``config.yaml`` and, unless ``plots=False``, PNG plots. ``video_out``: an annotated
    MP4 (boxes, ids, labels). Keyword ``overrides`` set any :class:`AnalyzeConfig` field. The run summary
    (frame counts, faces, cuts, per-stage seconds) is in ``df.attrs["summary"]``.
    """
    with Analyzer(model_dir, config, batch_size=batch_size, stride=stride, device=device, **overrides) as analyzer:
        return analyzer.analyze(video, out_dir, video_out)
