"""Worker processes that die with their parent: DataLoader readers, the vectorisation's process pool, Dask workers.

A worker calls :func:`die_with_parent`'s function when it starts (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux, plus a
thread that watches ``os.getppid()``, which also ends a worker blocked in C or on a full queue), so a run killed with
SIGKILL leaves no orphan behind. This module imports nothing heavy: worker processes of a vectorise-only run start
light.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading

WATCH_INTERVAL_S = 0.5
"""Seconds between two looks of :func:`watch_parent` at the parent."""

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
    """A DataLoader ``worker_init_fn`` (or, called with one argument, a process pool ``initializer``) that makes each
    worker exit within about a second of this process's death.

    Args:
        init: Another ``worker_init_fn`` to call afterwards.
    """
    return functools.partial(_die_with_parent, parent_pid=os.getpid(), init=init)
