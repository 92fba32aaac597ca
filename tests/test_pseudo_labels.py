"""`affectmae pseudo-label`: a generated video (faces on known frames) labelled by a stub teacher -> the exact
Aff-Wild2 files, -1 rows, provenance, reruns; bad inputs; into a synth dataset that `finetune` then reads."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest

import affectmae.models.fer_teacher as fer_teacher
from affectmae.cli import main
from affectmae.datasets.affwild2 import AffWild2Frames
from affectmae.errors import AffectMAEError
from affectmae.synth.cartoon import ALIGN_MARGIN
from affectmae.synth.dataset import generate_affwild2
from affectmae.synth.pseudo_labels import format_labels, run_pseudo_label
from affectmae.synth.video import make_synthetic_video

HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
ANNOTATION = "annotations/EXPR_Recognition_Challenge/Train_Set/{}.txt"
NEUTRAL, HAPPY = fer_teacher.FER_CLASSES.index("neutral"), fer_teacher.FER_CLASSES.index("happy")


class StubTeacher:
    """The k-th face it reads (in frame order): neutral at 0.9 for even k, happy at 0.9 for odd k, except every
    third face (k % 3 == 2), whose top probability is only 0.4 (happy)."""

    def __init__(self):
        self.seen = 0

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        assert crops.shape[1:] == (112, 112, 3) and crops.dtype == np.uint8
        out = np.zeros((len(crops), 7), np.float32)
        for i in range(len(crops)):
            k = self.seen + i
            top, p = (HAPPY, 0.4) if k % 3 == 2 else (NEUTRAL if k % 2 == 0 else HAPPY, 0.9)
            out[i] = (1 - p) / 6
            out[i, top] = p
        self.seen += len(crops)
        return out


def expected_labels(present: list[bool], min_confidence: float = 0.5) -> list[int]:
    """Our class index (Neutral 0, Happiness 4) or -1 per frame, as StubTeacher labels the present faces."""
    labels, k = [], 0
    for here in present:
        if not here:
            labels.append(-1)
            continue
        conf = 0.4 if k % 3 == 2 else 0.9
        labels.append(-1 if conf < min_confidence else 4 if (k % 3 == 2 or k % 2) else 0)
        k += 1
    return labels


@pytest.fixture
def teacher(tmp_path, monkeypatch):
    monkeypatch.setattr(fer_teacher, "load_fer_teacher", lambda path: StubTeacher())
    path = tmp_path / "emotion_model.hdf5"
    path.write_bytes(b"a stub teacher file")
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """20 frames of one face, no face on frames 6-9 (0-based)."""
    root = tmp_path_factory.mktemp("clip")
    return make_synthetic_video(root / "clip.mp4", n_frames=20, n_faces=1, size=(320, 240), seed=3, no_face=(6, 10))


def test_pseudo_label_writes_the_affwild2_layout_and_provenance(clip, teacher, tmp_path):
    data = tmp_path / "data"
    r = run_pseudo_label(None, [], sources=[str(clip.path)], out=str(data), teacher=str(teacher))
    present = [not 6 <= t < 10 for t in range(20)]
    assert sorted(p.name for p in (data / "cropped_aligned" / "clip").iterdir()) == \
        [f"{t + 1:05d}.jpg" for t in range(20) if present[t]]
    labels = expected_labels(present)
    text = (data / ANNOTATION.format("clip")).read_text()
    assert text == HEADER + "\n" + "\n".join(map(str, labels)) + "\n"
    assert labels.count(-1) == 4 + 5  # 4 frames without a face, 5 of the 16 faces below 0.5
    record = json.loads((data / "pseudo_labels.json").read_text())
    assert record == {k: r[k] for k in record}
    assert record["teacher"]["sha256"] == hashlib.sha256(b"a stub teacher file").hexdigest()
    assert record["threshold"] == 0.5 and record["annotated_videos"] == 1 and record["without_face"] == []
    video = record["videos"]["clip"]
    assert (video["frames"], video["faces"], video["labelled"], video["below_confidence"]) == (20, 16, 11, 5)
    assert video["class_counts"] == {"Neutral": 5, "Anger": 0, "Disgust": 0, "Fear": 0, "Happiness": 6,
                                     "Sadness": 0, "Surprise": 0, "Other": 0}
    assert video["settings"]["align_margin"] == 1.0 and video["settings"]["stride"] == 1  # a fresh folder
    assert video["annotation"] == ANNOTATION.format("clip")
    # a rerun with the same settings changes nothing; another threshold labels the video again
    stamp = (data / ANNOTATION.format("clip")).stat().st_mtime_ns
    again = run_pseudo_label(None, [], sources=[str(clip.path)], out=str(data), teacher=str(teacher))
    assert (again["done"], again["skipped"]) == ([], ["clip"])
    assert (data / ANNOTATION.format("clip")).stat().st_mtime_ns == stamp
    low = run_pseudo_label(None, ["min_confidence=0.3"], sources=[str(clip.path)], out=str(data), teacher=str(teacher))
    assert low["done"] == ["clip"] and low["videos"]["clip"]["labelled"] == 16
    assert (data / ANNOTATION.format("clip")).read_text().splitlines()[1:] == \
        [str(v) for v in expected_labels(present, 0.3)]


def test_cli_stride_no_face_video_and_one_line_errors(clip, teacher, tmp_path, capsys, caplog):
    empty = make_synthetic_video(tmp_path / "empty.mp4", n_frames=6, size=(160, 120), no_face=(0, 6)).path
    data = tmp_path / "data"
    with caplog.at_level(logging.WARNING):
        assert main(["pseudo-label", str(clip.path), str(empty), "-o", str(data), "--stride", "2", "--teacher",
                     str(teacher)]) == 0
    # analysed frames 0, 2, ..., 18 -> images 1..10; frames 6 and 8 had no face
    assert sorted(p.name for p in (data / "cropped_aligned" / "clip").iterdir()) == \
        [f"{k:05d}.jpg" for k in (1, 2, 3, 6, 7, 8, 9, 10)]
    present = [k not in (4, 5) for k in range(1, 11)]
    assert (data / ANNOTATION.format("clip")).read_text().splitlines() == [HEADER] + [str(v) for v in expected_labels(present)]
    assert not (data / ANNOTATION.format("empty")).exists() and not (data / "cropped_aligned" / "empty").exists()
    out = capsys.readouterr().out
    assert "clip: 10 frames, main face on 8, 6 with a label (labelled)" in out
    assert "empty: no face found on its 3 frames; no annotation (labelled)" in out
    assert f"{empty}: no face found on its 3 analysed frames; no annotation written for empty" in caplog.text
    record = json.loads((data / "pseudo_labels.json").read_text())
    assert record["without_face"] == ["empty"] and record["videos"]["empty"]["annotation"] is None
    # bad inputs: one line each, nothing written
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    (tmp_path / "no_images").mkdir()
    for source, message in ((tmp_path / "missing.mp4", f"source not found: {tmp_path / 'missing.mp4'}"),
                            (bad, f"{bad}: not a readable video: "),
                            (tmp_path / "no_images", f"{tmp_path / 'no_images'}: holds no images (.jpg, ")):
        assert main(["pseudo-label", str(source), "-o", str(tmp_path / "new"), "--teacher", str(teacher)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith(f"affectmae pseudo-label: error: {message}")
    assert not (tmp_path / "new").exists()


def test_format_labels_maps_fer_classes_to_ours():
    probs = np.full((3, 7), np.nan, np.float32)
    probs[0] = np.eye(7)[fer_teacher.FER_CLASSES.index("surprise")]
    probs[1] = np.eye(7)[fer_teacher.FER_CLASSES.index("angry")] * 0.5 + 0.5 / 7
    text, labels = format_labels(probs, np.array([True, True, False]), 0.5)
    assert labels.tolist() == [6, 1, -1] and text == f"{HEADER}\n6\n1\n-1\n"


def test_pseudo_labels_join_a_synth_dataset_that_finetune_reads(clip, teacher, tmp_path, caplog):
    import torch

    from affectmae.models.vit import build_encoder, save_encoder

    data = tmp_path / "aw2"
    generate_affwild2(data, videos=3, frames=40, faces=0, size=32)
    before = len(AffWild2Frames(data, data, "expr", "train"))
    same_name = tmp_path / "synth001.mp4"  # a source named like a synthetic video
    same_name.symlink_to(clip.path)
    with pytest.raises(AffectMAEError, match=rf"^{data} already holds a video 'synth001' that pseudo-label did not "
                                             rf"write \({data / 'cropped_aligned' / 'synth001'}\); rename the source$"):
        run_pseudo_label(None, [], sources=[str(same_name)], out=str(data), teacher=str(teacher))
    r = run_pseudo_label(None, [], sources=[str(clip.path)], out=str(data), teacher=str(teacher))
    assert r["videos"]["clip"]["settings"]["align_margin"] == ALIGN_MARGIN  # the synthetic renderer's framing
    assert len(AffWild2Frames(data, data, "expr", "train")) == before + 11
    torch.manual_seed(0)
    save_encoder(build_encoder("tiny", 32, depth=1), tmp_path / "mae" / "encoder.safetensors", {"stage": "pretrain"})
    with caplog.at_level(logging.INFO):
        assert main(["finetune", "--annotations", str(data), "--encoder", str(tmp_path / "mae"), "-o",
                     str(tmp_path / "ft"), "--config", "finetune_tiny", "batch_size=8", "max_steps=2",
                     "head_only_steps=0", "warmup_steps=1", "tensorboard=false"]) == 0
    assert f"{before + 11} train frames" in caplog.text
    assert (tmp_path / "ft" / "head_expr.safetensors").is_file()
    # synth --overwrite replaces the dataset, pseudo-labels included
    generate_affwild2(data, videos=3, frames=40, faces=0, size=32, overwrite=True)
    assert not (data / "pseudo_labels.json").exists() and not (data / ANNOTATION.format("clip")).exists()


def test_an_image_folder_is_read_as_one_video_in_name_order(clip, teacher, tmp_path, caplog):
    from PIL import Image

    from affectmae.media.video import VideoReader

    seq = tmp_path / "seq"
    seq.mkdir()
    with VideoReader(clip.path) as reader:
        for frame in reader.frames():
            Image.fromarray(frame.rgb).save(seq / f"img_{frame.index:03d}.png")
    (seq / "img_002.png").write_bytes(b"not an image")  # a damaged frame: no face there
    (seq / "notes.txt").write_text("not a frame")
    with caplog.at_level(logging.WARNING):
        r = run_pseudo_label(None, [], sources=[str(seq)], out=str(tmp_path / "data"), teacher=str(teacher))
    present = [t != 2 and not 6 <= t < 10 for t in range(20)]
    assert sorted(p.name for p in (tmp_path / "data" / "cropped_aligned" / "seq").iterdir()) == \
        [f"{t + 1:05d}.jpg" for t in range(20) if present[t]]
    assert (tmp_path / "data" / ANNOTATION.format("seq")).read_text().splitlines()[1:] == \
        [str(v) for v in expected_labels(present)]
    assert r["videos"]["seq"]["frames"] == 20 and "img_002.png" in caplog.text
