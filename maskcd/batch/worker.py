"""What runs on a Dask worker: map one site (all its pairs) into its folder, atomically.

The model is loaded once per worker process and kept in a module-level cache keyed by ``(model id, device)``; every
site task on that worker reuses it. Presets (random weights) are built under a fixed seed so every worker holds the
same weights.

Atomicity: a site is computed in ``OUTDIR/<site_id>/.tmp-<id>/``; only when every output exists are they renamed into
the site folder one by one, and ``manifest.json`` is written last. A previous manifest is removed before work
starts, so a site killed half-way never looks finished; stale ``.tmp-*`` folders of killed runs are removed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import threading
import time
import traceback
import uuid
import zlib
from collections import Counter
from pathlib import Path

from maskcd.batch.catalog import SiteJob
from maskcd.batch.manifest import MANIFEST_NAME, file_fingerprint, write_manifest
from maskcd.batch.report import PairReport, SiteReport, coreg_summary
from maskcd.batch.summary import REPORT_NAME, write_report
from maskcd.contract import NODATA
from maskcd.errors import InputError

logger = logging.getLogger(__name__)

QUICKLOOK_NAME = "quicklook.png"
GPKG_NAME = "changes.gpkg"
TMP_PREFIX = ".tmp-"
PRESET_SEED = 0

_MODELS: dict[tuple[str, str], object] = {}
_MODEL_LOCK = threading.Lock()
#: How many times each ``(model, device)`` was loaded in this process (read by tests through ``Client.run``).
LOAD_COUNTS: Counter = Counter()


def loaded_models() -> dict[str, int]:
    """``{"model@device": times loaded}`` for this process."""
    return {f"{m}@{d}": n for (m, d), n in LOAD_COUNTS.items()}


def worker_model(model: str, device: str):
    """The model for ``(model, device)``, loaded on first use in this process and cached.

    Returns:
        ``(model, seconds spent loading, True when it came from the cache)``.
    """
    key = (model, device)
    with _MODEL_LOCK:
        if key in _MODELS:
            return _MODELS[key], 0.0, True
        import torch

        from maskcd.models import list_models, load_model

        t0 = time.perf_counter()
        if model in list_models():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(PRESET_SEED)
                net = load_model(model)
        else:
            net = load_model(model)
        net = net.eval().to(device)
        _MODELS[key] = net
        LOAD_COUNTS[key] += 1
        return net, time.perf_counter() - t0, False


def worker_device(device: str) -> str:
    """Resolve ``--device`` on this worker: ``auto`` → ``cuda`` or ``cpu``; bare ``cuda`` with several GPUs → one
    GPU per worker chosen from the Dask worker's name (LocalCluster names workers 0, 1, ...)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.device_count() > 1:
        try:
            from distributed import get_worker

            name = get_worker().name
            index = int(name) if str(name).isdigit() else zlib.crc32(str(name).encode())  # stable across processes
        except (ValueError, ImportError):
            index = 0
        device = f"cuda:{index % torch.cuda.device_count()}"
    return device


def _write_aoi(job: SiteJob, folder: Path) -> str | None:
    if not job.aoi_wkt:
        return None
    import geopandas as gpd
    import shapely

    path = folder / "aoi.gpkg"
    gpd.GeoDataFrame({"site_id": [job.site_id]}, geometry=[shapely.from_wkt(job.aoi_wkt)], crs=job.aoi_crs).to_file(
        path, layer="aoi", engine="pyogrio"
    )
    return str(path)


def _footprint(mask_path: Path, max_size: int = 256) -> tuple[str | None, str | None]:
    """Valid-data outline of a mask COG (values ≠ 255) from a reduced read, as WKT in the COG's CRS."""
    import numpy as np
    import rasterio
    import shapely
    from rasterio.enums import Resampling
    from rasterio.features import shapes

    with rasterio.open(mask_path) as src:
        scale = max(1.0, max(src.width, src.height) / max_size)
        width, height = max(1, round(src.width / scale)), max(1, round(src.height / scale))
        data = src.read(1, out_shape=(height, width), resampling=Resampling.nearest)
        transform = src.transform @ src.transform.scale(src.width / width, src.height / height)
        crs = src.crs.to_string() if src.crs else None
    valid = (data != NODATA).astype(np.uint8)
    geoms = [shapely.geometry.shape(g) for g, v in shapes(valid, mask=valid.astype(bool), transform=transform) if v]
    if not geoms:
        return None, crs
    return shapely.union_all(geoms).wkt, crs


def _combine_gpkgs(pair_gpkgs: list[tuple[Path, str]], out: Path) -> None:
    """One GeoPackage holding every pair's layer, each with its style row and ``run_metadata`` rows, in time order.

    The first pair's file (written by ``map_scene``) is the base; later pairs are added with
    :func:`maskcd.vectorization.add_layer_to_gpkg`, so ``gpkg_contents`` lists the layers in time order.
    """
    import pyogrio

    from maskcd.vectorization import add_layer_to_gpkg, read_run_metadata

    first, _ = pair_gpkgs[0]
    shutil.copyfile(first, out)
    for src, layer in pair_gpkgs[1:]:
        gdf = pyogrio.read_dataframe(src, layer=layer)
        add_layer_to_gpkg(out, gdf, layer=layer, metadata=read_run_metadata(src, layer=layer),
                          geometry_type="MultiPolygon")


def process_site(job: SiteJob, outdir: str, options: dict, key: dict, map_fn=None) -> SiteReport:
    """Map every pair of one site into ``OUTDIR/<site_id>/``; never raises.

    Args:
        job: The site.
        outdir: Output root.
        options: ``MapOptions`` as a dict (the batch-wide settings).
        key: The manifest key computed by the client (see :func:`maskcd.batch.manifest.site_key`).
        map_fn: The scene mapper, :func:`maskcd.inference.map_scene` by default (same signature).

    Returns:
        The :class:`~maskcd.batch.report.SiteReport` (``report.json``) with ``status`` ``"mapped"``, or a failed one
        with ``error`` and ``traceback``.
    """
    t_start = time.perf_counter()
    site_dir = Path(outdir) / job.site_id
    tmp = site_dir / f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        if job.error:
            raise InputError(job.error)
        site_dir.mkdir(parents=True, exist_ok=True)
        (site_dir / MANIFEST_NAME).unlink(missing_ok=True)
        for stale in site_dir.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        return _run_site(job, site_dir, tmp, options, key, map_fn, t_start)
    except Exception as err:  # failure isolation: any error of one site is reported, the run goes on
        shutil.rmtree(tmp, ignore_errors=True)
        message = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
        return SiteReport.failure(job.site_id, message, traceback=traceback.format_exc(),
                                  seconds=round(time.perf_counter() - t_start, 3))


def _run_site(job, site_dir, tmp, options, key, map_fn, t_start) -> SiteReport:
    from maskcd.inference.options import MapOptions

    if map_fn is None:
        from maskcd.inference import map_scene as map_fn
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    inputs = [file_fingerprint(p) for p in job.images]
    timings["hash_inputs"] = time.perf_counter() - t0

    device = worker_device(options.get("device", "auto"))
    model, timings["model_load"], model_cached = worker_model(options["model"], device)
    aoi_path = _write_aoi(job, tmp)
    loader_workers = options.get("workers", 0)
    if loader_workers and multiprocessing.current_process().daemon:
        loader_workers = 0  # daemonic Dask worker processes cannot start DataLoader processes

    pairs_report, pair_gpkgs, outputs = [], [], []
    for pair in job.pairs:
        opts = MapOptions(**{
            **options, "device": device, "aoi": aoi_path, "layer": pair.layer, "overwrite": True,
            "workers": loader_workers, "prob_out": str(tmp / pair.prob_name), "mask_out": str(tmp / pair.mask_name),
        })
        attributes = {"site_id": job.site_id}
        if pair.before_date:
            attributes["before_date"] = pair.before_date
        if pair.after_date:
            attributes["after_date"] = pair.after_date
        gpkg = tmp / f"pair{pair.stem}.gpkg"
        t0 = time.perf_counter()
        result = map_fn(pair.before, pair.after, gpkg, opts, model=model, attributes=attributes, progress=False)
        seconds = time.perf_counter() - t0
        pair_gpkgs.append((Path(result.gpkg), pair.layer))
        outputs += [pair.prob_name, pair.mask_name]
        pairs_report.append(PairReport(
            layer=pair.layer, before=pair.before, after=pair.after, before_date=pair.before_date,
            after_date=pair.after_date, n_polygons=int(result.n_polygons),
            changed_km2=float(result.changed_km2), valid_km2=float(result.valid_km2),
            n_pixels=int(result.n_pixels), shift_px=[float(v) for v in result.shift_px],
            # without its stage time (in "timings"), so that reruns give identical reports
            coregistration={k: v for k, v in (getattr(result, "coregistration", None) or {}).items()
                            if k != "seconds"},
            run_id=result.run_id, seconds=round(seconds, 3),
            timings={k: round(float(v), 4) for k, v in (result.timings or {}).items()},
        ))
        timings[f"map:{pair.layer}"] = seconds

    t0 = time.perf_counter()
    _combine_gpkgs(pair_gpkgs, tmp / GPKG_NAME)
    outputs.append(GPKG_NAME)
    timings["combine"] = time.perf_counter() - t0

    from maskcd.batch.quicklook import write_quicklook

    t0 = time.perf_counter()
    rows = [{"before": p.before, "after": p.after, "mask": str(tmp / p.mask_name),
             "title": f"{job.site_id} {p.before_date or 'before'} -> {p.after_date or 'after'}"} for p in job.pairs]
    write_quicklook(rows, tmp / QUICKLOOK_NAME, bands=options.get("bands"))
    outputs.append(QUICKLOOK_NAME)
    timings["quicklook"] = time.perf_counter() - t0

    footprint, footprint_crs = _footprint(tmp / job.pairs[-1].mask_name)
    shifts = [max(abs(v) for v in p.shift_px) for p in pairs_report]
    timings["total"] = time.perf_counter() - t_start
    report = SiteReport(
        site_id=job.site_id,
        status="mapped",
        n_pairs=len(job.pairs),
        layers=[p.layer for p in job.pairs],
        first_date=job.pairs[0].before_date,
        last_date=job.pairs[-1].after_date,
        n_polygons=sum(p.n_polygons for p in pairs_report),
        changed_km2=sum(p.changed_km2 for p in pairs_report),
        valid_km2=max((p.valid_km2 for p in pairs_report), default=0.0),
        n_pixels=sum(p.n_pixels for p in pairs_report),
        max_shift_px=max(shifts, default=0.0),
        **coreg_summary(pairs_report),
        pairs=pairs_report,
        footprint_wkt=footprint,
        footprint_crs=footprint_crs,
        model=key["model"],
        device=device,
        model_cached=model_cached,
        worker_pid=os.getpid(),
        timings={k: round(v, 4) for k, v in timings.items()},
        seconds=round(timings["total"], 3),
    )
    write_report(report, tmp / REPORT_NAME)
    outputs.append(REPORT_NAME)

    for name in outputs:
        os.replace(tmp / name, site_dir / name)
    for old in [*site_dir.glob("change_prob*.tif"), *site_dir.glob("change_mask*.tif")]:
        if old.name not in outputs:  # rasters of pairs a previous run of this site had and this one has not
            old.unlink()
    shutil.rmtree(tmp, ignore_errors=True)
    write_manifest(site_dir, key, inputs, outputs)
    return report
