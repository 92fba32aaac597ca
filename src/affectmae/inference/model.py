"""MODEL_DIR: the encoder plus trained temporal heads, as loaded by ``analyze`` and ``predict``.

API (a contract for ``inference/pipeline.py``)::

    model = load_model_dir(MODEL_DIR)            # -> AffectModel; CheckpointError for a bad/other-version dir
    model.encoder                                # ViTEncoder (models.vit.load_encoder), loaded on first use
    model.img_size                               # encoder input size (px)
    model.feature_dim                            # D of the frame features the heads expect
    model.tasks                                  # e.g. ["va", "expr", "au"] (order of affectmae.tasks.TASKS)
    model.au_thresholds                          # (12,) float64 per-AU thresholds (0.5 where none were tuned)
    model.predict_sequence(features, mask)       # features: (N, D) float; mask: (N,) bool, True = face present
        -> {"va": (N, 2) in [-1, 1], "expr": (N, 8) probabilities, "au": (N, 12) probabilities}  (float32)

``predict_sequence`` runs the temporal model(s) over overlapping windows (the window/stride each head
was trained with) and merges them per frame. Rows where ``mask`` is False must still hold a feature
(interpolated from neighbouring frames, as ``affectmae extract`` does); they also get predictions.

Layout (``format_version`` 1)::

    MODEL_DIR/affectmae_model.json   {"format_version": 1, "affectmae_version": ..., "encoder": "encoder.safetensors",
                                      "heads": {"va": "temporal_va.safetensors", "expr": [...], ...},
                                      "align_margin": 1.0 (optional, read by analyze),
                                      "causal": false (true: every head is a streaming model, for live)}
    MODEL_DIR/encoder.safetensors
    MODEL_DIR/temporal_<name>.safetensors

A head entry is one file or a list of files (an ensemble, e.g. the five CV folds: VA values and class /
AU probabilities are averaged, AU thresholds too). Several tasks may name the same multi-task file; it is
run once. :func:`export_model_dir` assembles a MODEL_DIR from an encoder checkpoint and training run
folders; ``affectmae export`` calls it through ``run_export(config, overrides, **settings)``
(:class:`ExportConfig`), which also saves the merged settings as ``MODEL_DIR/config.yaml``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affectmae import __version__
from affectmae.checkpoint import BEST_FILE, ENCODER_FILE
from affectmae.config import build_config, save_config
from affectmae.errors import AffectMAEError, CheckpointError
from affectmae.features.fingerprint import (
    WEIGHTS_ONLY_NOTE,
    Fingerprint,
    compare_fingerprints,
    fingerprint_of,
    recorded_fingerprint,
    settings_difference,
)
from affectmae.io import OutputLayout, atomic_path, atomic_write_text, check_output_dir, prepare_output_dir
from affectmae.tasks import TASKS

log = logging.getLogger(__name__)

MODEL_JSON = "affectmae_model.json"
MODEL_FORMAT_VERSION = 1
# the output-folder rule (affectmae.io): a MODEL_DIR is replaced only with overwrite, and then wholly
MODEL_LAYOUT = OutputLayout("export", finished=(MODEL_JSON,),
                            owned=(MODEL_JSON, ENCODER_FILE, "temporal_*.safetensors", "config.yaml"))


class AffectModel:
    """Temporal heads (and the encoder, lazily) of a MODEL_DIR or of training runs; see the module docstring."""

    def __init__(self, heads: dict[str, list[Path]], encoder_path: Path | None = None):
        from affectmae.models.temporal import load_temporal

        self._encoder_path = encoder_path
        self._encoder = None
        self._models: dict[Path, tuple] = {}
        for files in heads.values():
            for f in files:
                if f not in self._models:
                    self._models[f] = load_temporal(f)
        self.heads = {t: files for t, files in heads.items() if files}
        self.tasks = [t for t in TASKS if t in self.heads]
        if not self.tasks:
            raise CheckpointError("no temporal heads to load")
        for task in self.tasks:
            for f in self.heads[task]:
                if task not in self._models[f][1]["tasks"]:
                    raise CheckpointError(f"{f}: has no {task} head (it was trained for {self._models[f][1]['tasks']})")
        dims = {m.cfg.input_dim for m, _ in self._models.values()}
        if len(dims) != 1:
            raise CheckpointError(f"the temporal heads expect different feature sizes: {sorted(dims)}")
        self.feature_dim = dims.pop()
        # the fingerprint of the encoder whose features each head was trained on (features.json; None in older runs)
        self.trained_on = {f: recorded_fingerprint(meta.get("features") or {}) for f, (_, meta) in self._models.items()}
        thr = [np.asarray(self._models[f][1]["au_thresholds"], dtype=np.float64)
               for f in self.heads.get("au", []) if self._models[f][1].get("au_thresholds") is not None]
        self.au_thresholds = np.mean(thr, axis=0) if thr else np.full(len(TASKS["au"].columns), 0.5)

    @property
    def streaming(self) -> bool:
        """True when every head only looks back over a bounded history (trained with ``train causal=true``), so
        the model runs on a live stream (:meth:`stream`, ``affectmae live``, ``analyze --causal``)."""
        return all(model.streaming for model, _ in self._models.values())

    def two_way_heads(self) -> list[str]:
        """The files of heads that are not streaming models (they look ahead, or count window positions)."""
        return [f.name for f, (model, _) in self._models.items() if not model.streaming]

    def stream(self) -> "EnsembleStream":
        """A fresh frame-by-frame state for one face track (every head must be a streaming model)."""
        return EnsembleStream(self)

    @property
    def encoder(self):
        if self._encoder is None:
            if self._encoder_path is None:
                raise AffectMAEError("this model was loaded without an encoder (from training runs); use a MODEL_DIR")
            from affectmae.models.vit import load_encoder

            self._encoder = load_encoder(self._encoder_path).eval()
        return self._encoder

    @property
    def img_size(self) -> int:
        return int(self.encoder.arch["img_size"])

    def predict_sequence(self, features, mask=None, window: int | None = None) -> dict[str, np.ndarray]:
        """features: (N, D) float; mask: (N,) bool (True = face present) -> {task: (N, C) float32}.

        ``window``: windows of this many frames, not overlapping, instead of each head's training window and
        stride (``window=1``: every frame alone, no temporal context)."""
        from affectmae.models.temporal import predict_sequence

        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise AffectMAEError(f"features must be (N, {self.feature_dim}), got {tuple(features.shape)}")
        if mask is not None and np.shape(mask) != (features.shape[0],):
            raise AffectMAEError(f"mask must be ({features.shape[0]},), got {np.shape(mask)}")
        cache: dict[Path, dict[str, np.ndarray]] = {}
        out = {}
        for task in self.tasks:
            parts = []
            for f in self.heads[task]:
                if f not in cache:
                    model, meta = self._models[f]
                    cache[f] = predict_sequence(model, features, mask, int(window or meta.get("window", 300)),
                                                int(window or meta.get("stride", 200)))
                parts.append(cache[f][task])
            out[task] = np.mean(parts, axis=0).astype(np.float32)
        return out


class EnsembleStream:
    """Every head of an :class:`AffectModel` run frame by frame over one track
    (:class:`~affectmae.models.causal_stream.CausalStream` each; multi-task files once), averaged per task as
    :meth:`AffectModel.predict_sequence` averages them.

    ``step(features (C, D), present (C,)) -> {task: (C, n) float32}``.
    """

    def __init__(self, model: AffectModel):
        from affectmae.models.causal_stream import CausalStream

        if not model.streaming:
            raise AffectMAEError(f"{', '.join(model.two_way_heads())}: not a streaming model")
        self.model = model
        self.streams = {f: CausalStream(m) for f, (m, _) in model._models.items()}

    def step(self, features: np.ndarray, present: np.ndarray | None = None) -> dict[str, np.ndarray]:
        outs = {f: stream.step(features, present) for f, stream in self.streams.items()}
        return {task: np.mean([outs[f][task] for f in self.model.heads[task]], axis=0).astype(np.float32)
                for task in self.model.tasks}


def load_runs(run_dirs: list[str | Path], tasks: list[str] | None = None) -> AffectModel:
    """An ensemble of training runs (their ``best.safetensors``), e.g. the folds written by ``affectmae cv``."""
    heads = _heads_from_runs(run_dirs, tasks)
    return AffectModel(heads)


def _heads_from_runs(run_dirs, tasks=None) -> dict[str, list[Path]]:
    from affectmae.checkpoint import read_metadata

    heads: dict[str, list[Path]] = {}
    for run in run_dirs:
        path = Path(run)
        path = path / BEST_FILE if path.is_dir() else path
        if not path.is_file():
            raise CheckpointError(f"{run}: no {BEST_FILE} (not a finished `affectmae train` run folder)")
        for task in read_metadata(path).get("tasks", []):
            if tasks is None or task in tasks:
                heads.setdefault(task, []).append(path)
    if not heads:
        raise CheckpointError(f"none of the runs {', '.join(map(str, run_dirs))} has a head for {tasks}")
    return heads


def load_model_dir(path: str | Path) -> AffectModel:
    """Load a MODEL_DIR written by :func:`export_model_dir` (see the module docstring)."""
    root = Path(path)
    meta_path = root / MODEL_JSON
    if not meta_path.is_file():
        raise CheckpointError(f"{root}: not a MODEL_DIR (no {MODEL_JSON}); build one with `affectmae export`")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path}: invalid JSON ({err.msg}, line {err.lineno})") from None
    version = meta.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{root}: MODEL_DIR format version {version!r} (affectmae {meta.get('affectmae_version')}); "
                              f"this affectmae {__version__} reads version {MODEL_FORMAT_VERSION}")
    heads = {t: [root / f for f in ([v] if isinstance(v, str) else v)] for t, v in meta.get("heads", {}).items()}
    for files in heads.values():
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{root}: {f.name} is listed in {MODEL_JSON} but missing")
    encoder = root / meta.get("encoder", ENCODER_FILE)
    if not encoder.is_file():
        raise CheckpointError(f"{root}: encoder file {encoder.name} missing")
    return AffectModel(heads, encoder)


def export_model_dir(encoder: str | Path, runs: list[str | Path], out: str | Path,
                     align_margin: float | None = None, overwrite: bool = False, **encoder_options) -> dict:
    """Assemble MODEL_DIR ``out`` from an encoder checkpoint and ``affectmae train`` run folders.

    The encoder is stored as our safetensors (any format :func:`load_encoder` reads is accepted) and
    checked against the feature size of every head. ``align_margin`` (optional) records the face-crop
    margin the encoder's training frames used, for ``analyze`` (absent = 1.0, Aff-Wild2 crops).
    ``encoder_options`` (``img_size``, ``pooling``, ``num_heads``; :func:`load_encoder`) must be those the
    features were extracted with; the encoder is stored at that input size, with its pooling and normalisation.
    An existing MODEL_DIR ``out`` is refused unless ``overwrite``; then its files (heads included) are removed
    once the new one has been checked, so no old head stays beside the new ones. ``affectmae_model.json``,
    which marks a MODEL_DIR, is written last. Returns its content.
    """
    from affectmae.models.vit import load_encoder, save_encoder

    if not runs:
        raise AffectMAEError("export needs at least one --run RUN_DIR")
    out = Path(out)
    mode = check_output_dir(out, MODEL_LAYOUT, overwrite=overwrite)
    heads = _heads_from_runs(runs)
    enc = load_encoder(encoder, **{k: v for k, v in encoder_options.items() if v is not None})
    names: dict[Path, str] = {}
    for files in heads.values():
        for f in files:
            if f not in names:
                tasks = "_".join(_tasks_of(f))
                stem = f"temporal_{tasks}"
                n = sum(1 for v in names.values() if v.startswith(stem))
                names[f] = f"{stem}{'' if n == 0 else f'_{n}'}.safetensors"
    model = AffectModel(heads)  # validates heads (tasks present, same feature size)
    fingerprint = _check_trained_on(model, enc, encoder)
    if model.feature_dim != enc.embed_dim:
        raise CheckpointError(f"the temporal heads expect {model.feature_dim}-d features but the encoder {encoder} "
                              f"gives {enc.embed_dim}-d; export the encoder the features were extracted with")
    if align_margin is not None and not 0.2 <= float(align_margin) <= 5:
        raise AffectMAEError(f"align_margin must be in [0.2, 5], got {align_margin}")
    prepare_output_dir(out, MODEL_LAYOUT, mode)
    save_encoder(enc, out / ENCODER_FILE, {"source": str(encoder)})
    for f, name in names.items():
        with atomic_path(out / name) as tmp:
            shutil.copyfile(f, tmp)
    entry = {t: ([names[f] for f in files] if len(files) > 1 else names[files[0]]) for t, files in heads.items()}
    meta = {"format_version": MODEL_FORMAT_VERSION, "affectmae_version": __version__, "encoder": ENCODER_FILE,
            "heads": {t: entry[t] for t in TASKS if t in entry}, "runs": [str(r) for r in runs],
            "cpu_gemm": _features_cpu_gemm(names),
            # a streaming model (`train causal=true`): `affectmae live` and `analyze --causal` refuse any other
            "causal": model.streaming}
    meta.update(fingerprint.record())
    if align_margin is not None:
        meta["align_margin"] = float(align_margin)
    atomic_write_text(out / MODEL_JSON, json.dumps(meta, indent=2))
    log.info("wrote MODEL_DIR %s (tasks %s)", out, ", ".join(meta["heads"]))
    return meta


@dataclass
class ExportConfig:
    encoder: str = ""  # encoder checkpoint the features were extracted with
    runs: list[str] = field(default_factory=list)  # `affectmae train` run folders (several per task: an ensemble)
    out: str = field(default="", metadata={"path": "out_dir"})  # MODEL_DIR to write
    align_margin: float | None = field(default=None, metadata={"min": 0.2, "max": 5})  # face-crop margin of the encoder's training frames (None: 1.0 in analyze)
    overwrite: bool = False  # replace an existing MODEL_DIR (the output-folder rule, affectmae.io)
    img_size: int | None = field(default=None, metadata={"min": 16})  # encoder input size (px) used by extract; None: the checkpoint's
    pooling: str | None = None  # cls | mean | mae_global, as for extract; None: the checkpoint's
    num_heads: int | None = None  # attention heads of a foreign checkpoint that does not name them


def export(cfg: ExportConfig) -> dict:
    """The ``affectmae export`` stage: :func:`export_model_dir`, then ``MODEL_DIR/config.yaml``."""
    if not cfg.encoder or not cfg.out:
        raise AffectMAEError("export needs an encoder checkpoint (--encoder) and a MODEL_DIR to write (-o)")
    meta = export_model_dir(cfg.encoder, cfg.runs, cfg.out, align_margin=cfg.align_margin, overwrite=cfg.overwrite,
                            img_size=cfg.img_size, pooling=cfg.pooling, num_heads=cfg.num_heads)
    save_config(cfg, Path(cfg.out) / "config.yaml")
    return meta


def run_export(config: str | Path | None = None, overrides: list[str] | dict | None = None, **explicit) -> dict:
    """``affectmae export``: defaults < config file < ``key=value`` overrides < ``explicit`` settings."""
    return export(build_config(ExportConfig, config, overrides, **explicit))


def _check_trained_on(model: AffectModel, enc, source) -> Fingerprint:
    """The encoder's fingerprint, after checking that every head whose run recorded one was trained on
    features of this encoder: same weights, input size, normalisation and pooling, not only the same size."""
    fingerprint = fingerprint_of(enc)
    for head, trained_on in model.trained_on.items():
        verdict = "same" if trained_on is None else compare_fingerprints(trained_on, fingerprint)
        if verdict == "different":
            other = settings_difference(fingerprint, trained_on)
            detail = f"; the same weights, but {other}" if other else ""
            raise CheckpointError(f"{head}: trained on features of another encoder (sha256 {trained_on.shown[:12]}) than "
                                  f"{source} (sha256 {fingerprint.shown[:12]}{detail}); export the encoder the features "
                                  "were extracted with")
        if verdict == "weights only":
            log.warning("%s %s with %s", head, WEIGHTS_ONLY_NOTE, source)
    return fingerprint


def _tasks_of(path: Path) -> list[str]:
    from affectmae.checkpoint import read_metadata

    return [t for t in TASKS if t in read_metadata(path).get("tasks", [])]


def _features_cpu_gemm(heads: dict[Path, str]) -> str:
    """The CPU linear backend the heads' training features were extracted with (recorded in their metadata),
    else this process's; ``analyze`` encodes with it (:func:`affectmae.models.fast_linear.adopt_cpu_gemm_backend`)."""
    from affectmae.checkpoint import read_metadata
    from affectmae.models.fast_linear import cpu_gemm_backend

    recorded = {(read_metadata(f).get("features") or {}).get("cpu_gemm") for f in heads} - {None}
    return recorded.pop() if len(recorded) == 1 else cpu_gemm_backend()
