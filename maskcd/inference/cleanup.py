"""Failures that clean up after themselves: run locks, sweeping what dead runs left, workers that die with their parent.

* Every ``map_scene`` run holds a lock file ``.maskcd-map.<run_id>.lock`` (its pid and run id, under an exclusive
  ``flock``) in each folder it writes to. The kernel drops the ``flock`` when the run dies, even by SIGKILL.
* Before writing, a run sweeps its output folders (:func:`sweep_dead_runs`): the hidden tile stores
  (``..NAME.tif.<run_id>.tif.maskcd-tiles``) and temporary files of runs whose lock is no longer held are removed.
  Temporaries that name no run (a GeoPackage being written) are removed only when no live run holds a lock there.
* Reader processes exit within about a second of their parent's death: DataLoader workers call
  :func:`die_with_parent` in their ``worker_init_fn`` (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux, plus a thread
  that watches ``os.getppid()``, which also ends a worker blocked on a full queue). Dask worker processes of
  ``maskcd-batch`` already exit when their nanny dies (distributed's parent-alive pipe).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import sys
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_PREFIX = ".maskcd-map."
LOCK_SUFFIX = ".lock"
_LOCK_RE = re.compile(rf"^{re.escape(LOCK_PREFIX)}([0-9a-f]+){re.escape(LOCK_SUFFIX)}$")
# hidden temporaries a run writes beside its outputs (see pipeline.map_scene / map_rasters, stitch, gpkg)
_TEMP_RES = (
    re.compile(r"^\..+\.[0-9a-f]{12}\.tif($|\.)"),  # .NAME.tif.<run>.tif and every name derived from it
    re.compile(r"^\..+\.maskcd-tiles$"),  # tile store folders
    re.compile(r"^\..+\.[0-9a-f]{8}\.tmp\.gpkg(-journal|-wal|-shm)?$"),  # GeoPackage being written
)
WATCH_INTERVAL_S = 0.5


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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


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
                _remove(p)
                removed.append(p)
            continue
        if not any(r.match(p.name) for r in _TEMP_RES):
            continue
        if any(run in p.name for run in live):
            continue
        if any(run in p.name for run in dead) or not live:
            _remove(p)
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


def shared_run_id(run_id: str) -> str:
    """The main process's run id on every rank of an ``accelerate launch``/``torchrun`` run (else ``run_id``).

    The ranks write into one tile store whose name carries the run id, so they must agree on it.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return run_id
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    PartialState()
    return broadcast_object_list([run_id])[0]


# --------------------------------------------------------------------------------------- workers die with the parent
PR_SET_PDEATHSIG = 1


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(parent_pid: int, interval: float = WATCH_INTERVAL_S) -> threading.Thread | None:
    """Start a daemon thread that ends this process (``os._exit``) once ``parent_pid`` is no longer its parent.

    Returns ``None`` (and exits at once) when the parent is already gone.
    """
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch():
        import time

        while True:
            time.sleep(interval)
            if os.getppid() != parent_pid:
                os._exit(1)

    thread = threading.Thread(target=watch, name="maskcd-parent-watchdog", daemon=True)
    thread.start()
    return thread


def _die_with_parent(worker_id: int, *, parent_pid: int, init=None) -> None:
    # SIGKILL: the worker may be blocked in C (a GDAL read, a queue put) where a Python signal handler never runs
    _set_pdeathsig(signal.SIGKILL)
    watch_parent(parent_pid)
    if init is not None:
        init(worker_id)


def die_with_parent(init=None):
    """A DataLoader ``worker_init_fn`` that makes each worker exit within about a second of this process's death.

    Args:
        init: Another ``worker_init_fn`` to call afterwards.
    """
    return functools.partial(_die_with_parent, parent_pid=os.getpid(), init=init)

