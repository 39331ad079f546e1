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

Sites run on a :class:`distributed.LocalCluster` (worker processes with one thread each) unless a client or a
scheduler address is given. With a CUDA device every task asks for the Dask resource ``GPU=1``, so a worker runs one
site at a time per GPU it advertises (``dask worker ADDRESS --resources GPU=1``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from maskcd.batch.catalog import SiteJob, read_catalog
from maskcd.batch.manifest import is_up_to_date, model_fingerprint, site_key
from maskcd.batch.stac import is_stac, read_stac, write_results_catalog, write_stacks
from maskcd.batch.worker import GPKG_NAME, REPORT_NAME, process_site
from maskcd.errors import InputError
from maskcd.io.atomic import atomic_write
from maskcd.inference.options import MapOptions

logger = logging.getLogger(__name__)

MERGED_NAME = "catalog.gpkg"
FAILURES_NAME = "failures.csv"
MERGED_LAYER = "changes"
SITES_LAYER = "sites"


@dataclass
class BatchResult:
    """Outcome of :func:`run_batch`.

    Args:
        sites: One report per catalog site, in catalog order; ``status`` is ``mapped``, ``skipped`` (up to date,
            outputs kept) or ``failed`` (with ``error``).
        merged: The merged GeoPackage, ``None`` when no site has outputs.
        failures_csv: The failures table.
        stac_catalog: ``catalog.json``, the STAC Catalog of the finished sites' results (``None`` when none).
        seconds: Wall time of the run.
    """

    sites: list[dict] = field(default_factory=list)
    merged: Path | None = None
    failures_csv: Path | None = None
    seconds: float = 0.0
    stac_catalog: Path | None = None

    @property
    def failed(self) -> list[dict]:
        return [s for s in self.sites if s["status"] == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed


def default_workers(device: str) -> int:
    """Dask workers when ``--workers`` is not given: one per GPU for CUDA, else half the cores (at most 4)."""
    if device.startswith("cuda"):
        import torch

        return max(1, torch.cuda.device_count())
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _resolve_device(device: str, client) -> str:
    if device != "auto":
        return device
    import torch

    if client is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    workers = client.scheduler_info().get("workers", {}).values()
    return "cuda" if any(w.get("resources", {}).get("GPU") for w in workers) else "cpu"


@contextlib.contextmanager
def _open_client(client, scheduler: str | None, workers: int | None, device: str):
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
    gpu = device.startswith("cuda") or (device == "auto" and _cuda_available())
    n = workers or default_workers("cuda" if gpu else "cpu")
    kwargs = {"resources": {"GPU": 1}} if gpu else {}
    # A killed maskcd-batch leaves no worker processes: distributed starts each one with a pipe from its nanny (in
    # this process) and the worker exits at once when that pipe closes (distributed.process.AsyncProcess;
    # tests/batch/test_batch_kill.py checks it). Their DataLoader readers are off (daemonic processes).
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR, **kwargs) as cluster, Client(cluster) as c:
        yield c


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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
    reports: dict[str, dict] = {}
    todo: list[tuple[SiteJob, dict]] = []
    for job in jobs:
        if job.error:
            reports[job.site_id] = {"site_id": job.site_id, "status": "failed", "error": job.error}
            continue
        key = site_key(job, opts, model_fp)
        if not force:
            done, reason = is_up_to_date(outdir / job.site_id, key)
            if done:
                try:
                    reports[job.site_id] = {**_read_report(outdir / job.site_id), "status": "skipped"}
                    logger.info("site %s: up to date, skipped", job.site_id)
                    continue
                except (OSError, ValueError):
                    reason = "report.json is unreadable"
            logger.info("site %s: to do (%s)", job.site_id, reason)
        todo.append((job, key))

    if todo:
        with _open_client(client, scheduler, workers, options.device) as c:
            device = _resolve_device(options.device, c)
            resources = None
            if device.startswith("cuda"):
                _check_gpu_workers(c)
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
                        report = {"site_id": site_id, "status": "failed", "error": f"{type(err).__name__}: {err}"}
                    reports[site_id] = report
                    if report["status"] == "failed":
                        logger.warning("site %s failed: %s", site_id, report["error"])
                        if report.get("traceback"):
                            logger.debug("site %s traceback:\n%s", site_id, report["traceback"])
                    bar.set_postfix_str(f"{site_id} {report['status']}")
                    bar.update(1)

    sites = [reports[job.site_id] for job in jobs]
    result = BatchResult(sites=sites)
    result.failures_csv = write_failures(outdir / FAILURES_NAME, sites)
    result.merged = write_merged(outdir, jobs, sites, options, model_fp)
    return result


def _check_gpu_workers(client) -> None:
    workers = client.scheduler_info().get("workers", {})
    if not any(w.get("resources", {}).get("GPU") for w in workers.values()):
        raise InputError(
            "device is CUDA but no Dask worker advertises a GPU resource; start workers with "
            "`dask worker ADDRESS --resources GPU=1` (or run without --scheduler)"
        )


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sites", unit="site", disable=not enabled, leave=True)


def _read_report(site_dir: Path) -> dict:
    with open(site_dir / REPORT_NAME) as f:
        return json.load(f)


def write_failures(path: Path, sites: list[dict]) -> Path:
    """Write ``failures.csv`` (``site_id, error``) atomically; a header only when nothing failed."""
    with atomic_write(path, overwrite=True) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["site_id", "error"])
        for site in sites:
            if site["status"] == "failed":
                writer.writerow([site["site_id"], site.get("error", "")])
    return path


def _target_crs(reports: list[dict]):
    from pyproj import CRS

    crss = {r["footprint_crs"] for r in reports if r.get("footprint_crs")}
    if len(crss) == 1:
        return CRS.from_user_input(crss.pop())
    return CRS.from_epsg(4326)


def write_merged(outdir: Path, jobs: list[SiteJob], sites: list[dict], options: MapOptions, model_fp: dict):
    """Write ``catalog.gpkg``: a styled ``changes`` layer with every site's polygons and a ``sites`` layer.

    Polygons keep their attributes and get ``site_id``, ``layer``, ``before_date`` and ``after_date``. When the sites
    share a CRS it is kept, else everything is reprojected to EPSG:4326 (areas stay in the ``area_m2`` attribute).
    Sites are in catalog order, pairs in time order, so the file does not depend on which worker finished first.

    Returns:
        The GeoPackage path, or ``None`` when no site has outputs.
    """
    import geopandas as gpd
    import pandas as pd
    import pyogrio
    import shapely

    from maskcd.vectorization import ChangesGpkgWriter, add_layer_to_gpkg

    done = [s for s in sites if s["status"] in ("mapped", "skipped")]
    if not done:
        return None
    crs = _target_crs(done)
    frames = []
    for site in done:
        gpkg = outdir / site["site_id"] / GPKG_NAME
        for pair in site["pairs"]:
            gdf = pyogrio.read_dataframe(gpkg, layer=pair["layer"])
            # catalog dates win; without them keep what map_scene read from the files' tags
            dates = {c: pair[c] if pair[c] is not None else (gdf[c] if c in gdf.columns else None)
                     for c in ("before_date", "after_date")}
            gdf = gdf.drop(columns=[c for c in ("site_id", "layer", "before_date", "after_date") if c in gdf.columns])
            gdf.insert(0, "site_id", site["site_id"])
            gdf.insert(1, "layer", pair["layer"])
            gdf.insert(2, "before_date", dates["before_date"])
            gdf.insert(3, "after_date", dates["after_date"])
            frames.append(gdf.to_crs(crs) if gdf.crs is not None else gdf.set_crs(crs))
    polygons = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs)

    rows, geoms = [], []
    for site in sites:
        rows.append({
            # the state of the site's outputs, not what this run did (a resumed site is as mapped as a fresh one)
            "site_id": site["site_id"], "status": "failed" if site["status"] == "failed" else "mapped",
            "n_pairs": site.get("n_pairs", 0),
            "first_date": site.get("first_date"), "last_date": site.get("last_date"),
            "n_polygons": site.get("n_polygons", 0), "changed_km2": site.get("changed_km2", 0.0),
            "valid_km2": site.get("valid_km2", 0.0), "max_shift_px": site.get("max_shift_px", 0.0),
            "coreg_mode": site.get("coreg_mode"), "coreg_applied": site.get("coreg_applied"),
            "coreg_dx_px": site.get("coreg_dx_px"), "coreg_dy_px": site.get("coreg_dy_px"),
            "coreg_reliability": site.get("coreg_reliability"),
            "error": site.get("error"),
        })
        geom = None
        if site.get("footprint_wkt"):
            geom = gpd.GeoSeries([shapely.from_wkt(site["footprint_wkt"])], crs=site["footprint_crs"]).to_crs(crs)[0]
        geoms.append(geom)
    sites_gdf = gpd.GeoDataFrame(rows, geometry=gpd.GeoSeries(geoms, crs=crs), crs=crs)

    metadata = {
        "tool": "maskcd-batch",
        "model": model_fp["id"],
        "model_sha256": model_fp["sha256"],
        "options": options.to_dict(),
        "n_sites": len(sites),
        "n_failed": sum(s["status"] == "failed" for s in sites),
        "sites": ",".join(s["site_id"] for s in sites),
    }
    final = outdir / MERGED_NAME
    with atomic_write(final, overwrite=True) as tmp:
        writer = ChangesGpkgWriter(tmp, layer=MERGED_LAYER)
        writer.append(polygons)
        writer.close(metadata)
        add_layer_to_gpkg(tmp, sites_gdf, layer=SITES_LAYER, style=None, geometry_type="MultiPolygon",
                          metadata={"description": "one row per catalog site: valid-data footprint and totals"},
                          atomic=False)
    return final


def _mp_per_s(site: dict) -> float | None:
    seconds = sum(p.get("seconds", 0.0) for p in site.get("pairs", []))
    return site["n_pixels"] / 1e6 / seconds if seconds > 0 and site.get("n_pixels") else None


def summary_table(result: BatchResult) -> str:
    """A plain-text table of the run: one line per site (what this run did with it) and a total line.

    ``MP/s`` is megapixels of the reference grid per second of ``map_scene`` (all pairs), for sites mapped in this
    run; ``seconds`` is the site's wall time on its worker.
    """
    header = ("site_id", "status", "pairs", "polygons", "changed_km2", "seconds", "MP/s", "note")
    lines = []
    for s in result.sites:
        fresh = s["status"] == "mapped"
        note = s.get("error", "") if s["status"] == "failed" else ""
        mp = _mp_per_s(s) if fresh else None
        lines.append((s["site_id"], s["status"], str(s.get("n_pairs", "")), str(s.get("n_polygons", "")),
                      f"{s['changed_km2']:.4f}" if "changed_km2" in s else "",
                      f"{s['seconds']:.1f}" if "seconds" in s and s["status"] != "skipped" else "-",
                      f"{mp:.2f}" if mp else "-", note[:100]))
    counts = {k: sum(s["status"] == k for s in result.sites) for k in ("mapped", "skipped", "failed")}
    total_km2 = sum(s.get("changed_km2", 0.0) for s in result.sites)
    lines.append(("total", ", ".join(f"{v} {k}" for k, v in counts.items()),
                  str(sum(s.get("n_pairs", 0) for s in result.sites)),
                  str(sum(s.get("n_polygons", 0) for s in result.sites)), f"{total_km2:.4f}",
                  f"{result.seconds:.1f}", "", ""))
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(row: tuple) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)])
