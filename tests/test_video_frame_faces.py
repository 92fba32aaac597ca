"""Aff-Wild2-layout video frames as unlabelled MAE pretraining images (face spec ``affwild2:``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affectmae.datasets.face_images import build_face_dataset
from affectmae.errors import AffectMAEError

EXPR_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"


def frame(root: Path, video: str, number: int, value: int) -> None:
    path = root / "cropped_aligned" / video / f"{number:05d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path, quality=100)


def annotation(root: Path, challenge: str, split: str, video: str, header: str, rows: list[str]) -> None:
    path = root / challenge / split / f"{video}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")


@pytest.fixture
def layout(tmp_path):
    """trainA (EXPR, 5 frames), trainB (VA only, 2 frames), val1 (EXPR validation, 3 frames), empty (EXPR train,
    no frame images)."""
    for k in range(1, 6):
        frame(tmp_path, "trainA", k, 10 * k)
    for k in (1, 2):
        frame(tmp_path, "trainB", k, 100 + k)
    for k in (1, 2, 3):
        frame(tmp_path, "val1", k, 200 + k)
    annotation(tmp_path, "EXPR_Recognition_Challenge", "Train_Set", "trainA", EXPR_HEADER, ["1"] * 5)
    annotation(tmp_path, "EXPR_Recognition_Challenge", "Train_Set", "empty", EXPR_HEADER, ["0"] * 3)
    annotation(tmp_path, "VA_Estimation_Challenge", "Train_Set", "trainB", "valence,arousal", ["0.1,0.2"] * 2)
    annotation(tmp_path, "EXPR_Recognition_Challenge", "Validation_Set", "val1", EXPR_HEADER, ["2"] * 3)
    return tmp_path


def test_training_videos_of_every_task_and_no_validation_frame(layout):
    ds = build_face_dataset([f"affwild2:{layout}"])
    src = ds.sources[0]
    assert [p.relative_to(layout).as_posix() for p in src._paths] == [
        *(f"cropped_aligned/trainA/{k:05d}.jpg" for k in range(1, 6)),
        "cropped_aligned/trainB/00001.jpg", "cropped_aligned/trainB/00002.jpg",
    ]
    assert ds.summary[0] == {"spec": f"affwild2:{layout}", "kind": "affwild2", "source": str(layout), "videos": 3,
                             "frames_on_disk": 7, "len": 7, "videos_without_frames": 1, "skipped_corrupt": 0}
    image, label = ds[2]
    assert label == -1 and image.size == (16, 16) and abs(int(np.asarray(image)[8, 8, 0]) - 30) <= 2


def test_every_split_and_frames_folder(layout, tmp_path_factory):
    every = build_face_dataset([f"affwild2:{layout}?every=2"]).sources[0]
    assert [(p.parent.name, p.name) for p in every._paths] == [
        ("trainA", "00001.jpg"), ("trainA", "00003.jpg"), ("trainA", "00005.jpg"), ("trainB", "00001.jpg")]
    val = build_face_dataset([f"affwild2:{layout}?split=val"])
    assert len(val) == 3 and {p.parent.name for p in val.sources[0]._paths} == {"val1"}
    assert len(build_face_dataset([f"affwild2:{layout}?split=all"])) == 10
    # annotations in one place, frames in another
    moved = tmp_path_factory.mktemp("frames")
    (layout / "cropped_aligned").rename(moved / "cropped_aligned")
    ds = build_face_dataset([f"affwild2:{layout}?frames={moved / 'cropped_aligned'}"])
    assert len(ds) == 7


def test_errors_name_the_root(layout, tmp_path_factory):
    with pytest.raises(AffectMAEError, match="affwild2: unknown split 'test'; choose one of train, val, all"):
        build_face_dataset([f"affwild2:{layout}?split=test"])
    with pytest.raises(AffectMAEError, match="affwild2: every must be a whole number, got 'x'"):
        build_face_dataset([f"affwild2:{layout}?every=x"])
    with pytest.raises(AffectMAEError, match="affwild2: unknown option\\(s\\) usage; allowed: every, frames, split"):
        build_face_dataset([f"affwild2:{layout}?usage=x"])
    bare = tmp_path_factory.mktemp("bare")
    with pytest.raises(AffectMAEError) as err:
        build_face_dataset([f"affwild2:{bare}"])
    assert str(err.value) == (f"affwild2:{bare}: no train annotation folder of any task "
                              "(VA_Estimation_Challenge/Train_Set, ...) in it or below it")
    empty = tmp_path_factory.mktemp("noframes")
    annotation(empty, "EXPR_Recognition_Challenge", "Train_Set", "v", EXPR_HEADER, ["0"])
    (empty / "cropped_aligned").mkdir()
    with pytest.raises(AffectMAEError) as err:
        build_face_dataset([f"affwild2:{empty}"])
    assert str(err.value) == (f"affwild2:{empty}: none of the 1 train videos has frame images under "
                              f"{empty / 'cropped_aligned'} (looked for {empty / 'cropped_aligned' / 'v' / '00001.jpg'}); "
                              "give the cropped_aligned folder as ?frames=DIR")
