"""File-system helpers shared by every stage: atomic writes, write errors, and the rule for output folders.

- :func:`atomic_path` / :func:`atomic_write_text` / :func:`atomic_write_bytes`: a file appears all at once
  (temporary file + rename), with the mode a plain ``open()`` would give (``0666 & ~umask``). While it is
  written, the hidden temporary file ``.<name>.<random>.tmp`` is locked; one left by a killed process is
  removed by :func:`remove_stale_temps` on the next run of the stage. :func:`atomic_paths` does the same for
  several files that belong together: all of them appear, or none.
- :class:`OutputWriteError`: a write that fails for a reason of the disk (full, read-only, no permission)
  becomes one line naming the file (:func:`writing` converts such an ``OSError``), and no partial file is
  left under the final name.
- :func:`check_output_dir` / :func:`clear_output_dir`: the one rule for output folders. A folder that holds
  a finished output of a stage (:class:`OutputLayout`) is refused unless the run continues it (``--resume``)
  or replaces it (``--overwrite``). The check changes nothing on disk; the stage clears the folder only
  once every input has been checked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from affectmae.errors import AffectMAEError

# errors that come from where a file is written, not from what is written
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


class OutputWriteError(AffectMAEError):
    """A file could not be written (disk full, read-only file system, no permission); names the file."""

    def __init__(self, path: str | Path, err: OSError):
        self.path, self.errno = Path(path), err.errno
        reason = err.strerror or str(err)
        hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
                errno.EROFS: "choose a writable folder", errno.EACCES: "choose a folder you may write to",
                errno.EPERM: "choose a folder you may write to"}.get(err.errno)
        super().__init__(f"cannot write {self.path}: {reason}" + (f"; {hint} and run again" if hint else ""))


def is_write_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and not isinstance(err, OutputWriteError) and err.errno in WRITE_ERRNOS


@contextlib.contextmanager
def writing(path: str | Path, *also: str | Path) -> Iterator[None]:
    """Turn a write error (:data:`WRITE_ERRNOS`) raised inside the block into :class:`OutputWriteError` naming
    ``path``. An ``OSError`` that names another file (an input being read, say) passes through unchanged."""
    try:
        yield
    except OSError as err:
        names = {str(p) for p in (path, *also)}
        if is_write_error(err) and (err.filename is None or str(err.filename) in names
                                    or str(Path(err.filename).parent) == str(Path(path).parent)):
            raise OutputWriteError(path, err) from None
        raise


def current_umask() -> int:
    """This process's umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _lock(fd: int, blocking: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced, given the umask's mode and renamed
    over ``path``. On any exception the temporary file is removed and ``path`` is left as it was; a write
    error of the disk becomes :class:`OutputWriteError` naming ``path``."""
    with atomic_paths([path]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Several files that appear together or not at all: yield one temporary path next to each of ``paths``;
    on success every one is fsynced and given the umask's mode, and only then are they renamed into place, in
    order. On any exception, the last renames included, the temporary files are removed and so are the files
    already renamed. A write error of the disk becomes :class:`OutputWriteError` naming the file concerned
    (``paths[0]`` for an error inside the block that names no file)."""
    paths = [Path(p) for p in paths]
    temps: list[tuple[Path, int]] = []  # (temporary path, locked descriptor)
    placed: list[Path] = []
    try:
        for path in paths:
            with writing(path, path.parent):
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((Path(tmp), fd))
            _lock(fd, blocking=False)  # held until the rename: remove_stale_temps leaves a live temp alone
        tmp_paths = [tmp for tmp, _ in temps]
        with writing(paths[0], *tmp_paths):
            yield tmp_paths
        for path, tmp in zip(paths, tmp_paths, strict=True):
            with writing(path, tmp):
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o666 & ~current_umask())
        for path, tmp in zip(paths, tmp_paths, strict=True):
            with writing(path, tmp):
                os.replace(tmp, path)
            placed.append(path)
    except BaseException:
        for path in placed:  # a later rename failed: the files that belong with it go too
            path.unlink(missing_ok=True)
        raise
    finally:
        for tmp, fd in temps:
            if tmp.exists():
                tmp.unlink()
            os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files of :func:`atomic_path` in ``folder`` that no live process holds (a killed
    run's half-written file); returns the removed paths. Temporary files being written are left alone."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        if not _TEMP_NAME.match(path.name) or not path.is_file():
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _lock(fd, blocking=False):
                path.unlink(missing_ok=True)
                removed.append(path)
        finally:
            os.close(fd)
    return removed


# ------------------------------------------------------------------------------------------ output folders
@dataclass(frozen=True)
class OutputLayout:
    """What a stage writes into its output folder.

    ``finished``: names (glob patterns) whose presence means the folder holds a result of the stage;
    ``owned``: everything the stage writes there (what ``--overwrite`` removes; other files are kept);
    ``resumable``: the stage continues such a folder with ``--resume`` (training: ``resume_marker`` must exist);
    ``continues``: the stage continues an existing folder by itself (extract, analyze: finished parts skipped).
    """

    stage: str
    finished: tuple[str, ...]
    owned: tuple[str, ...]
    resumable: bool = False
    resume_marker: str | None = None
    continues: bool = False

    def present(self, folder: Path) -> list[Path]:
        return sorted({p for pattern in self.finished for p in folder.glob(pattern)})


def check_output_dir(folder: str | Path, layout: OutputLayout, *, resume: bool = False,
                     overwrite: bool = False) -> str:
    """The one rule for output folders; returns ``"new"``, ``"resume"``, ``"continue"`` or ``"overwrite"``.

    Changes nothing on disk. Refused: a path that is a file; ``--resume`` with ``--overwrite``; ``--resume``
    of a folder without the stage's state; a folder holding a finished result, unless ``--resume`` (stages
    that resume), ``--overwrite``, or a stage that continues folders by itself.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AffectMAEError(f"{folder}: exists and is not a folder; {layout.stage} -o needs a folder")
    if resume and overwrite:
        raise AffectMAEError(f"{layout.stage}: --resume continues {folder} and --overwrite replaces it; pass one")
    if resume:
        if not layout.resumable:
            raise AffectMAEError(f"{layout.stage} has no --resume")
        marker = folder / (layout.resume_marker or "")
        if not marker.is_file():
            raise AffectMAEError(f"--resume: no {marker.name} in {folder}")
        return "resume"
    found = layout.present(folder) if folder.is_dir() else []
    if not found:
        return "new"
    if overwrite:
        return "overwrite"
    if layout.continues:
        return "continue"
    if layout.resumable:
        raise AffectMAEError(f"{folder} already holds a run; pass --resume to continue it or --overwrite to replace "
                             "it, or choose another -o folder")
    raise AffectMAEError(f"{folder} already holds a finished {layout.stage} output ({found[0].name}); "
                         "pass --overwrite to replace it, or choose another -o folder")


def clear_output_dir(folder: str | Path, layout: OutputLayout) -> list[Path]:
    """Remove what ``layout`` owns in ``folder`` (``--overwrite``), and stale temporary files; other files stay.
    Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = sorted({p for pattern in layout.owned for p in folder.glob(pattern)})
    for path in removed:
        with writing(path):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return removed + remove_stale_temps(folder)


def prepare_output_dir(folder: str | Path, layout: OutputLayout, mode: str) -> Path:
    """After every input was checked: create ``folder``, clear it when ``mode == "overwrite"`` and remove
    stale temporary files of a killed run. ``mode`` is what :func:`check_output_dir` returned."""
    folder = Path(folder)
    with writing(folder, folder.parent):
        folder.mkdir(parents=True, exist_ok=True)
    if mode == "overwrite":
        clear_output_dir(folder, layout)
    else:
        remove_stale_temps(folder)
    return folder
