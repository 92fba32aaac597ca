"""Faults on the output side of "no silent wrong results": every case runs the real CLI and checks the exit
code, the exact one line on stderr and the files on disk afterwards.

- the one output-folder rule (``affectmae.io.check_output_dir``): a folder holding a finished result of a
  stage is refused unless ``--resume`` continues it or ``--overwrite`` replaces it, and a refused start
  changes nothing (a refused ``--resume`` leaves ``config.yaml`` as it was); ``--overwrite`` leaves nothing
  of the replaced result (no old head beside the new ones, no old plot beside the new table);
- write failures (disk full, read-only file system, no permission; simulated, since the tests run as root):
  one line naming the file, and no file under its final name that looks finished (no table without its
  summary), no temporary file left behind;
- file modes follow the umask; a killed run's hidden ``.tmp`` file is removed by the next run of the stage.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

from affectmae.cli import main
from affectmae.io import atomic_path, atomic_write_text, remove_stale_temps
from affectmae.models.fast_linear import cpu_gemm_backend
from affectmae.models.vit import build_encoder, save_encoder
from affectmae.training.metrics_log import read_metrics
from temporal_helpers import make_feature_dataset

TRAIN = ["--config", "temporal_tiny", "epochs=2"]


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (hidden ones included)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def hidden_temps(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*.tmp"))


def write_frames(root: Path, lengths: dict[str, int]) -> None:
    """16x16 JPEG frames under root/cropped_aligned/<video>/ and VA annotation files (Train_Set)."""
    rng = np.random.default_rng(0)
    for video, n in lengths.items():
        folder = root / "cropped_aligned" / video
        folder.mkdir(parents=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{k + 1:05d}.jpg")
        ann = root / "VA_Estimation_Challenge" / "Train_Set"
        ann.mkdir(parents=True, exist_ok=True)
        (ann / f"{video}.txt").write_text("valence,arousal\n" + "0.1,0.2\n" * n)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Features + annotations, finished VA and EXPR runs, a tiny encoder of the features' size, a MODEL_DIR of
    both runs, frames for extract and face images for pretrain."""
    root = tmp_path_factory.mktemp("outputs")
    feats, ann = make_feature_dataset(root, n_videos=4, lengths=(40, 60))
    for task in ("va", "expr"):
        assert main(["train", "--features", str(feats), "--annotations", str(ann), "--task", task,
                     "-o", str(root / f"run_{task}"), *TRAIN]) == 0
    torch.manual_seed(0)
    save_encoder(build_encoder("tiny", img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2),
                 root / "encoder.safetensors")
    assert main(["export", "--encoder", str(root / "encoder.safetensors"), "--run", str(root / "run_va"),
                 "--run", str(root / "run_expr"), "-o", str(root / "model")]) == 0
    write_frames(root / "frames", {"vid_a": 3, "vid_b": 2})
    faces = root / "faces"
    faces.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)).save(faces / f"{i}.png")
    return root


def _copy(work: Path, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(work / name, tmp_path / name))


def _train(w: Path, out: Path, *extra: str) -> list[str]:
    """``train`` argv: flags of ``extra`` first, then its ``key=value`` settings after the config's."""
    flags, settings = [e for e in extra if e.startswith("--")], [e for e in extra if not e.startswith("--")]
    return ["train", "--features", str(w / "features"), "--annotations", str(w / "annotations"), "--task", "va",
            "-o", str(out), *flags, *TRAIN, *settings]


# ------------------------------------------------------------------------------ refused starts change nothing
REFUSALS = [
    ("train on a finished run", "run_va", lambda w, d: _train(w, d),
     "affectmae train: error: {d} already holds a run; pass --resume to continue it or --overwrite to replace it, "
     "or choose another -o folder"),
    ("refused train --resume (another window)", "run_va", lambda w, d: _train(w, d, "--resume", "window=24"),
     "affectmae train: error: {d}/last_state.safetensors: cannot resume with an incompatible config (window: saved "
     "32, now 24)"),
    ("refused train --resume (another seed)", "run_va", lambda w, d: _train(w, d, "--resume", "seed=3"),
     "affectmae train: error: {d}/last_state.safetensors: cannot resume with an incompatible config (seed: saved "
     "0, now 3)"),
    ("refused train --resume (another batch size)", "run_va", lambda w, d: _train(w, d, "--resume", "batch_size=4"),
     "affectmae train: error: {d}/last_state.safetensors: cannot resume with an incompatible config (batch_size: "
     "saved 8, now 4)"),
    ("train --resume with --overwrite", "run_va", lambda w, d: _train(w, d, "--resume", "--overwrite"),
     "affectmae train: error: train: --resume continues {d} and --overwrite replaces it; pass one"),
    ("pretrain on a finished run", "run_va",
     lambda w, d: ["pretrain", "--images", str(w / "faces"), "-o", str(d), "--config", "pretrain_tiny"],
     "affectmae pretrain: error: {d} already holds a run; pass --resume to continue it or --overwrite to replace "
     "it, or choose another -o folder"),
    ("finetune on a finished run", "run_va",
     lambda w, d: ["finetune", "--annotations", str(w / "frames"), "--encoder", str(w / "encoder.safetensors"),
                   "--task", "va", "-o", str(d), "--config", "finetune_tiny"],
     "affectmae finetune: error: {d} already holds a run; pass --resume to continue it or --overwrite to replace "
     "it, or choose another -o folder"),
    ("export over a MODEL_DIR", "model",
     lambda w, d: ["export", "--encoder", str(w / "encoder.safetensors"), "--run", str(w / "run_va"), "-o", str(d)],
     "affectmae export: error: {d} already holds a finished export output (affectmae_model.json); pass "
     "--overwrite to replace it, or choose another -o folder"),
    ("predict over the task's submission file", "run_va",  # any folder holding va_predictions.csv
     lambda w, d: ["predict", "--features", str(w / "features"), "--model", str(w / "model"), "--task", "va",
                   "-o", str(d)],
     "affectmae predict: error: {d} already holds a finished predict output (va_predictions.csv); pass "
     "--overwrite to replace it, or choose another -o folder"),
]


@pytest.mark.parametrize("folder, argv, message", [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refused_start_is_one_line_and_changes_nothing(work, tmp_path, capsys, folder, argv, message):
    d = _copy(work, folder, tmp_path)
    if "predict" in message:
        (d / "va_predictions.csv").write_text("image_location,valence,arousal\n")
    before = snapshot(d)
    capsys.readouterr()
    assert main(argv(work, d)) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message.format(d=d)]
    assert snapshot(d) == before  # config.yaml included: a refused --resume does not rewrite it


def test_resume_of_a_folder_without_state_is_refused(work, tmp_path, capsys):
    assert main(_train(work, tmp_path / "empty", "--resume")) == 2
    assert capsys.readouterr().err.strip() == (
        f"affectmae train: error: --resume: no last_state.safetensors in {tmp_path / 'empty'}")
    assert not (tmp_path / "empty").exists()


def test_overwrite_replaces_a_run_wholly(work, tmp_path):
    run = _copy(work, "run_va", tmp_path)
    old = read_metrics(run, "epoch")
    assert [r["epoch"] for r in old] == [1, 2]
    (run / "state_00000001.safetensors").write_bytes(b"an old numbered state")
    assert main(_train(work, run, "--overwrite", "epochs=1")) == 0
    assert [r["epoch"] for r in read_metrics(run, "epoch")] == [1]  # a new curve, not the old one continued
    assert not (run / "state_00000001.safetensors").exists()
    assert sorted(p.name for p in run.iterdir()) == ["best.json", "best.safetensors", "config.yaml",
                                                     "last_state.safetensors", "metrics.jsonl"]


def test_export_overwrite_leaves_no_old_head(work, tmp_path):
    model = _copy(work, "model", tmp_path)
    assert sorted(p.name for p in model.glob("temporal_*")) == ["temporal_expr.safetensors", "temporal_va.safetensors"]
    assert main(["export", "--encoder", str(work / "encoder.safetensors"), "--run", str(work / "run_va"),
                 "-o", str(model), "--overwrite"]) == 0
    assert sorted(p.name for p in model.iterdir()) == ["affectmae_model.json", "config.yaml", "encoder.safetensors",
                                                       "temporal_va.safetensors"]
    meta = json.loads((model / "affectmae_model.json").read_text())
    assert meta["heads"] == {"va": "temporal_va.safetensors"}
    assert meta["cpu_gemm"] == cpu_gemm_backend()  # recorded with the MODEL_DIR; analyze encodes with it


def test_a_run_stopped_before_its_first_state_is_started_afresh(work, tmp_path):
    """Nothing finished there, so no flag is needed, and nothing of the aborted run stays."""
    run = tmp_path / "aborted"
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.out.tfevents.1.old").write_bytes(b"old events")
    (run / "metrics.jsonl").write_text('{"kind": "train", "global_step": 1, "loss": 9.0}\n')
    (run / "notes.txt").write_text("the user's own file")
    assert main(_train(work, run, "epochs=1")) == 0
    assert not (run / "tensorboard").exists() and (run / "notes.txt").read_text() == "the user's own file"
    assert 9.0 not in [r["loss"] for r in read_metrics(run, "train")]


def test_predict_fills_one_folder_task_by_task(work, tmp_path):
    out = tmp_path / "sub"
    for task in ("va", "expr"):
        assert main(["predict", "--features", str(work / "features"), "--run", str(work / f"run_{task}"),
                     "-o", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.csv")) == ["expr_predictions.csv", "va_predictions.csv"]


# ------------------------------------------------------------------------------------------ write failures
def _no_space_safetensors(monkeypatch):
    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')
    monkeypatch.setattr("affectmae.checkpoint.save_file", full)


def _raise(number: int, filename: str | None = None):
    def fail(*args, **kwargs):
        raise OSError(number, os.strerror(number), *([filename] if filename else []))
    return fail


def _read_only_folder(monkeypatch):
    def mkstemp(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
    monkeypatch.setattr("tempfile.mkstemp", mkstemp)


def _no_permission(monkeypatch):
    def mkstemp(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
    monkeypatch.setattr("tempfile.mkstemp", mkstemp)


PROGRESS = re.compile(r"^\w+ epoch \d+/\d+:")  # pretrain's progress bar, on stderr too
NO_SPACE = "No space left on device; free some space and run again"
WRITE_FAILURES = [
    # id, (monkeypatch, work) -> None, argv(work, out), the file named, files that must not exist
    ("train, disk full", lambda mp, w: _no_space_safetensors(mp), lambda w, o: _train(w, o),
     "train", "best.safetensors", NO_SPACE, ["best.safetensors", "last_state.safetensors", "best.json"]),
    ("train, no permission", lambda mp, w: _no_permission(mp), lambda w, o: _train(w, o),
     "train", "config.yaml", "Permission denied; choose a folder you may write to and run again",
     ["config.yaml", "metrics.jsonl"]),
    ("pretrain, disk full", lambda mp, w: _no_space_safetensors(mp),
     lambda w, o: ["pretrain", "--images", str(w / "faces"), "-o", str(o), "--config", "pretrain_tiny", "epochs=1",
                   "batch_size=4", "num_workers=0", "depth=1", "img_size=32", "decoder_depth=1", "device=cpu"],
     "pretrain", "last_state.safetensors", NO_SPACE, ["last_state.safetensors", "encoder.safetensors"]),
    ("extract, disk full", lambda mp, w: mp.setattr("affectmae.features.store.NpyRows.__setitem__",
                                                     _raise(errno.ENOSPC)),
     lambda w, o: ["extract", "--encoder", str(w / "encoder.safetensors"), "--frames", str(w / "frames"),
                   "--data", str(w / "frames"), "-o", str(o)],
     "extract", "vid_a.npy", NO_SPACE, ["vid_a.npy", "vid_a.mask.npy", "vid_b.npy"]),
    ("export, read-only file system", lambda mp, w: _read_only_folder(mp),
     lambda w, o: ["export", "--encoder", str(w / "encoder.safetensors"), "--run", str(w / "run_va"), "-o", str(o)],
     "export", "encoder.safetensors", "Read-only file system; choose a writable folder and run again",
     ["affectmae_model.json", "encoder.safetensors", "temporal_va.safetensors"]),
    ("predict, disk full", lambda mp, w: mp.setattr("affectmae.evaluation.submission.SubmissionWriter.add",
                                                     _raise(errno.ENOSPC)),
     lambda w, o: ["predict", "--features", str(w / "features"), "--model", str(w / "model"), "-o", str(o)],
     "predict", "va_predictions.csv", NO_SPACE, ["va_predictions.csv", "expr_predictions.csv"]),
]


@pytest.mark.parametrize("fault, argv, stage, named, reason, absent", [c[1:] for c in WRITE_FAILURES],
                         ids=[c[0] for c in WRITE_FAILURES])
def test_write_failure_is_one_line_naming_the_file_and_leaves_nothing_finished(
        work, tmp_path, capsys, monkeypatch, fault, argv, stage, named, reason, absent):
    out = tmp_path / "out"
    command = argv(work, out)
    fault(monkeypatch, work)
    capsys.readouterr()
    assert main(command) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip() and not PROGRESS.match(line)]
    assert err == [f"affectmae {stage}: error: cannot write {out / named}: {reason}"]
    assert [name for name in absent if (out / name).exists()] == []
    assert hidden_temps(tmp_path) == []


@pytest.mark.parametrize("fault", ["disk full at the flush", "rename fails"])
def test_two_task_predict_writes_both_files_or_neither(work, tmp_path, capsys, monkeypatch, fault):
    """The model has VA and EXPR heads. The EXPR file fails at the very end, after everything was written: when it
    is flushed to disk, or when it is renamed into place after the VA file was. No submission file is left."""
    out = tmp_path / "out"
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        if "expr_predictions.csv" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    def replace(src, dst, **kwargs):
        if str(dst).endswith("expr_predictions.csv"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
        real_replace(src, dst, **kwargs)

    if fault == "disk full at the flush":
        monkeypatch.setattr("os.fsync", fsync)
    else:
        monkeypatch.setattr("os.replace", replace)
    capsys.readouterr()
    assert main(["predict", "--features", str(work / "features"), "--model", str(work / "model"), "-o", str(out)]) == 2
    reason = NO_SPACE if fault == "disk full at the flush" else "Input/output error"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"affectmae predict: error: cannot write {out / 'expr_predictions.csv'}: {reason}"]
    assert sorted(p.name for p in out.glob("*.csv")) == []
    assert hidden_temps(tmp_path) == []
    monkeypatch.undo()
    assert main(["predict", "--features", str(work / "features"), "--model", str(work / "model"), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.csv")) == ["expr_predictions.csv", "va_predictions.csv"]


def test_analyze_disk_full_at_the_summary_leaves_no_table(tmp_path, capsys, monkeypatch):
    """The summary marks a finished video: when it cannot be written, the table, config and plots go too."""
    pytest.importorskip("yuface")
    from affectmae.synth.video import make_synthetic_video
    from test_analyze import make_model_dir

    model = make_model_dir(tmp_path / "model")
    make_synthetic_video(tmp_path / "clip.mp4", n_frames=6, n_faces=1, size=(320, 180), seed=3)
    out = tmp_path / "out"
    argv = ["analyze", str(tmp_path / "clip.mp4"), "--model", str(model), "-o", str(out), "--batch-size", "8"]
    real = atomic_write_text

    def full_at_summary(path, text):
        if str(path).endswith(".summary.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, text)

    monkeypatch.setattr("affectmae.inference.batch.atomic_write_text", full_at_summary)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"affectmae analyze: error: cannot write {out / 'clip.summary.json'}: {NO_SPACE}"]
    assert sorted(p.name for p in out.iterdir()) == []
    monkeypatch.undo()
    # a run with plots, then a forced rerun without: the old plots do not stay beside the new table
    assert main(argv) == 0
    assert sorted(p.name for p in out.glob("clip.*.png")) == ["clip.action_units.png", "clip.expressions.png",
                                                              "clip.valence_arousal.png"]
    assert main([*argv, "--overwrite", "--no-plots"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip.config.yaml", "clip.csv", "clip.summary.json"] + (
        ["clip.parquet"] if (out / "clip.parquet").exists() else [])


def test_metrics_line_that_cannot_be_written_is_taken_back(tmp_path, monkeypatch):
    from affectmae.training.metrics_log import ScalarLogger

    logger = ScalarLogger(tmp_path, tensorboard=False)
    logger.log({"loss": 1.0}, 1)
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(Exception, match=f"cannot write {tmp_path / 'metrics.jsonl'}: {NO_SPACE}"):
        logger.log({"loss": 0.5}, 2)
    monkeypatch.undo()
    assert [r["loss"] for r in read_metrics(tmp_path)] == [1.0]  # no half line


# ------------------------------------------------------------------------------- modes and temporary files
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    from affectmae.checkpoint import save_weights

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        save_weights(tmp_path / "w.safetensors", {"x": torch.zeros(2)})
    finally:
        os.umask(old)
    assert [oct(os.stat(tmp_path / n).st_mode & 0o777) for n in ("a.json", "w.safetensors")] == [oct(mode)] * 2


def test_stale_temporary_file_is_removed_by_the_next_extract(work, tmp_path, capsys):
    out = tmp_path / "feats"
    out.mkdir()
    stale = out / ".vid_a.npy.k3j9x2ab.tmp"  # what a killed extract leaves: atomic_path's hidden temp name
    stale.write_bytes(b"\x93NUMPY half a file")
    assert main(["extract", "--encoder", str(work / "encoder.safetensors"), "--frames", str(work / "frames"),
                 "--data", str(work / "frames"), "-o", str(out)]) == 0
    assert not stale.exists() and hidden_temps(out) == []
    assert sorted(p.name for p in out.glob("*.npy")) == ["vid_a.mask.npy", "vid_a.npy", "vid_b.mask.npy", "vid_b.npy"]


def test_a_temporary_file_being_written_is_left_alone(tmp_path):
    """Another live process's temp (locked while it writes) survives the clean-up; it goes once released."""
    with atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"partial")
        assert remove_stale_temps(tmp_path) == [] and tmp.exists()
        live = tmp
    assert not live.exists() and (tmp_path / "x.bin").read_bytes() == b"partial"
    orphan = tmp_path / ".y.bin.abcdefgh.tmp"
    orphan.write_bytes(b"left by a kill")
    assert remove_stale_temps(tmp_path) == [orphan] and not orphan.exists()
