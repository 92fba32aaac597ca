"""Face-image collections for MAE pretraining, combinable into one Dataset.

Public API::

    build_face_dataset(specs: list[str], transform=None, skip_corrupt=True) -> FaceImageCollection
        # spec: "kind:path[?key=value&...]" or a plain folder path; kinds:
        #   folder:/data/faces                        any images below it (jpg/jpeg/png/bmp/webp)
        #   fer2013:/data/fer2013.csv[?usage=Training]
        #   ferplus:/data/fer2013new.csv,/data/fer2013.csv[?usage=Training]
        #   rafdb:/data/RAF-DB/basic[?split=train]
        #   affectnet:/data/AffectNet[?split=train|val&crop=true]
        #   affwild2:/data/Aff-Wild2[?split=train|val|all&every=N&frames=DIR]   unlabelled video frames
    FaceImageCollection (a ConcatDataset): .sources, .summary -> list[dict] (one per source, with "len"), .locate(i)
    ImageFolderFaces(root), RAFDB(root, split=None), AffectNet(root, split="train", crop=True)
    FER2013(csv, usage=None), FERPlus(ferplus_csv, fer2013_csv, usage=None)       # in data/fer2013.py

Every source yields ``(image, label)``: an RGB PIL image (or ``transform(image)``) and an int label in
the Aff-Wild2 expression order (-1: none); a corrupt image yields ``None`` (see datasets/images.py).
"""

from __future__ import annotations

import bisect
import csv
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset

from affectmae.datasets.face_base import FaceImages
from affectmae.datasets.face_video_frames import AffWild2VideoFrames
from affectmae.datasets.fer2013 import FER2013, FERPlus, csv_rows, open_csv_with_header
from affectmae.datasets.images import IMAGE_EXTENSIONS, open_rgb
from affectmae.errors import AffectMAEError, InputFormatError

log = logging.getLogger(__name__)

#: RAF-DB basic label 1..7 (Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral) -> EXPRESSIONS
RAFDB_TO_EXPR = (6, 3, 2, 4, 5, 1, 0)
RAFDB_LABEL_FILES = ("list_patition_label.txt", "list_partition_label.txt")
#: AffectNet expression 0..7 (Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt) -> EXPRESSIONS;
#: 8 None and 9 Uncertain -> -1; 10 Non-Face rows are dropped (counted)
AFFECTNET_TO_EXPR = (0, 4, 5, 6, 3, 2, 1, 7, -1, -1)
AFFECTNET_NONFACE = 10
AFFECTNET_COLUMNS = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
    "facial_landmarks", "expression", "valence", "arousal",
)
AFFECTNET_CSV = {"train": "training.csv", "val": "validation.csv"}
AFFECTNET_PACKED = {"train": "train_set", "val": "val_set"}


def _list_images(root: Path) -> list[Path]:
    """Every image file below ``root`` (recursive, hidden folders skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


class ImageFolderFaces(FaceImages):
    """Every ``.jpg/.jpeg/.png/.bmp/.webp`` below ``root``, recursively (labels -1)."""

    kind = "folder"

    def __init__(self, root: str | Path, transform: Callable[[Any], Any] | None = None, skip_corrupt: bool = True):
        super().__init__(str(root), transform, skip_corrupt)
        root = Path(root)
        if not root.is_dir():
            raise AffectMAEError(f"image folder {root} does not exist")
        self._paths = _list_images(root)
        if not self._paths:
            raise AffectMAEError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found in {root}")
        self._labels = np.full(len(self._paths), -1, dtype=np.int64)
        self.summary["len"] = len(self)


class RAFDB(FaceImages):
    """RAF-DB basic: ``EmoLabel/list_patition_label.txt`` (``train_00001.jpg 5``) + ``Image/aligned/*_aligned.jpg``.

    ``root`` is the ``basic`` folder. ``split``: None (all), "train" or "test" (by name prefix).
    Listed images whose aligned file is missing are skipped and counted (``missing_image``).
    """

    kind = "rafdb"

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        skip_corrupt: bool = True,
    ):
        super().__init__(str(root), transform, skip_corrupt)
        if split not in (None, "train", "test"):
            raise AffectMAEError(f"unknown RAF-DB split {split!r}; choose train or test")
        root = Path(root)
        candidates = [root / d / n for d in ("EmoLabel", ".") for n in RAFDB_LABEL_FILES]
        label_file = next((p for p in candidates if p.is_file()), None)
        if label_file is None:
            raise AffectMAEError(f"RAF-DB: no {RAFDB_LABEL_FILES[0]} in {root} or {root / 'EmoLabel'}")
        image_dir = root / "Image" / "aligned"
        if not image_dir.is_dir():
            raise AffectMAEError(f"RAF-DB: aligned image folder {image_dir} does not exist")
        present = {e.name for e in os.scandir(image_dir)}
        paths, labels, missing, other = [], [], 0, 0
        text = label_file.read_text(encoding="utf-8-sig")
        for line_no, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit() or not 1 <= int(fields[1]) <= 7:
                raise InputFormatError(label_file, f"expected '<image>.jpg <label 1..7>', found {line.strip()!r}", line=line_no)
            if split is not None and not fields[0].startswith(split + "_"):
                other += 1
                continue
            aligned = Path(fields[0]).stem + "_aligned.jpg"
            if aligned not in present:
                missing += 1
                continue
            paths.append(image_dir / aligned)
            labels.append(RAFDB_TO_EXPR[int(fields[1]) - 1])
        if missing:
            log.warning("RAF-DB %s: %d listed images are missing from %s", root, missing, image_dir)
        if not paths:
            raise AffectMAEError(f"RAF-DB {root}: no usable images (split={split}, missing={missing})")
        self._paths, self._labels = paths, np.array(labels, dtype=np.int64)
        self.summary.update({"len": len(self), "missing_image": missing, "other_split": other})


def _find_dir(root: Path, name: str, depth: int = 2) -> Path | None:
    """The shallowest folder called ``name`` at most ``depth`` levels below ``root`` (None if absent)."""
    level = [root]
    for d_level in range(depth + 1):
        for d in level:
            if (d / name).is_dir():
                return d / name
        if d_level < depth:
            level = [
                Path(e.path)
                for d in level
                for e in sorted(os.scandir(d), key=lambda e: e.name)
                if e.is_dir() and not e.name.startswith(".") and e.name != "Manually_Annotated_Images"
            ]
    return None


class AffectNet(FaceImages):
    """AffectNet, official layout (``Manually_Annotated_file_lists/{training,validation}.csv`` + images under
    ``Manually_Annotated_Images/``, cropped to the CSV's face box when ``crop``) or the re-packaged layout
    ``{train_set,val_set}/images/<id>.jpg`` + ``annotations/<id>_exp.npy`` (already cropped).

    Rows with a missing image file and Non-Face rows (expression 10) are skipped and counted.
    """

    kind = "affectnet"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        crop: bool = True,
        transform: Callable[[Any], Any] | None = None,
        skip_corrupt: bool = True,
    ):
        super().__init__(str(root), transform, skip_corrupt)
        if split not in AFFECTNET_CSV:
            raise AffectMAEError(f"unknown AffectNet split {split!r}; choose train or val")
        root = Path(root)
        self.crop = crop
        self._boxes: np.ndarray | None = None
        self._exp_dir: Path | None = None
        packed = root / AFFECTNET_PACKED[split]
        lists = None if (packed / "images").is_dir() else _find_dir(root, "Manually_Annotated_file_lists")
        if lists is not None:
            self._read_official(root, lists / AFFECTNET_CSV[split])
        elif (packed / "images").is_dir():
            self._paths = _list_images(packed / "images")
            self._labels = np.full(len(self._paths), -2, dtype=np.int64)  # -2: read lazily from the .npy
            self._exp_dir = packed / "annotations"
            self.summary.update({"layout": "packed", "missing_image": 0, "non_face": 0})
        else:
            raise AffectMAEError(
                f"AffectNet {root}: found neither Manually_Annotated_file_lists/{AFFECTNET_CSV[split]} "
                f"nor {AFFECTNET_PACKED[split]}/images/"
            )
        if not len(self._labels):
            raise AffectMAEError(f"AffectNet {root}: no usable {split} images ({self.summary})")
        self.summary["len"] = len(self)

    def _read_official(self, root: Path, csv_path: Path) -> None:
        image_dir = _find_dir(root, "Manually_Annotated_Images")
        if image_dir is None:
            raise AffectMAEError(f"AffectNet {root}: no Manually_Annotated_Images folder found")
        if not csv_path.is_file():
            raise AffectMAEError(f"AffectNet label file {csv_path} does not exist")
        present = {
            os.path.relpath(os.path.join(d, f), image_dir).replace(os.sep, "/")
            for d, _, files in os.walk(image_dir, followlinks=True)
            for f in files
        }
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            first = fh.readline()
        # the official validation.csv ships without a header line
        has_header = first.split(",")[0].strip() == AFFECTNET_COLUMNS[0]
        if has_header:
            reader, fh = open_csv_with_header(csv_path, AFFECTNET_COLUMNS)
        else:
            fh = open(csv_path, newline="", encoding="utf-8-sig")
            reader = csv.reader(fh)
        paths, labels, boxes, missing, non_face = [], [], [], 0, 0
        with fh:
            for line, row in csv_rows(reader, csv_path, len(AFFECTNET_COLUMNS)):
                try:
                    box = [int(float(v)) for v in row[1:5]]
                    expr = int(row[6])
                except ValueError:
                    if line == 1:
                        raise InputFormatError(
                            csv_path, f"wrong header: expected {','.join(AFFECTNET_COLUMNS)!r}", line=1
                        ) from None
                    raise InputFormatError(csv_path, f"face box and expression must be integers: {row[1:5] + row[6:7]}", line=line) from None
                if not 0 <= expr <= AFFECTNET_NONFACE:
                    raise InputFormatError(csv_path, f"expression must be 0..10, found {expr}", line=line)
                if expr == AFFECTNET_NONFACE:
                    non_face += 1
                    continue
                rel = row[0].strip().replace("\\", "/")
                if rel not in present:
                    missing += 1
                    continue
                paths.append(image_dir / rel)
                labels.append(AFFECTNET_TO_EXPR[expr])
                boxes.append(box)
        if missing:
            log.warning("AffectNet %s: %d listed images are missing from %s", csv_path, missing, image_dir)
        self._paths, self._labels = paths, np.array(labels, dtype=np.int64)
        self._boxes = np.array(boxes, dtype=np.int64).reshape(-1, 4)
        self.summary.update({"layout": "official", "missing_image": missing, "non_face": non_face})

    def label(self, i: int) -> int:
        if self._labels[i] != -2:
            return int(self._labels[i])
        npy = self._exp_dir / f"{self._paths[i].stem}_exp.npy"
        try:
            code = int(np.load(npy, allow_pickle=False))
        except FileNotFoundError:
            code = 8  # no annotation: no label
        except (ValueError, TypeError, OSError) as err:
            raise InputFormatError(npy, f"cannot read the expression label ({err})") from None
        if not 0 <= code <= AFFECTNET_NONFACE:
            raise InputFormatError(npy, f"expression must be 0..10, found {code}")
        return AFFECTNET_TO_EXPR[code] if code < AFFECTNET_NONFACE else -1

    def load_image(self, i: int) -> Image.Image:
        image = open_rgb(self._paths[i])
        if self.crop and self._boxes is not None:
            x, y, w, h = (int(v) for v in self._boxes[i])
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, image.width), min(y + h, image.height)
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                image = image.crop((x0, y0, x1, y1))
        return image



# ----------------------------------------------------------------------------------------- combining
_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _build_source(kind: str, paths: list[str], options: dict[str, str], transform, skip_corrupt) -> FaceImages:
    common = {"transform": transform, "skip_corrupt": skip_corrupt}
    allowed = {"folder": set(), "fer2013": {"usage"}, "ferplus": {"usage"}, "rafdb": {"split"}, "affectnet": {"split", "crop"},
               "affwild2": {"split", "every", "frames"}}
    n_paths = {"ferplus": 2}.get(kind, 1)
    unknown = set(options) - allowed[kind]
    if unknown:
        raise AffectMAEError(f"{kind}: unknown option(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed[kind])) or 'none'}")
    if len(paths) != n_paths:
        need = "FER+ CSV,FER2013 CSV" if kind == "ferplus" else "one path"
        raise AffectMAEError(f"{kind}: expected {need}, got {len(paths)} path(s): {','.join(paths)}")
    if kind == "folder":
        return ImageFolderFaces(paths[0], **common)
    if kind == "fer2013":
        return FER2013(paths[0], usage=options.get("usage"), **common)
    if kind == "ferplus":
        return FERPlus(paths[0], paths[1], usage=options.get("usage"), **common)
    if kind == "rafdb":
        return RAFDB(paths[0], split=options.get("split"), **common)
    if kind == "affwild2":
        every = options.get("every", "1")
        if not every.isdigit():
            raise AffectMAEError(f"affwild2: every must be a whole number, got {every!r}")
        return AffWild2VideoFrames(paths[0], split=options.get("split", "train"), every=int(every),
                                   frames=options.get("frames"), **common)
    crop = options.get("crop", "true").lower()
    if crop not in _BOOL:
        raise AffectMAEError(f"affectnet: crop must be true or false, got {crop!r}")
    return AffectNet(paths[0], split=options.get("split", "train"), crop=_BOOL[crop], **common)


FACE_KINDS = ("folder", "fer2013", "ferplus", "rafdb", "affectnet", "affwild2")


def parse_face_spec(spec: str) -> tuple[str, list[str], dict[str, str]]:
    """``"kind:path[,path2][?key=value&...]"`` or a plain folder path -> (kind, paths, options)."""
    kind, sep, rest = spec.partition(":")
    if not (sep and kind in FACE_KINDS):
        if sep and not Path(spec).exists():
            raise AffectMAEError(
                f"unknown face dataset kind {kind!r} in {spec!r}; choose one of {', '.join(FACE_KINDS)} (or give a folder)"
            )
        kind, rest = "folder", spec  # a plain path (also "C:\\faces" on Windows)
    body, _, query = rest.partition("?")
    options = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq:
            raise AffectMAEError(f"{spec!r}: option {item!r} must look like key=value")
        options[key.strip()] = value.strip()
    paths = [p for p in body.split(",") if p] if kind == "ferplus" else [body]
    return kind, paths, options


class FaceImageCollection(ConcatDataset):
    """Several face-image sources as one Dataset; ``summary`` is one dict per source (with its ``len``)."""

    def __init__(self, sources: list[FaceImages], specs: list[str]):
        super().__init__(sources)
        self.sources = sources
        self.specs = specs

    @property
    def summary(self) -> list[dict[str, Any]]:
        return [
            {"spec": spec, **src.summary, "skipped_corrupt": src.skipped.count}
            for spec, src in zip(self.specs, self.sources, strict=True)
        ]

    def read_cropped(self, i: int, sample: Callable[[int, int], Any], out_size: int) -> tuple[Any, int] | None:
        """Item ``i`` decoded for one random crop (:meth:`FaceImages.read_cropped` of its source)."""
        source, j = self.locate(i)
        return source.read_cropped(j, sample, out_size)

    def locate(self, i: int) -> tuple[FaceImages, int]:
        """(the source holding item ``i``, its index there)."""
        k = bisect.bisect_right(self.cumulative_sizes, i)
        return self.sources[k], i - (self.cumulative_sizes[k - 1] if k else 0)


def build_face_dataset(
    specs: list[str], transform: Callable[[Any], Any] | None = None, skip_corrupt: bool = True,
    min_side: int = 0, decoder: str = "auto", pack: str | Path | None = None,
) -> FaceImageCollection:
    """Combine face-image sources given as specs (see the module docstring) into one Dataset. ``min_side`` > 0
    decodes JPEGs reduced to at least that shorter side (datasets/decode.py); ``pack``: read the images from
    that packed folder (datasets/pack.py), checked against the sources."""
    if not specs:
        raise AffectMAEError(f"no face datasets given; use specs like folder:PATH ({', '.join(FACE_KINDS)})")
    sources = []
    for spec in specs:
        kind, paths, options = parse_face_spec(spec)
        src = _build_source(kind, paths, options, transform, skip_corrupt)
        src.min_side, src.decoder = min_side, decoder
        log.info("face images %s: %d", spec, len(src))
        sources.append(src)
    collection = FaceImageCollection(sources, list(specs))
    if pack:
        from affectmae.datasets.pack import Pack, attach_face_pack

        attach_face_pack(collection, Pack(pack))
    return collection


__all__ = [
    "AffectNet", "FER2013", "FERPlus", "FACE_KINDS", "FaceImageCollection", "FaceImages", "ImageFolderFaces", "RAFDB",
    "build_face_dataset", "parse_face_spec",
]
