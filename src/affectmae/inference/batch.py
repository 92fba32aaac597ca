"""Many videos in one run (``affectmae analyze A.mp4 B.mov folder/ 'clips/*.mp4' --model M -o OUT``).

    summary = analyze_inputs(["folder/"], "MODEL_DIR", "OUT", shard="2/8")

Inputs are files, folders (their video files, not recursive) or glob patterns (``**`` recurses). Each
video ``<stem>`` gets ``OUT/<stem>.csv``, ``OUT/<stem>.summary.json`` (written last), ``OUT/<stem>.config.yaml``
and ``OUT/<stem>.<plot>.png``. A rerun skips every video whose summary exists and records the same input
file (size and modification time) and the same settings, so an interrupted batch resumes where it stopped.
``shard="K/N"`` keeps every N-th video of the sorted list, starting at the K-th (K = 1..N), so N machines or
SLURM array tasks given the same inputs split them without talking to each other. One model load, one
detector process and one progress bar (frames of the whole batch) serve all videos. A video that fails
is logged as ``file: message`` and the others go on; the run then ends with an error naming how many failed.
A video being analysed first loses its earlier outputs, and a failed one keeps none (no table without its
summary). ``OUT`` follows the output-folder rule of :mod:`affectmae.io` (:data:`ANALYZE_LAYOUT`).

``run_analyze(config, overrides, **settings)`` is the command's entry point: :class:`AnalyzeConfig` from
its defaults, a YAML file, ``key=value`` overrides and the command's flags, then :func:`analyze`.
"""

from __future__ import annotations

import glob
import json
import logging
from pathlib import Path

from affectmae.config import build_config, config_to_dict
from affectmae.errors import AffectMAEError
from affectmae.inference.pipeline import AnalyzeConfig, Analyzer, remove_outputs, video_outputs
from affectmae.io import OutputLayout, atomic_write_text, check_output_dir, prepare_output_dir
from affectmae.progress import progress_bar

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts",
                  ".mts", ".m2ts", ".ogv"}
# the output-folder rule (affectmae.io): a folder holding results is continued (finished videos skipped);
# --overwrite re-analyses this run's videos, whose earlier outputs are removed first (other videos' stay)
ANALYZE_LAYOUT = OutputLayout("analyze", finished=("*summary.json",), owned=(), continues=True)
# settings that do not change the table: a rerun with a different value still skips finished videos
_NOT_IN_RESULT = {"plots", "device", "batch_size", "detector_worker", "detector_recycle_frames", "overlap",
                  "inputs", "model_dir", "out", "shard", "video_out", "overwrite"}


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files, folders and glob patterns -> the sorted, de-duplicated list of video files."""
    if not inputs:
        raise AffectMAEError("no video given")
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            videos = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
            if not videos:
                raise AffectMAEError(f"{path}: no video files in this folder (looked for {', '.join(sorted(VIDEO_SUFFIXES))})")
            found.update(videos)
        elif path.exists():
            found.add(path)
        elif glob.has_magic(str(item)):
            matches = [Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file()]
            if not matches:
                raise AffectMAEError(f"{item}: the pattern matches no file")
            found.update(matches)
        else:
            raise AffectMAEError(f"video not found: {path}")
    return sorted(found, key=lambda p: str(p))


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; None -> (1, 1)."""
    if shard is None:
        return 1, 1
    try:
        k, n = (int(x) for x in str(shard).split("/"))
    except ValueError:
        raise AffectMAEError(f"--shard must look like K/N (e.g. 2/8), got {shard!r}") from None
    if not 1 <= k <= n:
        raise AffectMAEError(f"--shard K/N needs 1 <= K <= N, got {shard!r} (SLURM arrays from 0: use $((ID+1))/N)")
    return k, n


def output_stems(videos: list[Path]) -> dict[Path, str]:
    """The OUT/<stem> name of each video; two inputs with the same stem are an error naming both."""
    stems: dict[str, Path] = {}
    for video in videos:
        if video.stem in stems:
            raise AffectMAEError(f"{video}: its output name {video.stem}.csv is also that of {stems[video.stem]}; "
                                 "analyse them into different output folders")
        stems[video.stem] = video
    return {v: s for s, v in stems.items()}


def _fingerprint(video: Path, cfg: AnalyzeConfig, model_dir: Path) -> dict:
    st = video.stat()
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in _NOT_IN_RESULT}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "model_dir": str(model_dir.resolve()), "settings": settings}


def is_finished(out_dir: Path, stem: str, fingerprint: dict) -> bool:
    """True when ``OUT/<stem>.summary.json`` and ``OUT/<stem>.csv`` exist and the summary's input matches."""
    summary = out_dir / f"{stem}.summary.json"
    if not summary.is_file() or not (out_dir / f"{stem}.csv").is_file():
        return False
    try:
        return json.loads(summary.read_text()).get("input") == fingerprint
    except json.JSONDecodeError:
        return False


def analyze_inputs(inputs: list[str | Path], model_dir: str | Path, out_dir: str | Path,
                   config: AnalyzeConfig | None = None, shard: str | None = None, video_out: bool = False,
                   overwrite: bool = False) -> dict:
    """Analyse every video of ``inputs`` (this shard's part) into ``out_dir``; see the module docstring.

    Returns ``{"videos": [...this shard's videos], "analyzed": [...], "skipped": [...], "failed": {video: message},
    "frames": total decoded}``. Raises :class:`AffectMAEError` at the end when any video failed.
    """
    cfg = config or AnalyzeConfig()
    k, n = parse_shard(shard)
    videos = expand_inputs(inputs)[k - 1 :: n]
    stems = output_stems(videos)
    out = Path(out_dir)
    check_output_dir(out, ANALYZE_LAYOUT, overwrite=overwrite)
    prepare_output_dir(out, ANALYZE_LAYOUT, "continue")  # creates it, removes a killed run's temporary files
    result = {"videos": [str(v) for v in videos], "analyzed": [], "skipped": [], "failed": {}, "frames": 0}
    todo = []
    for video in videos:
        fingerprint = _fingerprint(video, cfg, Path(model_dir))
        if not overwrite and is_finished(out, stems[video], fingerprint):
            result["skipped"].append(str(video))
        else:
            todo.append((video, fingerprint))
    if result["skipped"]:
        log.info("%d of %d videos already analysed with these settings in %s; skipping them",
                 len(result["skipped"]), len(videos), out)
    if not todo:
        return result
    from affectmae.media.video import probe_video

    total = 0
    for video, _ in todo:
        try:
            n_frames = probe_video(video).n_frames
            total += min(n_frames, cfg.max_frames) if cfg.max_frames else n_frames
        except AffectMAEError:
            pass  # reported when its turn comes
    with Analyzer(model_dir, cfg) as analyzer, progress_bar(total=total or None, unit="frame",
                                                           desc=f"{len(todo)} videos") as bar:
        for video, fingerprint in todo:
            stem = stems[video]
            bar.set_postfix_str(video.name)
            try:
                df = analyzer.analyze(video, out, out / f"{stem}.annotated.mp4" if video_out else None, stem=stem,
                                      progress=bar)
            except AffectMAEError as err:
                if len(videos) == 1:
                    raise
                message = str(err) if str(video) in str(err) else f"{video}: {err}"
                log.error("%s", message)
                result["failed"][str(video)] = message
                continue
            summary = df.attrs["summary"]
            summary["input"] = fingerprint
            try:
                atomic_write_text(out / f"{stem}.summary.json", json.dumps(summary, indent=2) + "\n")
            except BaseException:
                remove_outputs(video_outputs(out, stem, out / f"{stem}.annotated.mp4" if video_out else None))
                raise
            result["analyzed"].append(str(video))
            result["frames"] += summary["frames_decoded"]
    if result["failed"]:
        first = next(iter(result["failed"].values()))
        raise AffectMAEError(f"{len(result['failed'])} of {len(videos)} videos failed (the others were written to "
                             f"{out}); first: {first}")
    return result


def analyze(cfg: AnalyzeConfig) -> dict:
    """The ``affectmae analyze`` stage: ``cfg.inputs`` with the model in ``cfg.model_dir`` into ``cfg.out``.

    Returns the result of :func:`analyze_inputs` plus ``"out"``.
    """
    if not cfg.model_dir or not cfg.out:
        raise AffectMAEError("analyze needs a MODEL_DIR (--model) and an output folder (-o)")
    result = analyze_inputs(cfg.inputs, cfg.model_dir, cfg.out, cfg, shard=cfg.shard, video_out=cfg.video_out,
                            overwrite=cfg.overwrite)
    return {**result, "out": cfg.out}


def run_analyze(config: str | Path | None = None, overrides: list[str] | dict | None = None, **explicit) -> dict:
    """``affectmae analyze``: defaults < config file < ``key=value`` overrides < ``explicit`` settings."""
    return analyze(build_config(AnalyzeConfig, config, overrides, **explicit))
