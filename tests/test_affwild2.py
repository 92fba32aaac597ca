"""Aff-Wild2 reader on small real-format folders written into tmp_path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from affectmae.datasets.affwild2 import AffWild2Frames, FrameIndex
from affectmae.datasets.annotations import (
    base_video_name,
    find_split_dir,
    has_split,
    load_annotations,
    person_side,
    read_annotation_file,
)
from affectmae.datasets.images import collate_skip_corrupt
from affectmae.errors import AffectMAEError, InputFormatError

VA_HEADER = "valence,arousal"
EXPR_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
AU_HEADER = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
CHALLENGE = {"va": "VA_Estimation_Challenge", "expr": "EXPR_Recognition_Challenge", "au": "AU_Detection_Challenge"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def jpeg(path: Path, value: int = 128, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path, quality=95)


def make_affwild2(root: Path) -> tuple[Path, Path]:
    """An unmodified-looking download: 6th_ABAW_Annotations/<Challenge>/<Split>/*.txt + cropped_aligned/."""
    ann = root / "Aff-Wild2" / "6th_ABAW_Annotations"
    frames = root / "Aff-Wild2" / "cropped_aligned"
    write(ann / CHALLENGE["va"] / "Train_Set" / "vidA.txt", f"{VA_HEADER}\n0.5,-0.25\n-5,-5\n0.1,-5\n-1,1\n")
    write(ann / CHALLENGE["va"] / "Train_Set" / "12-24_left.txt", f"{VA_HEADER}\n0.2,0.3\n0.4,0.5\n")
    write(ann / CHALLENGE["va"] / "Validation_Set" / "vidB.txt", f"{VA_HEADER}\n0,0\n")
    write(ann / CHALLENGE["expr"] / "Train_Set" / "vidA.txt", f"{EXPR_HEADER}\n3\n-1\n7\n0\n")
    au_rows = ["1,0,0,0,0,0,0,0,0,0,0,1", "-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1", "0,1,0,1,0,1,0,1,0,1,0,-1", "0,0,0,0,0,0,0,0,0,0,0,0"]
    write(ann / CHALLENGE["au"] / "Train_Set" / "vidA.txt", AU_HEADER + "\n" + "\n".join(au_rows) + "\n")
    # vidA: frames 1, 2, 4 and an extra trailing frame 5; frame 3 has no face (missing image)
    for n in (1, 2, 4, 5):
        jpeg(frames / "vidA" / f"{n:05d}.jpg", value=40 * n)
    for n in (1, 2):
        jpeg(frames / "12-24_left" / f"{n:05d}.jpg")
    return root / "Aff-Wild2", frames


# ------------------------------------------------------------------------------- parsing each task
def test_va_values_mask_bom_crlf_trailing_blank_lines(tmp_path):
    p = tmp_path / "v.txt"
    p.write_bytes(b"\xef\xbb\xbfvalence,arousal\r\n0.5,-0.25\r\n-5,0.1\r\n0.3,-5\r\n1,-1\r\n\r\n  \r\n")
    v = read_annotation_file(p, "va")
    assert v.video == "v" and v.task == "va" and v.source == p
    assert v.labels.dtype == np.float32 and v.labels.shape == (4, 2)
    np.testing.assert_array_equal(v.labels, np.array([[0.5, -0.25], [-5, 0.1], [0.3, -5], [1, -1]], np.float32))
    assert v.valid.tolist() == [True, False, False, True]
    assert v.n_frames == 4


def test_expr_values_and_mask(tmp_path):
    v = read_annotation_file(write(tmp_path / "e.txt", f"{EXPR_HEADER}\n3\n-1\n7\n0\n"), "expr")
    assert v.labels.shape == (4, 1)
    assert v.labels[:, 0].tolist() == [3.0, -1.0, 7.0, 0.0]
    assert v.valid.tolist() == [True, False, True, True]


def test_au_row_with_any_minus_one_is_invalid(tmp_path):
    rows = ["1,0,0,0,0,0,0,0,0,0,0,1", "0,0,0,0,0,-1,0,0,0,0,0,0", "0,1,0,1,0,1,0,1,0,1,0,1"]
    v = read_annotation_file(write(tmp_path / "a.txt", AU_HEADER + "\n" + "\n".join(rows)), "au")
    assert v.labels.shape == (3, 12)
    assert v.labels[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert v.valid.tolist() == [True, False, True]


# ---------------------------------------------------------------------------------------- errors
def test_wrong_header_names_file_line_expected_and_found(tmp_path):
    p = write(tmp_path / "x.txt", "valence,arousl\n0,0\n")
    with pytest.raises(InputFormatError) as err:
        read_annotation_file(p, "va")
    assert str(err.value) == f"{p}:1: wrong header for task va: expected 'valence,arousal', found 'valence,arousl'"
    assert err.value.line == 1 and err.value.path == p


def test_header_of_another_task_is_named(tmp_path):
    p = write(tmp_path / "x.txt", f"{EXPR_HEADER}\n1\n")
    with pytest.raises(InputFormatError, match=r"x.txt:1: .*\(this is the header of a EXPR file\)"):
        read_annotation_file(p, "au")


@pytest.mark.parametrize(
    "task,text,line,message",
    [
        ("va", f"{VA_HEADER}\n0.1,0.2\n0.1,0.2,0.3\n", 3, "expected 2 comma-separated values, found 3: '0.1,0.2,0.3'"),
        ("au", f"{AU_HEADER}\n1,0\n", 2, "expected 12 comma-separated values, found 2: '1,0'"),
        ("va", f"{VA_HEADER}\n0.1,0.2\n0.3,abc\n", 3, "not a number: 'abc'"),
        ("va", f"{VA_HEADER}\n0.1,nan\n", 2, "value is not a finite number: [0.1, nan]"),
        ("va", f"{VA_HEADER}\n0.1,0.2\n1.5,0\n", 3, "valence = 1.5 is out of range; expected in [-1, 1] or -5 (invalid)"),
        ("va", f"{VA_HEADER}\n0.1,-4\n", 2, "arousal = -4 is out of range; expected in [-1, 1] or -5 (invalid)"),
        ("expr", f"{EXPR_HEADER}\n1\n8\n", 3, "expression = 8 is out of range; expected an integer class 0..7 or -1 (invalid)"),
        ("expr", f"{EXPR_HEADER}\n2.5\n", 2, "expression = 2.5 is out of range; expected an integer class 0..7 or -1 (invalid)"),
        ("au", f"{AU_HEADER}\n0,0,2,0,0,0,0,0,0,0,0,0\n", 2, "AU4 = 2 is out of range; expected 0, 1 or -1 (invalid)"),
        ("va", f"{VA_HEADER}\n0.1,0.2\n\n0.3,0.4\n", 3, "blank line inside the file (frames after it would be misaligned)"),
        ("va", f"{VA_HEADER}\n\n", 2, "no frame lines after the header"),
        ("va", "", 1, "empty file; expected the header 'valence,arousal'"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, task, text, line, message):
    p = write(tmp_path / "bad.txt", text)
    with pytest.raises(InputFormatError) as err:
        read_annotation_file(p, task)
    assert str(err.value) == f"{p}:{line}: {message}"


def test_non_utf8_file(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes(b"valence,arousal\n0.1,\xff\n")
    with pytest.raises(InputFormatError, match=r"x.txt:2: not UTF-8 text \(invalid start byte at byte 20\)"):
        read_annotation_file(p, "va")


# --------------------------------------------------------------------------------- locating folders
def test_locate_from_any_parent_and_from_challenge_dir(tmp_path):
    root, _ = make_affwild2(tmp_path)
    expected = root / "6th_ABAW_Annotations" / CHALLENGE["va"] / "Train_Set"
    assert find_split_dir(tmp_path, "va", "train") == expected  # two levels above the challenge folder
    assert find_split_dir(root / "6th_ABAW_Annotations", "va", "Train_Set") == expected
    assert find_split_dir(expected.parent, "va", "train") == expected
    assert [v.video for v in load_annotations(tmp_path, "va", "train")] == ["12-24_left", "vidA"]
    assert [v.video for v in load_annotations(tmp_path, "va", "val")] == ["vidB"]


def test_older_abaw_folder_name_is_accepted(tmp_path):
    write(tmp_path / "ann" / "EXPR_Classification_Challenge" / "Train_Set" / "v.txt", f"{EXPR_HEADER}\n4\n")
    (v,) = load_annotations(tmp_path, "expr", "train")
    assert v.labels[0, 0] == 4


def test_missing_split_and_empty_split_and_unknown_split(tmp_path):
    root, _ = make_affwild2(tmp_path)
    with pytest.raises(AffectMAEError) as err:
        load_annotations(root, "expr", "val")
    assert str(err.value) == f"split folder {root / '6th_ABAW_Annotations' / CHALLENGE['expr'] / 'Validation_Set'} does not exist"
    empty = root / "6th_ABAW_Annotations" / CHALLENGE["au"] / "Validation_Set"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(AffectMAEError) as err:
        load_annotations(root, "au", "val")
    assert str(err.value) == f"split folder {empty} contains no .txt annotation files"
    with pytest.raises(AffectMAEError, match="unknown split 'test'; choose one of train, val"):
        load_annotations(root, "au", "test")


def test_no_challenge_folder(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(AffectMAEError) as err:
        find_split_dir(tmp_path, "au", "train")
    assert str(err.value) == (
        f"{tmp_path}: no AU annotation folder (AU_Detection_Challenge or AU_Set) found in it or up to 3 levels below"
    )


def test_has_split_is_false_only_for_absent_folders(tmp_path):
    root, _ = make_affwild2(tmp_path)
    assert has_split(root, "va", "train") and has_split(root, "va", "val")
    assert not has_split(root, "expr", "val")  # challenge folder present, split folder absent
    assert not has_split(tmp_path / "Aff-Wild2" / "cropped_aligned", "au", "train")  # no challenge folder
    # two annotation releases side by side: an ambiguity, never silently treated as "no annotations"
    write(tmp_path / "Aff-Wild2" / "5th_ABAW" / CHALLENGE["va"] / "Train_Set" / "vidA.txt", f"{VA_HEADER}\n0,0\n")
    with pytest.raises(AffectMAEError, match="several VA annotation folders found"):
        has_split(root, "va", "train")


# ----------------------------------------------------------------------------------------- frames
def test_frame_index_paths_and_availability(tmp_path):
    root, frames = make_affwild2(tmp_path)
    for given in (root, frames):
        idx = FrameIndex(given)
        assert idx.root == frames
        assert idx.frame_path("vidA", 0) == frames / "vidA" / "00001.jpg"
        assert idx.frame_path("vidA", 41) == frames / "vidA" / "00042.jpg"
    idx = FrameIndex(root)
    assert idx.videos() == ["12-24_left", "vidA"]
    # 4 annotated frames, frame 3 missing, extra image 00005.jpg beyond the annotation is ignored
    assert idx.available("vidA", 4).tolist() == [True, True, False, True]
    assert idx.available("vidA", 6).tolist() == [True, True, False, True, True, False]
    assert idx.available("no_such_video", 3).tolist() == [False, False, False]
    # only names that "%05d.jpg" produces count: not 000003.jpg, 3.jpg or 00003.JPG
    for name in ("000003.jpg", "3.jpg", "00003.JPG", "00003.png"):
        jpeg(frames / "odd" / name)
    jpeg(frames / "odd" / "100000.jpg")
    odd = FrameIndex(frames)
    assert odd.frame_numbers("odd").tolist() == [100000]
    assert odd.frame_path("odd", 99999).name == "100000.jpg"
    with pytest.raises(AffectMAEError, match="frames root .*nowhere is not a folder"):
        FrameIndex(tmp_path / "nowhere")


def test_left_right_videos():
    assert base_video_name("12-24-1920x1080_left") == "12-24-1920x1080"
    assert base_video_name("video10_1_right") == "video10_1"
    assert base_video_name("118-30-640x480") == "118-30-640x480"
    assert person_side("12-24-1920x1080_left") == "left"
    assert person_side("video10_1_right") == "right"
    assert person_side("left") is None and person_side("118-30-640x480") is None


# ---------------------------------------------------------------------------------------- dataset
@pytest.mark.parametrize(
    "task,n,invalid,missing,first_label",
    [
        # vidA: image of frame k=2 is missing; that row's label is valid only for EXPR (class 7)
        ("va", 4, 2, 0, torch.tensor([0.5, -0.25])),
        ("expr", 2, 1, 1, torch.tensor(3)),
        ("au", 2, 2, 0, torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])),
    ],
)
def test_frames_dataset_counts_and_labels(tmp_path, task, n, invalid, missing, first_label):
    root, frames = make_affwild2(tmp_path)
    ds = AffWild2Frames(root, frames, task, "train")
    assert len(ds) == n
    assert ds.summary["invalid_label"] == invalid and ds.summary["missing_image"] == missing
    assert ds.summary["usable"] == n
    image, label = ds[0 if task != "va" else 2]  # "12-24_left" sorts first for VA
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (16, 16)
    assert label.dtype == first_label.dtype and label.shape == first_label.shape
    torch.testing.assert_close(label, first_label)


def test_frames_dataset_va_left_video_and_frame_ids(tmp_path):
    root, frames = make_affwild2(tmp_path)
    ds = AffWild2Frames(root, frames, "va", "train")
    assert [ds.frame_id(i) for i in range(len(ds))] == [("12-24_left", 0), ("12-24_left", 1), ("vidA", 0), ("vidA", 3)]
    assert ds.summary == {
        "videos": 2, "annotated_frames": 6, "invalid_label": 2, "missing_image": 0,
        "videos_without_frames": 0, "strided_out": 0, "usable": 4,
    }
    torch.testing.assert_close(ds[3][1], torch.tensor([-1.0, 1.0]))
    every_other = AffWild2Frames(root, frames, "va", "train", frame_stride=2)
    assert [every_other.frame_id(i) for i in range(len(every_other))] == [("12-24_left", 0), ("vidA", 0)]
    assert every_other.summary["strided_out"] == 2 and every_other.summary["usable"] == 2


def test_corrupt_frame_is_skipped_counted_and_collated(tmp_path):
    root, frames = make_affwild2(tmp_path)
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "JPEG")
    (frames / "vidA" / "00004.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])  # truncated
    ds = AffWild2Frames(root, frames, "expr", "train", transform=lambda im: torch.from_numpy(np.array(im)))
    assert [ds.frame_id(i) for i in range(len(ds))] == [("vidA", 0), ("vidA", 3)]
    assert ds[1] is None and ds.skipped.count == 1
    assert "00004.jpg" in ds.skipped.examples[0]
    batches = list(DataLoader(ds, batch_size=3, collate_fn=collate_skip_corrupt))
    (images, labels), n_skipped = batches[0]
    assert n_skipped == 1 and images.shape == (1, 16, 16, 3) and labels.tolist() == [3]
    assert images[0, 0, 0].tolist() == [40, 40, 40]  # the grey value written for 00001.jpg
    strict = AffWild2Frames(root, frames, "expr", "train", skip_corrupt=False)
    with pytest.raises(InputFormatError, match=r"vidA/00004.jpg: cannot decode image \(OSError"):
        strict[1]


def test_wrong_frames_root_is_an_error(tmp_path):
    root, _ = make_affwild2(tmp_path)
    (tmp_path / "empty_frames").mkdir()
    with pytest.raises(AffectMAEError, match=r"empty_frames: no frame images for any of the 2 videos annotated for va "
                                             r"train \(looked for .*empty_frames/12-24_left/00001.jpg\); give the "
                                             r"cropped_aligned folder as --frames"):
        AffWild2Frames(root, tmp_path / "empty_frames", "va", "train")


def test_an_annotated_video_without_frames_is_named_unless_allowed(tmp_path, caplog):
    """The rule extract follows: vidB (validation) has an annotation but not a single frame image; an empty folder
    counts as no frames too."""
    root, frames = make_affwild2(tmp_path)
    write(root / "6th_ABAW_Annotations" / CHALLENGE["va"] / "Validation_Set" / "vidC.txt", f"{VA_HEADER}\n0,0\n")
    (frames / "vidB").mkdir()
    jpeg(frames / "vidC" / "00001.jpg")
    message = (f"{frames}: 1 of the 2 videos annotated for va val have no frame images: vidB; fix --frames, or set "
               f"allow_missing_videos=true to skip them")
    with pytest.raises(AffectMAEError) as err:
        AffWild2Frames(root, frames, "va", "val")
    assert str(err.value) == message
    with caplog.at_level("WARNING", logger="affectmae.datasets.affwild2"):
        ds = AffWild2Frames(root, frames, "va", "val", allow_missing_videos=True)
    assert [ds.frame_id(i) for i in range(len(ds))] == [("vidC", 0)]
    assert ds.summary["videos_without_frames"] == 1
    assert (f"{frames}: 1 videos annotated for va val have no frame images and are skipped (allow_missing_videos): "
            "vidB") in caplog.messages
