"""Run a site catalog on ``dask.distributed``: one task per site, resume, failure isolation, merged outputs.

Layout of ``OUTDIR``::

    <site_id>/changes.gpkg          one layer per pair (``changes`` or ``changes_<before>_<after>``), styled
    <site_id>/change_prob*.tif      probability COG per pair      <site_id>/change_mask*.tif  mask COG per pair
    <site_id>/quicklook.png         before | after | overlay      <site_id>/report.json       totals, shift, timings
    <site_id>/manifest.json         written last (see :mod:`maskcd.batch.manifest`)
    catalog.gpkg                    ``changes``: every site's polygons with site_id and dates; ``sites``: one row per site
    failures.csv                    site_id, error of every failed site of this run (header only when none failed)
    catalog.json                    STAC Catalog of the results; <site_id>/<site_id>.json is each finished site's Item
    stac_inputs/<site_id>/*.vrt     STAC input only: band assets stacked by VRT (they reference the files)

This module holds the orchestration (:func:`run_batch`: read the catalog, lock ``OUTDIR``, resume, submit one task
per site, collect the :class:`~maskcd.batch.report.SiteReport` of each); the parts live beside it:
:mod:`maskcd.batch.cluster` (the Dask cluster and its workers), :mod:`maskcd.batch.worker` (one site on a worker),
:mod:`maskcd.batch.merge` (``catalog.gpkg``) and :mod:`maskcd.batch.summary` (reports, ``failures.csv``, the
``sites`` layer and the summary table).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from maskcd.batch.catalog import SiteJob, read_catalog
from maskcd.batch.cluster import check_gpu_workers, default_workers, open_client, resolve_device
from maskcd.batch.manifest import is_up_to_date, model_fingerprint, site_key
from maskcd.batch.merge import MERGED_LAYER, MERGED_NAME, SITES_LAYER, write_merged
from maskcd.batch.report import SiteReport
from maskcd.batch.stac import is_stac, read_stac, write_results_catalog, write_stacks
from maskcd.batch.summary import FAILURES_NAME, read_report, summary_table, write_failures
from maskcd.batch.worker import process_site
from maskcd.errors import InputError
from maskcd.inference.options import MapOptions

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """Outcome of :func:`run_batch`.

    Args:
        sites: One :class:`~maskcd.batch.report.SiteReport` per catalog site, in catalog order; ``status`` is
            ``mapped``, ``skipped`` (up to date, outputs kept) or ``failed`` (with ``error``).
        merged: The merged GeoPackage, ``None`` when no site has outputs.
        failures_csv: The failures table.
        stac_catalog: ``catalog.json``, the STAC Catalog of the finished sites' results (``None`` when none).
        seconds: Wall time of the run.
    """

    sites: list[SiteReport] = field(default_factory=list)
    merged: Path | None = None
    failures_csv: Path | None = None
    seconds: float = 0.0
    stac_catalog: Path | None = None

    @property
    def failed(self) -> list[SiteReport]:
        return [s for s in self.sites if s.failed]

    @property
    def ok(self) -> bool:
        return not self.failed


def run_batch(
    catalog: str | Path,
    outdir: str | Path,
    options: MapOptions,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    force: bool = False,
    progress: bool = True,
    map_fn=None,
    site_key: str | None = None,
    assets: list[str] | None = None,
    sites: str | Path | None = None,
) -> BatchResult:
    """Map every site of a catalog.

    Args:
        catalog: CSV, GeoPackage or GeoJSON catalog (see :mod:`maskcd.batch.catalog`).
        outdir: Output root (created).
        options: Mapping settings used for every site (``prob_out``/``mask_out``/``aoi`` are set per site).
        workers: Worker processes of the local cluster (default :func:`default_workers`).
        scheduler: Address of an existing Dask scheduler (``tcp://host:8786``) instead of a local cluster.
        client: An existing :class:`distributed.Client` (takes precedence over ``scheduler``).
        force: Redo every site even when its manifest matches (default: resume, skipping finished sites).
        progress: Show a tqdm bar over sites.
        map_fn: Scene mapper with the signature of :func:`maskcd.inference.map_scene` (default: that function).
        site_key: STAC input: the item property naming the site (default ``site_id``, then ``mgrs:tile``).
        assets: STAC input: asset keys, one read directly or several stacked by VRT (see :mod:`maskcd.batch.stac`).
        sites: STAC input: polygon layer with ``site_id``; items are grouped by intersection, the polygon is the AOI.

    Returns:
        The :class:`BatchResult`; failed sites are in ``result.failed`` and ``failures.csv``, never raised.

    Raises:
        InputError: The catalog or model is unusable, another run holds ``OUTDIR`` (an exclusive lock file), or a
            CUDA run finds no worker advertising the ``GPU`` resource.
    """
    t0 = time.perf_counter()
    outdir = Path(outdir)
    stac = None
    if is_stac(catalog):
        stac = read_stac(catalog, outdir, layer=options.layer, site_key=site_key, assets=assets, sites=sites)
        jobs = stac.jobs
    else:
        if site_key or assets or sites:
            raise InputError(f"--site-key, --assets and --sites apply to STAC catalogs; {catalog} is a table")
        jobs = read_catalog(catalog, layer=options.layer)
    if Path(options.model).expanduser().is_dir():  # workers may run elsewhere: pass an absolute folder
        options = replace(options, model=str(Path(options.model).expanduser().resolve()))
    model_fp = model_fingerprint(options.model)
    outdir.mkdir(parents=True, exist_ok=True)
    with _outdir_lock(outdir):
        if stac is not None:
            write_stacks(stac)  # VRTs of band assets under OUTDIR/stac_inputs (they are the sites' inputs)
        result = _run_locked(jobs, outdir, options, model_fp, workers=workers, scheduler=scheduler, client=client,
                             force=force, progress=progress, map_fn=map_fn)
        result.stac_catalog = write_results_catalog(outdir, result.sites, options.to_dict(), model_fp,
                                                    stac.sources if stac is not None else None)
    result.seconds = time.perf_counter() - t0
    return result


LOCK_NAME = ".maskcd-batch.lock"


@contextlib.contextmanager
def _outdir_lock(outdir: Path):
    """Hold an exclusive ``flock`` on ``OUTDIR/.maskcd-batch.lock`` so two runs never write one folder at once.

    The kernel drops the lock when the process dies (even by SIGKILL), so a killed run never blocks its resume.
    """
    import fcntl

    path = outdir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise InputError(
                f"another maskcd-batch run (pid {holder}) is writing {outdir}; wait for it to end or pass another -o"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _run_locked(jobs: list[SiteJob], outdir: Path, options: MapOptions, model_fp: dict, *, workers, scheduler, client,
                force: bool, progress: bool, map_fn) -> BatchResult:
    opts = options.to_dict()
    reports: dict[str, SiteReport] = {}
    todo: list[tuple[SiteJob, dict]] = []
    for job in jobs:
        if job.error:
            reports[job.site_id] = SiteReport.failure(job.site_id, job.error)
            continue
        key = site_key(job, opts, model_fp)
        if not force:
            done, reason = is_up_to_date(outdir / job.site_id, key)
            if done:
                try:
                    reports[job.site_id] = read_report(outdir / job.site_id, status="skipped")
                    logger.info("site %s: up to date, skipped", job.site_id)
                    continue
                except (OSError, ValueError):
                    reason = "report.json is unreadable"
            logger.info("site %s: to do (%s)", job.site_id, reason)
        todo.append((job, key))

    if todo:
        with open_client(client, scheduler, workers, options.device) as c:
            device = resolve_device(options.device, c)
            resources = None
            if device.startswith("cuda"):
                check_gpu_workers(c)
                resources = {"GPU": 1}
            run_opts = {**opts, "device": device}
            token = uuid.uuid4().hex[:8]
            futures = {
                c.submit(process_site, job, str(outdir.resolve()), run_opts, key, map_fn,
                         key=f"site-{job.site_id}-{token}", pure=False, resources=resources): job.site_id
                for job, key in todo
            }
            from distributed import as_completed

            with _progress(len(jobs), progress) as bar:
                bar.update(len(jobs) - len(todo))
                for fut in as_completed(futures):
                    site_id = futures[fut]
                    try:
                        report = fut.result()
                    except Exception as err:  # the worker died (KilledWorker) or the task could not run
                        report = SiteReport.failure(site_id, f"{type(err).__name__}: {err}")
                    reports[site_id] = report
                    if report.failed:
                        logger.warning("site %s failed: %s", site_id, report.error)
                        if report.traceback:
                            logger.debug("site %s traceback:\n%s", site_id, report.traceback)
                    bar.set_postfix_str(f"{site_id} {report.status}")
                    bar.update(1)

    sites = [reports[job.site_id] for job in jobs]
    result = BatchResult(sites=sites)
    result.failures_csv = write_failures(outdir / FAILURES_NAME, sites)
    result.merged = write_merged(outdir, jobs, sites, options, model_fp)
    return result


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sites", unit="site", disable=not enabled, leave=True)


__all__ = [
    "BatchResult", "FAILURES_NAME", "LOCK_NAME", "MERGED_LAYER", "MERGED_NAME", "SITES_LAYER", "default_workers",
    "run_batch", "summary_table", "write_failures", "write_merged",
]
