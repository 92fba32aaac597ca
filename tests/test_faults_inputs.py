"""Bad inputs, the input side of "no silent wrong results": every case runs the real CLI and must end with
exit code 2, one exact line on stderr naming what is wrong (the file where there is one), and the files
already on disk unchanged (nothing lost, nothing half-written that looks finished).

Cases: settings out of range (checked once, when the config is built, with the allowed range in the
message), frames that are not there, features of another encoder than the model's, damaged feature files,
output paths naming a file and inputs naming a folder. Then the cases that were already right: annotation
errors name file and line, a corrupt JPEG is skipped and counted, a code-running pickle never runs.
docs/data.md has the same cases as a table.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affectmae.cli import main
from affectmae.features.fingerprint import encoder_fingerprint, fingerprint_of
from affectmae.features.store import FeatureStore
from affectmae.models.vit import build_encoder, load_encoder, save_encoder
from affectmae.training.temporal import run_train
from temporal_helpers import make_feature_dataset


def write_frames_dataset(root: Path, lengths: dict[str, int], split: dict[str, str] | None = None,
                         frames_for=None, corrupt=()) -> None:
    """16x16 JPEG frames under root/cropped_aligned/<video>/ (only for ``frames_for``, default all) and VA
    annotation files (Train_Set, or the split ``split`` names)."""
    rng = np.random.default_rng(0)
    for video, n in lengths.items():
        if frames_for is None or video in frames_for:
            folder = root / "cropped_aligned" / video
            folder.mkdir(parents=True)
            for k in range(n):
                path = folder / f"{k + 1:05d}.jpg"
                if (video, k) in corrupt:
                    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
                else:
                    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path, quality=95)
        ann = root / "VA_Estimation_Challenge" / (split or {}).get(video, "Train_Set")
        ann.mkdir(parents=True, exist_ok=True)
        lines = ["valence,arousal"] + [f"{0.1 * (k % 5):.2f},{-0.1 * (k % 3):.2f}" for k in range(n)]
        (ann / f"{video}.txt").write_text("\n".join(lines) + "\n")


def tiny_encoder(path: Path, seed: int, dim: int = 16) -> Path:
    torch.manual_seed(seed)
    save_encoder(build_encoder("tiny", img_size=16, patch_size=8, embed_dim=dim, depth=1, num_heads=2), path)
    return path


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root``: what a refused command must leave as it was."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One folder with everything the cases need: frames + annotations, two encoders of one size, features
    extracted with encoder A, a feature dataset marked as encoder A's with a trained run, a file and a folder."""
    root = tmp_path_factory.mktemp("faults")
    write_frames_dataset(root / "data", {"vid_a": 4, "vid_b": 3, "vid_c": 3}, split={"vid_c": "Validation_Set"})
    enc_a = tiny_encoder(root / "enc_a.safetensors", 0)
    tiny_encoder(root / "enc_b.safetensors", 1)
    assert main(["extract", "--encoder", str(enc_a), "--frames", str(root / "data"), "--data", str(root / "data"),
                 "-o", str(root / "feats_a")]) == 0
    feats, ann = make_feature_dataset(root / "fd", n_videos=4, lengths=(40, 60))
    meta = json.loads((feats / "features.json").read_text())
    meta.update(fingerprint_of(load_encoder(enc_a)).record())  # as extract records it
    (feats / "features.json").write_text(json.dumps(meta))
    run_train("temporal_tiny", ["epochs=1", "tensorboard=false"], features=str(feats), annotations=str(ann),
              task="va", out=str(root / "run_a"))
    assert main(["export", "--encoder", str(enc_a), "--run", str(root / "run_a"), "-o", str(root / "model_a")]) == 0
    (root / "notes.txt").write_text("mine\n")
    (root / "empty_frames").mkdir()
    return root


def _features_copy(work: Path, name: str) -> Path:
    copy = work / name
    if not copy.exists():
        shutil.copytree(work / "fd" / "features", copy)
    return copy


def _damage(work: Path, how: str) -> tuple[Path, Path]:
    """A copy of the feature dataset with video00 damaged ``how``; returns (features folder, damaged file)."""
    feats = _features_copy(work, f"feats_{how}")
    npy, mask = feats / "video00.npy", feats / "video00.mask.npy"
    if how == "truncated":
        data = npy.read_bytes()
        npy.write_bytes(data[: len(data) - 100])
    elif how == "no_mask":
        mask.unlink()
        return feats, mask
    elif how == "object":
        np.save(npy, np.array([[1, "a"]] * 5, dtype=object), allow_pickle=True)
    return feats, npy


def _size(path: Path) -> int:
    return path.stat().st_size


# Each case: (id, argv builder, expected stderr line builder). Builders take the `work` folder.
def _train(w, *extra, out="run_new", feats=None):
    return ["train", "--features", str(feats or w / "fd" / "features"), "--annotations", str(w / "fd" / "annotations"),
            "--task", "va", "-o", str(w / out), "--config", "temporal_tiny", *extra]


def _predict(w, feats, model="model_a"):
    return ["predict", "--features", str(feats), "--model", str(w / model), "-o", str(w / "pred_new")]


def _extract(w, *extra, frames=None, out="feats_new"):
    return ["extract", "--encoder", str(w / "enc_a.safetensors"), "--frames", str(frames or w / "data"),
            "--data", str(w / "data"), "-o", str(w / out), *extra]


def _finetune(w, frames, *extra, out="ft_new"):
    return ["finetune", "--data", str(w / "data"), "--frames", str(frames), "--encoder", str(w / "enc_a.safetensors"),
            "--task", "va", "-o", str(w / out), "--config", "finetune_tiny", "tensorboard=false", *extra]


def _not_videos(w):
    """A folder one level above where frames would be: its subfolders hold notes and thumbnails, no frames."""
    root = w / "not_videos"
    if not root.exists():
        (root / "notes").mkdir(parents=True)
        (root / "notes" / "readme.txt").write_text("frames are elsewhere\n")
        (root / "thumbs").mkdir()
        Image.new("RGB", (8, 8)).save(root / "thumbs" / "vid_a.png")
    return root


def _other_encoder_model(w):
    """A MODEL_DIR of encoder B whose head was trained on features marked as encoder B's."""
    if not (w / "model_b").exists():
        feats = _features_copy(w, "feats_b")
        meta = json.loads((feats / "features.json").read_text())
        meta.update(fingerprint_of(load_encoder(w / "enc_b.safetensors")).record())
        (feats / "features.json").write_text(json.dumps(meta))
        run_train("temporal_tiny", ["epochs=1", "tensorboard=false"], features=str(feats),
                  annotations=str(w / "fd" / "annotations"), task="va", out=str(w / "run_b"))
        assert main(["export", "--encoder", str(w / "enc_b.safetensors"), "--run", str(w / "run_b"),
                     "-o", str(w / "model_b")]) == 0
    return w / "model_b"


def _sha(w, name):
    return encoder_fingerprint(load_encoder(w / name))[:12]


CASES = [
    # settings out of range: refused when the config is built, before any file is touched
    ("train_batch_size_0", lambda w: _train(w, "batch_size=0"),
     lambda w: "affectmae train: error: command line: batch_size must be >= 1, got 0"),
    ("train_batch_size_-4", lambda w: _train(w, "batch_size=-4"),
     lambda w: "affectmae train: error: command line: batch_size must be >= 1, got -4"),
    ("train_lr_-1", lambda w: _train(w, "lr=-1"),
     lambda w: "affectmae train: error: command line: lr must be > 0, got -1.0"),
    ("train_dropout_2", lambda w: _train(w, "model.dropout=2"),
     lambda w: "affectmae train: error: command line: model.dropout must be in [0, 1), got 2.0"),
    ("train_heads_3", lambda w: _train(w, "model.transformer_heads=3"),
     lambda w: "affectmae train: error: model.transformer_heads must divide the transformer width "
               "(model.tcn_channels[-1] = 32), got 3"),
    ("train_epochs_0", lambda w: _train(w, "epochs=0"),
     lambda w: "affectmae train: error: command line: epochs must be >= 1, got 0"),
    ("finetune_frame_stride_0",
     lambda w: ["finetune", "--data", str(w / "data"), "--encoder", str(w / "enc_a.safetensors"), "-o",
                str(w / "ft_new"), "frame_stride=0"],
     lambda w: "affectmae finetune: error: command line: frame_stride must be >= 1, got 0"),
    ("pretrain_mask_ratio_1.5",
     lambda w: ["pretrain", "--images", str(w / "data" / "cropped_aligned" / "vid_a"), "-o", str(w / "pt_new"),
                "mask_ratio=1.5"],
     lambda w: "affectmae pretrain: error: command line: mask_ratio must be in (0, 1), got 1.5"),
    ("extract_batch_size_0", lambda w: _extract(w, "--batch-size", "0"),
     lambda w: "affectmae extract: error: command line: batch_size must be >= 1, got 0"),
    ("extract_batch_size_-3", lambda w: _extract(w, "--batch-size", "-3"),
     lambda w: "affectmae extract: error: command line: batch_size must be >= 1, got -3"),
    # frames that are not there
    ("extract_frames_root_without_the_videos", lambda w: _extract(w, frames=w / "empty_frames"),
     lambda w: f"affectmae extract: error: {w / 'empty_frames'}: no frame images for any of the 3 videos to extract "
               f"(looked for {w / 'empty_frames' / 'vid_a' / '00001.jpg'}); give the cropped_aligned folder as --frames"),
    ("extract_one_video_without_frames", lambda w: _extract(w, frames=w / "some_frames"),
     lambda w: f"affectmae extract: error: {w / 'some_frames' / 'cropped_aligned'}: 1 of the 3 videos to extract "
               f"have no frame images: vid_b; fix --frames, or set allow_missing_videos=true to skip them"),
    ("extract_frames_root_whose_folders_are_not_videos", lambda w: _extract(w, frames=_not_videos(w)),
     lambda w: f"affectmae extract: error: {w / 'not_videos'}: no frame images for any of the 3 videos to extract "
               f"(looked for {w / 'not_videos' / 'vid_a' / '00001.jpg'}); give the cropped_aligned folder as --frames"),
    ("finetune_one_video_without_frames", lambda w: _finetune(w, w / "some_frames"),
     lambda w: f"affectmae finetune: error: {w / 'some_frames' / 'cropped_aligned'}: 1 of the 2 videos annotated for "
               f"va train have no frame images: vid_b; fix --frames, or set allow_missing_videos=true to skip them"),
    ("finetune_frames_root_without_the_videos", lambda w: _finetune(w, w / "empty_frames"),
     lambda w: f"affectmae finetune: error: {w / 'empty_frames'}: no frame images for any of the 2 videos annotated "
               f"for va train (looked for {w / 'empty_frames' / 'vid_a' / '00001.jpg'}); give the cropped_aligned "
               f"folder as --frames"),
    # features of another encoder than the model / run was built on (same size, other weights)
    ("predict_features_of_another_encoder", lambda w: _predict(w, w / "feats_a", model=_other_encoder_model(w).name),
     lambda w: f"affectmae predict: error: {w / 'feats_a' / 'features.json'}: features of encoder "
               f"{(w / 'enc_a.safetensors').resolve()} (sha256 {_sha(w, 'enc_a.safetensors')}), but "
               f"{w / 'model_b' / 'temporal_va.safetensors'} was trained on features of another encoder "
               f"(sha256 {_sha(w, 'enc_b.safetensors')}); extract with the model's encoder"),
    ("export_another_encoder",
     lambda w: ["export", "--encoder", str(w / "enc_b.safetensors"), "--run", str(w / "run_a"), "-o",
                str(w / "model_new")],
     lambda w: f"affectmae export: error: {w / 'run_a' / 'best.safetensors'}: trained on features of another encoder "
               f"(sha256 {_sha(w, 'enc_a.safetensors')}) than {w / 'enc_b.safetensors'} (sha256 "
               f"{_sha(w, 'enc_b.safetensors')}); export the encoder the features were extracted with"),
    # damaged feature files
    ("train_truncated_npy", lambda w: _train(w, feats=_damage(w, "truncated")[0]),
     lambda w: f"affectmae train: error: {w / 'feats_truncated' / 'video00.npy'}: damaged feature file (truncated: "
               f"{_size(w / 'feats_truncated' / 'video00.npy')} bytes, the header needs "
               f"{_size(w / 'feats_truncated' / 'video00.npy') + 100}); run `affectmae extract` again to redo this video"),
    ("predict_missing_mask", lambda w: _predict(w, _damage(w, "no_mask")[0]),
     lambda w: f"affectmae predict: error: {w / 'feats_no_mask' / 'video00.mask.npy'}: damaged feature file (missing); "
               f"run `affectmae extract` again to redo this video"),
    ("predict_object_dtype_npy", lambda w: _predict(w, _damage(w, "object")[0]),
     lambda w: f"affectmae predict: error: {w / 'feats_object' / 'video00.npy'}: damaged feature file (dtype object, "
               f"expected float16); run `affectmae extract` again to redo this video"),
    # an output path naming a file, an input file naming a folder
    ("train_out_is_a_file", lambda w: _train(w, out="notes.txt"),
     lambda w: f"affectmae train: error: command line: out must be a folder, got the file {w / 'notes.txt'}"),
    ("extract_out_is_a_file", lambda w: _extract(w, out="notes.txt"),
     lambda w: f"affectmae extract: error: command line: out must be a folder, got the file {w / 'notes.txt'}"),
    ("analyze_out_is_a_file",
     lambda w: ["analyze", str(w / "notes.txt"), "--model", str(w / "model_a"), "-o", str(w / "notes.txt")],
     lambda w: f"affectmae analyze: error: command line: out must be a folder, got the file {w / 'notes.txt'}"),
    ("score_prediction_is_a_folder",
     lambda w: ["score", "--task", "va", str(w / "data"), str(w / "data" / "VA_Estimation_Challenge" / "Train_Set")],
     lambda w: f"affectmae score: error: command line: pred_csv must be a file, got the folder {w / 'data'}"),
]


@pytest.fixture(scope="module")
def some_frames(work):
    """A frames root with vid_a and vid_c but not vid_b."""
    root = work / "some_frames" / "cropped_aligned"
    for video in ("vid_a", "vid_c"):
        shutil.copytree(work / "data" / "cropped_aligned" / video, root / video)
    return root


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(work, some_frames, argv, expected, capsys):
    args = argv(work)  # builds any inputs the case needs (damaged copies, the other encoder's model)
    before = snapshot(work)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [expected(work)]
    assert snapshot(work) == before


def test_allow_missing_videos_skips_them_and_extract_redoes_damaged_files(work, some_frames, capsys):
    out = work / "feats_some"
    common = ["extract", "--encoder", str(work / "enc_a.safetensors"), "--frames", str(work / "some_frames"),
              "--data", str(work / "data"), "-o", str(out)]
    capsys.readouterr()
    assert main([*common, "allow_missing_videos=true"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["without_frames"] == ["vid_b"] and summary["extracted"] == 2
    assert FeatureStore(out).videos() == ["vid_a", "vid_c"]  # no all-filler features for vid_b
    reference = {p.name: p.read_bytes() for p in out.glob("*.npy")}
    # damage one file each way; a rerun redoes exactly those videos and gives the same bytes again
    data = (out / "vid_a.npy").read_bytes()
    (out / "vid_a.npy").write_bytes(data[:-10])
    (out / "vid_c.mask.npy").unlink()
    assert main([*common, "allow_missing_videos=true"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["skipped_done"], summary["extracted"]) == (0, 2)
    assert {p.name: p.read_bytes() for p in out.glob("*.npy")} == reference
    np.save(out / "vid_c.npy", np.zeros((3, 16), np.float32))  # right shape, wrong dtype
    assert main([*common, "allow_missing_videos=true"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["skipped_done"], summary["extracted"]) == (1, 1)
    assert {p.name: p.read_bytes() for p in out.glob("*.npy")} == reference


def test_finetune_allow_missing_videos_skips_them(work, some_frames, caplog):
    run = work / "ft_some"
    with caplog.at_level("INFO"):
        assert main(_finetune(work, some_frames, "allow_missing_videos=true", "max_steps=2", "head_only_steps=0",
                              "warmup_steps=1", "batch_size=2", out="ft_some")) == 0
    assert (f"{some_frames}: 1 videos annotated for va train have no frame images and are skipped "
            "(allow_missing_videos): vid_b") in caplog.messages
    assert any(m.startswith("fine-tuning va: 4 train frames") for m in caplog.messages)  # vid_a's 4 frames
    assert (run / "head_va.safetensors").is_file()


def test_features_stored_without_frames_are_redone_once_the_frames_are_there(work, capsys):
    """What an older extract wrote from a wrong frames root: all-zero rows, no present frame, looking finished."""
    out = work / "feats_zeros"
    shutil.copytree(work / "feats_a", out)
    reference = {p.name: p.read_bytes() for p in out.glob("*.npy")}
    np.save(out / "vid_b.npy", np.zeros((3, 16), np.float16))
    np.save(out / "vid_b.mask.npy", np.zeros(3, bool))
    capsys.readouterr()
    assert main(["extract", "--encoder", str(work / "enc_a.safetensors"), "--frames", str(work / "data"),
                 "--data", str(work / "data"), "-o", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["skipped_done"], summary["extracted"]) == (2, 1)
    assert {p.name: p.read_bytes() for p in out.glob("*.npy")} == reference


def test_fingerprint_is_the_same_for_the_exported_encoder_and_recorded_everywhere(work):
    sha = encoder_fingerprint(load_encoder(work / "enc_a.safetensors"))
    assert json.loads((work / "feats_a" / "features.json").read_text())["encoder_sha256"] == sha
    assert json.loads((work / "model_a" / "affectmae_model.json").read_text())["encoder_sha256"] == sha
    assert encoder_fingerprint(load_encoder(work / "model_a" / "encoder.safetensors")) == sha
    from affectmae.checkpoint import read_metadata

    assert read_metadata(work / "run_a" / "best.safetensors")["features"]["encoder_sha256"] == sha
    assert sha != encoder_fingerprint(load_encoder(work / "enc_b.safetensors"))


# ------------------------------------------------------------------------ cases that were already right
def test_annotation_error_names_file_and_line(work, capsys):
    ann = work / "bad_ann"
    shutil.copytree(work / "fd" / "annotations", ann)
    path = ann / "VA_Estimation_Challenge" / "Train_Set" / "video01.txt"
    lines = path.read_text().splitlines()
    lines[3] = "0.5,abc"
    path.write_text("\n".join(lines) + "\n")
    before = snapshot(work)
    capsys.readouterr()
    assert main(["train", "--features", str(work / "fd" / "features"), "--annotations", str(ann), "--task", "va",
                 "-o", str(work / "run_bad_ann"), "--config", "temporal_tiny"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"affectmae train: error: {path}:4: ")
    assert snapshot(work) == before


def test_corrupt_jpeg_is_skipped_and_counted(tmp_path, capsys):
    write_frames_dataset(tmp_path, {"v1": 4}, corrupt={("v1", 2)})
    enc = tiny_encoder(tmp_path / "enc.safetensors", 0)
    capsys.readouterr()
    assert main(["extract", "--encoder", str(enc), "--frames", str(tmp_path), "--data", str(tmp_path),
                 "-o", str(tmp_path / "feats")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["corrupt"], summary["missing"], summary["frames"]) == (1, 1, 4)
    assert FeatureStore(tmp_path / "feats").load("v1")[1].tolist() == [True, True, False, True]


class _Payload:
    """Unpickling this calls os.mkdir(marker): a checkpoint that runs code when loaded with pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_code_running_pickle_never_runs(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"model": _Payload(str(marker))}, fh)
    write_frames_dataset(tmp_path, {"v1": 2})
    capsys.readouterr()
    assert main(["extract", "--encoder", str(evil), "--frames", str(tmp_path), "-o", str(tmp_path / "feats")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(evil) in err[0] and "Traceback" not in err[0]
    assert not marker.exists() and not (tmp_path / "feats").exists()


# ------------------------------------------------------------------------------------ the two checkers
@pytest.mark.parametrize("meta, value, message", [
    ({"min": 1}, 0, "x must be >= 1, got 0"),
    ({"gt": 0}, 0.0, "x must be > 0, got 0.0"),
    ({"max": 5}, 6, "x must be <= 5, got 6"),
    ({"lt": 1}, 1, "x must be < 1, got 1"),
    ({"min": 0, "lt": 1}, 1.0, "x must be in [0, 1), got 1.0"),
    ({"gt": 0, "max": 1}, 0, "x must be in (0, 1], got 0"),
    ({"min": 0.2, "max": 5}, 7.5, "x must be in [0.2, 5], got 7.5"),
    ({"choices": ("a", "b")}, "c", "x must be one of a, b, got 'c'"),
    ({"choices": ("va", "au")}, ["va", "expr"], "x must be one of va, au, got 'expr'"),  # each item of a list
    ({"min": 1}, [4, 0], "x must be >= 1, got 0"),
])
def test_check_value_names_the_allowed_values(meta, value, message):
    from affectmae.config import check_value
    from affectmae.errors import AffectMAEError

    with pytest.raises(AffectMAEError) as err:
        check_value("x", value, meta)
    assert str(err.value) == message


def test_check_value_passes_allowed_and_unset_values(tmp_path):
    from affectmae.config import check_value
    from affectmae.errors import AffectMAEError

    for meta, value in [({"min": 1}, 1), ({"gt": 0, "lt": 1}, 0.5), ({"min": 1}, None), ({"choices": ("a",)}, ""),
                        ({"path": "out_dir"}, str(tmp_path)), ({"path": "out_dir"}, str(tmp_path / "new")),
                        ({"path": "file"}, str(tmp_path / "new.csv")), ({"path": "dir"}, "")]:
        check_value("x", value, meta)
    (tmp_path / "f.csv").write_text("")
    with pytest.raises(AffectMAEError, match=f"^x must be a folder, got the file {tmp_path / 'f.csv'}$"):
        check_value("x", str(tmp_path / "f.csv"), {"path": "dir"})
    with pytest.raises(AffectMAEError, match=f"^x must be a file, got the folder {tmp_path}$"):
        check_value("x", str(tmp_path), {"path": "file"})


def test_every_packaged_config_and_every_default_passes_its_own_checks():
    from affectmae.config import build_config, check_config
    from affectmae.evaluation.scoring import ScoreConfig
    from affectmae.features.extract import ExtractConfig
    from affectmae.inference.model import ExportConfig
    from affectmae.inference.pipeline import AnalyzeConfig
    from affectmae.inference.predict import PredictConfig
    from affectmae.synth.dataset import SynthConfig
    from affectmae.training.finetune import FinetuneConfig
    from affectmae.training.pretrain import PretrainConfig
    from affectmae.training.temporal import TrainConfig

    for cls in (ScoreConfig, ExtractConfig, ExportConfig, AnalyzeConfig, PredictConfig, SynthConfig, FinetuneConfig,
                PretrainConfig, TrainConfig):
        check_config(cls())
    for cls, names in ((TrainConfig, ("temporal_tiny", "temporal_paper")), (PretrainConfig, ("pretrain_tiny",
                       "pretrain_paper")), (FinetuneConfig, ("finetune_tiny", "finetune_paper"))):
        for name in names:
            build_config(cls, name)
