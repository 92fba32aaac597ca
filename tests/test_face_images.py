"""Face-image readers (folder, FER2013, FER+, RAF-DB, AffectNet), their combination, and datasets/images.py."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from affectmae.datasets.face_images import (
    FER2013,
    RAFDB,
    AffectNet,
    FERPlus,
    ImageFolderFaces,
    build_face_dataset,
    parse_face_spec,
)
from affectmae.datasets.images import collate_skip_corrupt, load_rgb, open_rgb
from affectmae.errors import AffectMAEError, InputFormatError

FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
AFFECTNET_HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"


def save(path: Path, array: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def solid(h: int, w: int, rgb=(200, 100, 50)) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def pattern(offset: int) -> np.ndarray:
    """(48, 48) uint8 with pixel (r, c) = (r * 48 + c + offset) % 256."""
    return ((np.arange(48 * 48) + offset) % 256).astype(np.uint8).reshape(48, 48)


def fer_row(emotion: int, offset: int, usage: str) -> str:
    return f"{emotion},{' '.join(map(str, pattern(offset).ravel()))},{usage}"


def write_fer2013(path: Path) -> Path:
    rows = [fer_row(6, 0, "Training"), fer_row(3, 7, "Training"), fer_row(0, 100, "PublicTest"), fer_row(5, 200, "PrivateTest")]
    path.write_text("emotion,pixels,Usage\r\n" + "\r\n".join(rows) + "\r\n")
    return path


# ----------------------------------------------------------------------------------------- images.py
def test_load_rgb_converts_gray_and_rgba(tmp_path):
    gray = save(tmp_path / "g.png", np.full((5, 7), 77, np.uint8))
    rgba = save(tmp_path / "a.png", np.dstack([solid(4, 3), np.zeros((4, 3), np.uint8)]))
    g = load_rgb(gray)
    assert g.shape == (5, 7, 3) and g.dtype == np.uint8 and (g == 77).all()
    a = load_rgb(rgba)
    assert a.shape == (4, 3, 3) and a[0, 0].tolist() == [200, 100, 50]


def test_unreadable_images_raise_input_format_error(tmp_path):
    bad = truncated_jpeg(tmp_path / "t.jpg")
    with pytest.raises(InputFormatError, match=r"t.jpg: cannot decode image \(OSError: image file is truncated"):
        load_rgb(bad)
    (tmp_path / "n.jpg").write_bytes(b"not an image at all")
    with pytest.raises(InputFormatError, match=r"n.jpg: cannot decode image \(UnidentifiedImageError"):
        open_rgb(tmp_path / "n.jpg")
    with pytest.raises(InputFormatError) as err:
        open_rgb(tmp_path / "missing.png")
    assert str(err.value) == f"{tmp_path / 'missing.png'}: image file not found"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # importing affectmae must not change it


# -------------------------------------------------------------------------------------------- folder
def test_folder_recursive_extensions_and_corrupt_skipped(tmp_path):
    save(tmp_path / "a" / "x.jpg", solid(8, 8))
    save(tmp_path / "a" / "b" / "y.PNG", np.full((6, 6), 9, np.uint8), "PNG")
    save(tmp_path / "z.bmp", solid(4, 4))
    save(tmp_path / "w.webp", solid(4, 4))
    save(tmp_path / ".hidden" / "h.jpg", solid(4, 4))
    (tmp_path / "notes.txt").write_text("x")
    truncated_jpeg(tmp_path / "c" / "broken.jpeg")
    ds = ImageFolderFaces(tmp_path, transform=lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1))
    names = [p.relative_to(tmp_path).as_posix() for p in ds._paths]
    assert names == ["w.webp", "z.bmp", "a/x.jpg", "a/b/y.PNG", "c/broken.jpeg"]
    image, label = ds[3]
    assert image.shape == (3, 6, 6) and int(image[1, 0, 0]) == 9 and label == -1
    assert ds[4] is None and ds.skipped.count == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(AffectMAEError) as err:
        ImageFolderFaces(tmp_path / "empty")
    assert str(err.value) == f"no images (jpg, jpeg, png, bmp, webp) found in {tmp_path / 'empty'}"


# ------------------------------------------------------------------------------------ FER2013 / FER+
def test_fer2013_decodes_known_pixel_pattern_and_maps_labels(tmp_path):
    ds = FER2013(write_fer2013(tmp_path / "fer2013.csv"))
    assert len(ds) == 4
    image, label = ds[1]
    assert image.mode == "RGB" and image.size == (48, 48)
    arr = np.asarray(image)
    np.testing.assert_array_equal(arr[:, :, 0], pattern(7))
    assert arr[10, 20].tolist() == [(10 * 48 + 20 + 7) % 256] * 3
    assert [ds[i][1] for i in range(4)] == [0, 4, 1, 6]  # Neutral, Happy->Happiness, Angry->Anger, Surprise
    train = FER2013(tmp_path / "fer2013.csv", usage="Training")
    assert len(train) == 2 and train.summary["other_usage"] == 2
    np.testing.assert_array_equal(np.asarray(FER2013(tmp_path / "fer2013.csv", usage="PrivateTest")[0][0])[:, :, 2], pattern(200))


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("emotion,pixel,Usage\n0,1,Training\n", 1, "wrong header: expected 'emotion,pixels,Usage', found 'emotion,pixel,Usage'"),
        ("emotion,pixels,Usage\n" + fer_row(0, 0, "Training") + "\n0," + " ".join(["1"] * 2303) + ",Training\n", 3,
         "pixels: expected 2304 values, found 2303"),
        ("emotion,pixels,Usage\n0," + " ".join(["1"] * 2303) + " 256,Training\n", 2, "pixels: value 256 is outside 0..255"),
        ("emotion,pixels,Usage\n0," + " ".join(["1"] * 2303) + " 1a,Training\n", 2, "pixels: not an integer: '1a'"),
        ("emotion,pixels,Usage\n9," + " ".join(["1"] * 2304) + ",Training\n", 2, "emotion must be an integer 0..6, found '9'"),
        ("emotion,pixels,Usage\n0,1,Training,extra\n", 2, "expected 3 columns, found 4"),
        ("emotion,pixels,Usage\n0," + " ".join(["1"] * 2304) + ",Train\n", 2,
         "Usage must be one of Training, PublicTest, PrivateTest, found 'Train'"),
        ("", 1, "empty file; expected the header 'emotion,pixels,Usage'"),
    ],
)
def test_fer2013_errors_name_file_and_line(tmp_path, text, line, message):
    p = tmp_path / "fer2013.csv"
    p.write_text(text)
    with pytest.raises(InputFormatError) as err:
        FER2013(p)
    assert str(err.value) == f"{p}:{line}: {message}"


def test_ferplus_drops_empty_names_and_nf_majority(tmp_path):
    fer = write_fer2013(tmp_path / "fer2013.csv")
    rows = [
        "Training,fer0000000.png,0,10,0,0,0,0,0,0,0,0",  # happiness
        "Training,,10,0,0,0,0,0,0,0,0,0",  # no image name: dropped
        "PublicTest,fer0000002.png,2,0,0,0,0,0,0,0,1,7",  # NF has the most votes: dropped
        "PrivateTest,fer0000003.png,1,0,0,0,0,0,0,3,6,0",  # unknown wins: label -1 (contempt 3 loses)
    ]
    plus = tmp_path / "fer2013new.csv"
    plus.write_text(FERPLUS_HEADER + "\n" + "\n".join(rows) + "\n")
    ds = FERPlus(plus, fer)
    assert len(ds) == 2
    assert ds.summary["empty_image_name"] == 1 and ds.summary["nf_majority"] == 1
    assert [ds[0][1], ds[1][1]] == [4, -1]
    np.testing.assert_array_equal(np.asarray(ds[1][0])[:, :, 0], pattern(200))  # row order follows fer2013.csv
    assert ds.votes[1].tolist() == [1, 0, 0, 0, 0, 0, 0, 3, 6, 0]
    assert len(FERPlus(plus, fer, usage="PrivateTest")) == 1
    plus.write_text(FERPLUS_HEADER + "\n" + "\n".join(rows[:3]) + "\n")
    with pytest.raises(InputFormatError, match=r"fer2013new.csv: 3 rows but .*fer2013.csv has 4; FER\+ rows must match"):
        FERPlus(plus, fer)


# ------------------------------------------------------------------------------------------- RAF-DB
def make_rafdb(root: Path) -> Path:
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(
        "train_00001.jpg 5\ntrain_00002.jpg 1\ntest_0001.jpg 7\ntrain_00003.jpg 4\n\n"
    )
    for name in ("train_00001", "train_00002", "test_0001"):  # train_00003 missing
        save(root / "Image" / "aligned" / f"{name}_aligned.jpg", solid(10, 10))
    save(root / "Image" / "original" / "train_00001.jpg", solid(20, 20))
    return root


def test_rafdb_layout_labels_and_missing_images(tmp_path):
    root = make_rafdb(tmp_path / "basic")
    ds = RAFDB(root)
    assert [p.name for p in ds._paths] == ["train_00001_aligned.jpg", "train_00002_aligned.jpg", "test_0001_aligned.jpg"]
    assert [ds[i][1] for i in range(3)] == [5, 6, 0]  # Sadness, Surprise, Neutral
    assert ds.summary["missing_image"] == 1 and ds[0][0].size == (10, 10)
    assert len(RAFDB(root, split="test")) == 1 and RAFDB(root, split="train").summary["other_split"] == 1
    (root / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 5\ntrain_00002.jpg 8\n")
    with pytest.raises(InputFormatError) as err:
        RAFDB(root)
    assert str(err.value) == f"{root / 'EmoLabel' / 'list_patition_label.txt'}:2: expected '<image>.jpg <label 1..7>', found 'train_00002.jpg 8'"


# ----------------------------------------------------------------------------------------- AffectNet
def make_affectnet(root: Path) -> Path:
    images = root / "Manually_Annotated" / "Manually_Annotated_Images"
    img = solid(30, 40)
    img[5:25, 10:30] = (0, 255, 0)  # the face box: x=10, y=5, w=20, h=20
    save(images / "1" / "a.jpg", img)
    save(images / "2" / "b.png", solid(12, 12, (1, 2, 3)), "PNG")
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    rows = [
        '1/a.jpg,10,5,20,20,"1.0;2.0",3,0.5,0.2',
        "2/b.png,0,0,12,12,,7,-0.1,0.3",
        "2/nonface.jpg,0,0,5,5,,10,-2,-2",
        "3/missing.jpg,0,0,5,5,,1,0.1,0.1",
    ]
    (lists / "training.csv").write_text(AFFECTNET_HEADER + "\n" + "\n".join(rows) + "\n")
    (lists / "validation.csv").write_text("1/a.jpg,0,0,40,30,,9,0,0\n")  # the official file has no header
    return root


def test_affectnet_official_layout_crop_labels_counts(tmp_path):
    root = make_affectnet(tmp_path / "AffectNet")
    ds = AffectNet(root)
    assert len(ds) == 2 and ds.summary["missing_image"] == 1 and ds.summary["non_face"] == 1
    face, label = ds[0]
    assert face.size == (20, 20) and label == 6  # Surprise
    assert np.abs(np.asarray(face)[3:-3, 3:-3].astype(int) - [0, 255, 0]).max() < 40  # inside the green box
    assert ds[1][1] == 7  # Contempt -> Other
    assert AffectNet(root, crop=False)[0][0].size == (40, 30)
    val = AffectNet(root, split="val")
    assert len(val) == 1 and val[0][1] == -1 and val[0][0].size == (40, 30)


def test_affectnet_bad_row_and_packed_layout(tmp_path):
    root = make_affectnet(tmp_path / "AffectNet")
    csv_path = root / "Manually_Annotated_file_lists" / "training.csv"
    csv_path.write_text(AFFECTNET_HEADER + "\n1/a.jpg,10,5,20,20,,12,0,0\n")
    with pytest.raises(InputFormatError) as err:
        AffectNet(root)
    assert str(err.value) == f"{csv_path}:2: expression must be 0..10, found 12"
    packed = tmp_path / "packed"
    save(packed / "train_set" / "images" / "0.jpg", solid(16, 16))
    save(packed / "train_set" / "images" / "1.jpg", solid(16, 16))
    (packed / "train_set" / "annotations").mkdir()
    np.save(packed / "train_set" / "annotations" / "0_exp.npy", np.array("3"))
    np.save(packed / "train_set" / "annotations" / "1_exp.npy", np.array("1"))
    ds = AffectNet(packed)
    assert len(ds) == 2 and [ds[0][1], ds[1][1]] == [6, 4] and ds[0][0].size == (16, 16)


# ----------------------------------------------------------------------------------------- combining
def to_8x8_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.resize((8, 8))))


def test_build_face_dataset_combines_sources(tmp_path):
    save(tmp_path / "faces" / "f1.jpg", solid(8, 8))
    truncated_jpeg(tmp_path / "faces" / "f2.jpg")
    fer = write_fer2013(tmp_path / "fer2013.csv")
    rafdb = make_rafdb(tmp_path / "RAF-DB" / "basic")
    affectnet = make_affectnet(tmp_path / "AffectNet")
    specs = [str(tmp_path / "faces"), f"fer2013:{fer}?usage=Training", f"rafdb:{rafdb}", f"affectnet:{affectnet}"]
    ds = build_face_dataset(specs, transform=to_8x8_tensor)
    assert len(ds) == 2 + 2 + 3 + 2
    assert [(s["kind"], s["len"]) for s in ds.summary] == [("folder", 2), ("fer2013", 2), ("rafdb", 3), ("affectnet", 2)]
    (images, labels), skipped = next(iter(DataLoader(ds, batch_size=9, collate_fn=collate_skip_corrupt)))
    assert skipped == 1 and images.shape == (8, 8, 8, 3)
    assert labels.tolist() == [-1, 0, 4, 5, 6, 0, 6, 7]
    assert ds.summary[0]["skipped_corrupt"] == 1
    assert len(pickle.loads(pickle.dumps(ds))) == 9  # DataLoader workers may pickle it


def test_face_specs_errors(tmp_path):
    assert parse_face_spec("ferplus:/d/new.csv,/d/fer.csv?usage=PublicTest") == (
        "ferplus", ["/d/new.csv", "/d/fer.csv"], {"usage": "PublicTest"}
    )
    assert parse_face_spec("/data/faces") == ("folder", ["/data/faces"], {})
    with pytest.raises(AffectMAEError) as err:
        build_face_dataset(["celeba:/data/celeba"])
    assert str(err.value) == (
        "unknown face dataset kind 'celeba' in 'celeba:/data/celeba'; "
        "choose one of folder, fer2013, ferplus, rafdb, affectnet, affwild2 (or give a folder)"
    )
    with pytest.raises(AffectMAEError, match="ferplus: expected FER\\+ CSV,FER2013 CSV, got 1 path"):
        build_face_dataset(["ferplus:/d/new.csv"])
    with pytest.raises(AffectMAEError, match="rafdb: unknown option\\(s\\) usage; allowed: split"):
        build_face_dataset(["rafdb:/d?usage=x"])
    with pytest.raises(AffectMAEError, match="unknown FER usage 'train'; choose one of Training, PublicTest, PrivateTest"):
        build_face_dataset([f"fer2013:{tmp_path}/x.csv?usage=train"])
