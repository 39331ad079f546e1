"""Failures that clean up after themselves: run locks, sweeping what dead runs left (workers that die with their parent
are :mod:`maskcd.workers`).

* Every ``map_scene`` run holds a lock file ``.maskcd-map.<run_id>.lock`` (its pid and run id, under an exclusive
  ``flock``) in each folder it writes to. The kernel drops the ``flock`` when the run dies, even by SIGKILL.
* Before writing, a run sweeps its output folders (:func:`sweep_dead_runs`): the temporaries of runs whose lock is
  no longer held are removed, i.e. the outputs reserved by :func:`maskcd.io.atomic.atomic_outputs`
  (``.NAME.<run_id>.tmp.EXT``, tagged with the run id) and everything named after them, such as the hidden tile store
  ``..NAME.tif.<run_id>.tmp.tif.maskcd-tiles``. Temporaries that name no known run (a file written by
  :func:`~maskcd.io.atomic.atomic_write` outside a run, a tile store of ``map_rasters``) are removed only when no
  live run holds a lock there.
* Reader processes exit within about a second of their parent's death: DataLoader workers call
  :func:`maskcd.workers.die_with_parent` in their ``worker_init_fn`` (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux,
  plus a thread that watches ``os.getppid()``, which also ends a worker blocked on a full queue), and so do the worker
  processes of the vectorisation's ``processes`` scheduler (their pool's initializer). Dask worker processes of
  ``maskcd-batch`` already exit when their nanny dies (distributed's parent-alive pipe).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path

from maskcd.io.atomic import TEMP_RE, remove_path

logger = logging.getLogger(__name__)

LOCK_PREFIX = ".maskcd-map."
LOCK_SUFFIX = ".lock"
_LOCK_RE = re.compile(rf"^{re.escape(LOCK_PREFIX)}([0-9a-f]+){re.escape(LOCK_SUFFIX)}$")
# hidden temporaries a run writes beside its outputs: those of maskcd.io.atomic (and every name derived from one) and
# the tile store folders of map_rasters
_TEMP_RES = (TEMP_RE, re.compile(r"^\..+\.maskcd-tiles$"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_held(path: Path) -> bool:
    """Whether a live process holds the run lock at ``path`` (``flock``; pid check where ``flock`` is unsupported)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            text = os.pread(fd, 64, 0).decode(errors="replace").split()
            return bool(text) and text[0].isdigit() and _pid_alive(int(text[0]))
        return False
    finally:
        os.close(fd)


def sweep_dead_runs(folder: str | os.PathLike) -> list[Path]:
    """Remove what dead ``maskcd-map`` runs left in ``folder`` (tile stores, temporaries, their lock files).

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    try:
        entries = [p for p in folder.iterdir() if p.name.startswith(".")]
    except OSError:
        return []
    live, dead = set(), set()
    for p in entries:
        m = _LOCK_RE.match(p.name)
        if m:
            (live if _lock_held(p) else dead).add(m.group(1))
    removed = []
    for p in entries:
        m = _LOCK_RE.match(p.name)
        if m:
            if m.group(1) in dead:
                remove_path(p)
                removed.append(p)
            continue
        if not any(r.match(p.name) for r in _TEMP_RES):
            continue
        if any(run in p.name for run in live):
            continue
        if any(run in p.name for run in dead) or not live:
            remove_path(p)
            removed.append(p)
    if removed:
        logger.warning("removed %d leftover(s) of dead maskcd-map runs in %s: %s", len(removed), folder,
                       ", ".join(p.name for p in removed))
    return removed


class RunLock:
    """Exclusive ``flock`` on ``.maskcd-map.<run_id>.lock`` (holding ``"<pid> <run_id>"``) in each output folder.

    Use as a context manager; the lock files are removed on exit. The kernel releases the locks if the process dies.
    """

    def __init__(self, folders, run_id: str):
        self.folders = sorted({Path(f).resolve() for f in folders})
        self.run_id = run_id
        self._fds: list[tuple[int, Path]] = []

    def __enter__(self) -> RunLock:
        import fcntl

        try:
            for folder in self.folders:
                path = folder / f"{LOCK_PREFIX}{self.run_id}{LOCK_SUFFIX}"
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                self._fds.append((fd, path))
                with contextlib.suppress(OSError):  # no flock on this filesystem: the pid check stands in
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.pwrite(fd, f"{os.getpid()} {self.run_id}\n".encode(), 0)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for fd, path in self._fds:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)
        self._fds.clear()


def shared_run_id(run_id: str, device: str = "auto") -> str:
    """The main process's run id on every rank of an ``accelerate launch``/``torchrun`` run (else ``run_id``).

    The ranks write into one tile store whose name carries the run id, so they must agree on it. The process group
    is set up as inference will use it (:func:`~maskcd.inference.predict.make_accelerator` with ``device``).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return run_id
    from accelerate.utils import broadcast_object_list

    from maskcd.inference.predict import make_accelerator

    make_accelerator(device)
    return broadcast_object_list([run_id])[0]


# ------------------------------------------------------------------------------------------------------ disk space
_NO_SPACE_TEXTS = ("No space left on device", "Disk quota exceeded", "database or disk is full",
                   "Free disk space available is")
PROB_BYTES_PER_PX = 2.4
"""Peak bytes per pixel of the probability raster: the uncompressed-size bound of the stitched GeoTIFF plus its COG
copy with overviews (both exist until the GeoTIFF is removed)."""
MASK_BYTES_PER_PX = 0.3
"""The same for the mask (0/1/255 runs compress well over 8×)."""


def estimate_run_bytes(height: int, width: int, tile: int, overlap: int) -> dict[str, int]:
    """Upper estimate of the disk a run needs at its peak, by what is written where.

    Returns:
        ``{"tiles": tile store bytes (float16, every window), "prob": ..., "mask": ...}``; the tile store sits next to
        the probability COG.
    """
    stride = max(1, tile - overlap)

    def count(n: int) -> int:
        return 1 if n <= tile else -(-(n - tile) // stride) + 1

    n_px = int(height) * int(width)
    return {
        "tiles": count(height) * count(width) * tile * tile * 2,
        "prob": int(PROB_BYTES_PER_PX * n_px),
        "mask": int(MASK_BYTES_PER_PX * n_px),
    }


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_free_space(needs: dict, what: str) -> None:
    """Fail early when a filesystem lacks the space a run needs there.

    Args:
        needs: folder → bytes needed in it; folders on one filesystem are summed.
        what: What the space is for, for the message (e.g. "tile store and COGs of a 30000×30000 scene").

    Raises:
        DiskFullError: naming the folder, the space needed and the space free.
    """
    from maskcd.errors import DiskFullError

    by_dev: dict[int, list] = {}
    for folder, need in needs.items():
        folder = Path(folder)
        try:
            dev = os.stat(folder).st_dev
        except OSError:
            continue
        entry = by_dev.setdefault(dev, [folder, 0])
        entry[1] += int(need)
    for folder, need in by_dev.values():
        free = shutil.disk_usage(folder).free
        if free < need:
            raise DiskFullError(
                f"not enough free space in {folder}: this run needs about {format_bytes(need)} there ({what}) but "
                f"only {format_bytes(free)} is free; free some space or write the outputs to another disk"
            )


def is_enospc(err: BaseException | None) -> bool:
    """Whether ``err``, or an error it was raised from, is "no space left on device" (ENOSPC, EDQUOT, or the same
    reported as text by GDAL, SQLite or a DataLoader worker)."""
    import errno

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(err) for t in _NO_SPACE_TEXTS):
            return True
        err = err.__cause__ or err.__context__
    return False


def enospc_path(err: BaseException | None) -> str | None:
    """The file named by the ENOSPC error (or one it was raised from), when it names one."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.filename:
            return str(err.filename)
        err = err.__cause__ or err.__context__
    return None
