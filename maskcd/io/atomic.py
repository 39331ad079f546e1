"""Atomic outputs: write under a hidden temporary name beside the target, rename into place only on success.

Every file (or folder) that maskcd writes goes through :func:`atomic_outputs` (several outputs renamed together, as
``map_scene`` does for its GeoPackage and COGs) or :func:`atomic_write` (one output). The temporary name is
``.<name>.<tag>.tmp<suffix>`` in the target's folder (same filesystem, so :func:`os.replace` is atomic; the suffix
keeps the format recognisable), e.g. ``.changes.gpkg.3f9c0a1b2c4d.tmp.gpkg``. The tag is the run id of a
``maskcd-map`` run, so that :func:`maskcd.inference.cleanup.sweep_dead_runs` can tell whose leftovers they are
(:data:`TEMP_RE` matches every such name and the files derived from it: SQLite journals, GDAL scratch files, tile
stores).

On any exception the temporaries, and every file named after them, are removed and nothing is renamed; an existing
target is replaced only with ``overwrite=True`` (else :class:`~maskcd.errors.OutputExistsError`, checked before the
body runs and again just before the rename).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from maskcd.errors import OutputExistsError

TEMP_RE = re.compile(r"^\..+\.([0-9a-f]{8,32})\.tmp(?:$|[.-])")
"""Names of the temporaries (and of every file derived from one, e.g. ``-journal`` or ``.tiles.tif``); group 1 is
the tag."""


def new_tag() -> str:
    """A fresh tag for temporary names (12 hex digits, like a ``maskcd-map`` run id)."""
    return uuid.uuid4().hex[:12]


def temp_path(target: str | os.PathLike, tag: str) -> Path:
    """The hidden temporary name of ``target`` for the run or write ``tag`` (in the same folder)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{tag}.tmp{target.suffix}")


def remove_path(path: Path) -> None:
    """Remove a file, link or folder tree; absent is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_temp(tmp: Path) -> None:
    """Remove a temporary and everything named after it (``<tmp>-journal``, ``<tmp>.tiles.tif``, ...)."""
    tmp = Path(tmp)
    for p in tmp.parent.glob(glob.escape(tmp.name) + "*"):
        remove_path(p)
    remove_path(tmp)


def check_target(target: Path, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` when ``target`` exists and ``overwrite`` is false."""
    if not overwrite and (target.exists() or target.is_symlink()):
        raise OutputExistsError(f"{target} exists: pass --overwrite to replace it, or another output path")


class StagedOutputs:
    """The temporaries of :func:`atomic_outputs`, in the order of the targets (iterable, indexable)."""

    def __init__(self, targets: list[Path], tag: str):
        self.targets = targets
        self.tag = tag
        self.paths = [temp_path(t, tag) for t in targets]

    def __iter__(self) -> Iterator[Path]:
        return iter(self.paths)

    def __getitem__(self, i: int) -> Path:
        return self.paths[i]

    def __len__(self) -> int:
        return len(self.paths)

    def commit(self, overwrite: bool) -> None:
        """Rename every temporary into place (all targets are checked before the first rename)."""
        missing = [str(t) for t in self.paths if not (t.exists() or t.is_symlink())]
        if missing:
            raise FileNotFoundError(f"output(s) were not written: {', '.join(missing)}")
        for target in self.targets:
            check_target(target, overwrite)
        for tmp, target in zip(self.paths, self.targets, strict=True):
            if tmp.is_dir() and not tmp.is_symlink() and target.is_dir() and not target.is_symlink():
                # os.replace cannot replace a non-empty folder: move the old one aside (a name derived from the
                # temporary, so that it is removed with it), then rename
                os.replace(target, tmp.with_name(f"{tmp.name}.old"))
            os.replace(tmp, target)

    def remove(self) -> None:
        for tmp in self.paths:
            remove_temp(tmp)


@contextlib.contextmanager
def atomic_outputs(targets: Iterable[str | os.PathLike], *, overwrite: bool = False, tag: str | None = None,
                   owner: bool = True) -> Iterator[StagedOutputs]:
    """Reserve several outputs: yield their temporaries, rename them all into place when the block succeeds.

    Args:
        targets: The final paths (files or folders); their folders must exist.
        overwrite: Replace existing targets (else :class:`~maskcd.errors.OutputExistsError`, before anything is
            written and again before the renames).
        tag: Tag of the temporary names (a run id; default :func:`new_tag`).
        owner: ``False`` only yields the names: nothing is checked, renamed or removed. For the other ranks of a
            distributed run, which share the main rank's temporaries (same ``tag``) but do not write them.

    Yields:
        A :class:`StagedOutputs`: write each output to its temporary (``staged[i]`` or unpacking). On an exception
        the temporaries (and what is named after them) are removed.

    Raises:
        OutputExistsError: A target exists and ``overwrite`` is false.
        FileNotFoundError: The block ended without writing one of the temporaries (nothing is renamed).
    """
    targets = [Path(t) for t in targets]
    staged = StagedOutputs(targets, tag or new_tag())
    if not owner:
        yield staged
        return
    for target in targets:
        check_target(target, overwrite)
    try:
        yield staged
        staged.commit(overwrite)
    finally:
        staged.remove()  # after a commit only files derived from the temporaries (if any) are left to remove


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike, *, overwrite: bool = False, tag: str | None = None) -> Iterator[Path]:
    """One output: yield its temporary path, rename it to ``target`` when the block succeeds (see
    :func:`atomic_outputs`)."""
    with atomic_outputs([target], overwrite=overwrite, tag=tag) as staged:
        yield staged[0]


def write_text_atomic(target: str | os.PathLike, text: str, *, encoding: str = "utf-8", fsync: bool = False) -> Path:
    """Write ``text`` to ``target`` through :func:`atomic_write` (replacing it); ``fsync`` flushes it to disk
    before the rename."""
    target = Path(target)
    with atomic_write(target, overwrite=True) as tmp, open(tmp, "w", encoding=encoding, newline="") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return target


__all__ = [
    "StagedOutputs", "TEMP_RE", "atomic_outputs", "atomic_write", "check_target", "new_tag", "remove_path",
    "remove_temp", "temp_path", "write_text_atomic",
]
