"""The Dask cluster of ``maskcd-batch``: a local cluster or a connection to one, GPU resources, worker setup.

Sites run on a :class:`distributed.LocalCluster` (worker processes with one thread each) unless a client or a
scheduler address is given. With a CUDA device every task asks for the Dask resource ``GPU=1``, so a worker runs one
site at a time per GPU it advertises (``dask worker ADDRESS --resources GPU=1``).

A killed ``maskcd-batch`` leaves no worker processes of its local cluster: distributed starts each one with a pipe
from its nanny (in this process) and the worker exits at once when that pipe closes (``distributed.process``), and
:class:`DieWithParent` adds the same watchdog as the DataLoader readers (:func:`maskcd.workers.watch_parent`),
which ends a worker within about a second of being re-parented even where its pipe thread cannot run.
``tests/batch/test_batch_kill.py`` checks it. The workers' own DataLoader readers are off (daemonic processes).
"""

from __future__ import annotations

import contextlib
import logging
import os

from distributed.diagnostics.plugin import WorkerPlugin

from maskcd.errors import InputError

logger = logging.getLogger(__name__)


def default_workers(device: str) -> int:
    """Dask workers when ``--workers`` is not given: one per GPU for CUDA, else half the cores (at most 4)."""
    if device.startswith("cuda"):
        import torch

        return max(1, torch.cuda.device_count())
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str, client) -> str:
    """``--device auto`` → ``cuda`` when the cluster (or, without one, this machine) has a GPU, else ``cpu``."""
    if device != "auto":
        return device
    if client is None:
        return "cuda" if cuda_available() else "cpu"
    workers = client.scheduler_info().get("workers", {}).values()
    return "cuda" if any(w.get("resources", {}).get("GPU") for w in workers) else "cpu"


def check_gpu_workers(client) -> None:
    """Raise :class:`InputError` when no worker of ``client``'s cluster advertises the ``GPU`` resource."""
    workers = client.scheduler_info().get("workers", {})
    if not any(w.get("resources", {}).get("GPU") for w in workers.values()):
        raise InputError(
            "device is CUDA but no Dask worker advertises a GPU resource; start workers with "
            "`dask worker ADDRESS --resources GPU=1` (or run without --scheduler)"
        )


class DieWithParent(WorkerPlugin):
    """Worker setup for the local cluster: the worker process exits within about a second of the death of the
    process that started it (this ``maskcd-batch``), like the DataLoader readers of ``maskcd-map``."""

    name = "maskcd-die-with-parent"

    def __init__(self, parent_pid: int):
        self.parent_pid = parent_pid

    def setup(self, worker) -> None:  # noqa: D102 - distributed API
        from maskcd.workers import watch_parent

        if os.getpid() != self.parent_pid:  # a worker thread in this process (processes=False) has no parent to watch
            watch_parent(os.getppid())  # whoever started it (this process, or a fork server of it)


@contextlib.contextmanager
def open_client(client, scheduler: str | None, workers: int | None, device: str):
    """The Dask client to run on: ``client`` itself, one connected to ``scheduler``, or a new local cluster's.

    Args:
        client: An existing :class:`distributed.Client` (used as is, not closed).
        scheduler: Address of a running scheduler (``tcp://host:8786``); its workers are its own.
        workers: Worker processes of a local cluster (default :func:`default_workers`).
        device: ``--device``: a CUDA device (or ``auto`` on a machine with one) gives each local worker ``GPU=1``.

    Raises:
        InputError: The scheduler cannot be reached.
    """
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster

    if scheduler:
        if workers:
            logger.warning("--workers %d is ignored: the cluster at %s has its own workers", workers, scheduler)
        try:
            c = Client(scheduler, timeout="20s")
        except (OSError, ValueError) as err:  # TimeoutError is an OSError; a malformed address a ValueError
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({err}); check --scheduler") from err
        with c:
            yield c
        return
    gpu = device.startswith("cuda") or (device == "auto" and cuda_available())
    n = workers or default_workers("cuda" if gpu else "cpu")
    kwargs = {"resources": {"GPU": 1}} if gpu else {}
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR, **kwargs) as cluster, Client(cluster) as c:
        c.register_plugin(DieWithParent(os.getpid()))
        yield c


__all__ = ["DieWithParent", "check_gpu_workers", "cuda_available", "default_workers", "open_client", "resolve_device"]
