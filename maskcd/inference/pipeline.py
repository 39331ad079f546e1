"""``map_scene``: two GeoTIFFs → probability COG, mask COG and a styled GeoPackage (stages 1–6 wired together).

``map_scene`` owns the atomicity of a run: it reserves its three outputs with :func:`maskcd.io.atomic.atomic_outputs`
(hidden temporaries named after the run id), the stages write to those paths, and all three are renamed into place
only when every stage succeeded; on any error the temporaries are removed, so a failed run leaves nothing behind. A run that is killed outright (SIGKILL, OOM killer)
cannot clean up: it holds a lock file in its output folders, and the next run there removes what it left behind
(see :mod:`maskcd.inference.cleanup`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import rasterio
import torch

from maskcd.errors import DiskFullError, InputError, MaskCDError
from maskcd.inference.cleanup import (
    RunLock,
    check_free_space,
    enospc_path,
    estimate_run_bytes,
    format_bytes,
    is_enospc,
    shared_run_id,
    sweep_dead_runs,
)
from maskcd.inference.dataset import WindowDataset
from maskcd.inference.options import MapOptions, MapResult
from maskcd.inference.predict import make_accelerator, predict_to_store
from maskcd.inference.stitch import StitchStats, stitch_to_cogs
from maskcd.inference.store import TileStore
from maskcd.inference.tiling import grid_windows, resolve_overlap
from maskcd.io.align import AlignedPair, align_pair
from maskcd.io.atomic import atomic_outputs, check_target, new_tag
from maskcd.io.coreg import Coregistration
from maskcd.io.coreg import estimate as estimate_coregistration
from maskcd.io.radiometry import compute_radiometry
from maskcd.io.shift import ShiftEstimate

logger = logging.getLogger(__name__)

TIE_POINTS_LAYER = "coreg_tie_points"
GDAL_CACHEMAX_MB = int(os.environ.get("MASKCD_GDAL_CACHEMAX_MB", "128"))


def output_paths(out_gpkg: str | os.PathLike, options: MapOptions) -> tuple[Path, Path, Path]:
    """The GeoPackage and the two COG paths (default: ``<stem>_change_prob.tif`` / ``_change_mask.tif`` beside it)."""
    out = Path(out_gpkg)
    prob = Path(options.prob_out) if options.prob_out else out.with_name(out.stem + "_change_prob.tif")
    mask = Path(options.mask_out) if options.mask_out else out.with_name(out.stem + "_change_mask.tif")
    return out, prob, mask


def _check_outputs(paths: list[Path], overwrite: bool) -> None:
    if len({p.resolve() for p in paths}) != len(paths):
        raise InputError(f"output paths collide ({', '.join(map(str, paths))}): pass distinct -o/--prob-out/--mask-out")
    for p in paths:
        if not p.parent.exists():
            raise InputError(f"output folder {p.parent} does not exist: create it or pass another path")
        check_target(p, overwrite)


_HASHES: dict[int, str] = {}


def model_hash(model) -> str:
    """First 16 hex digits of the model's weights hash (cached per model object).

    For a model loaded from a folder, a Hub id or an alias, that is the hash of its resolved reference
    (:attr:`maskcd.models.reference.ModelRef.sha256`, the one the batch manifest records); for a preset (random
    weights) or a model built by the caller, the hash of its parameters.
    """
    key = id(model)
    if key in _HASHES:
        return _HASHES[key]
    ref = getattr(model, "maskcd_ref", None)
    if ref is not None and ref.kind != "preset":
        _HASHES[key] = ref.sha256[:16]
        return _HASHES[key]
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    _HASHES[key] = h.hexdigest()[:16]
    return _HASHES[key]


def _versions() -> dict:
    import accelerate
    import torch
    import torchgeo
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torchgeo": torchgeo.__version__,
        "accelerate": accelerate.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
    }


def _file_info(path: str) -> dict:
    p = Path(path)
    with rasterio.open(p) as ds:
        return {
            "path": str(p.resolve()), "bytes": p.stat().st_size, "width": ds.width, "height": ds.height,
            "count": ds.count, "dtype": ds.dtypes[0], "crs": ds.crs.to_string() if ds.crs else None,
            "res": list(ds.res),
        }


class _Progress:
    """tqdm bar in megapixels of the scene (rate shown as MP/s)."""

    def __init__(self, windows, n_pixels: int, enabled: bool):
        self.bar = None
        area = sum(w.height * w.width for w in windows) or 1
        self.scale = n_pixels / area / 1e6
        self.windows = windows
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=n_pixels / 1e6, unit="MP", desc="maskcd-map", file=sys.stderr,
                            dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} MP [{elapsed}<{remaining}, {rate_noinv_fmt}]")

    def __call__(self, indices: list[int]) -> None:
        if self.bar is not None:
            self.bar.update(sum(self.windows[i].height * self.windows[i].width for i in indices) * self.scale)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_MALLOC_SET = False


def bound_malloc(threshold: int = 1 << 20) -> None:
    """Serve allocations ≥ ``threshold`` bytes with mmap so that freed window buffers go back to the OS (glibc only).

    glibc raises its mmap threshold after each freed large block, after which window-sized buffers (tens of MB,
    allocated and freed once per batch) come from the heap and stay resident: RSS then grew with the scene size.
    A fixed threshold keeps memory flat (measured in ``benchmarks/map_pipeline.py``). No-op where glibc is absent.
    """
    global _MALLOC_SET
    if _MALLOC_SET or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, int(threshold))  # M_MMAP_THRESHOLD (also disables the dynamic adjustment)
        _MALLOC_SET = True
    except (OSError, AttributeError):
        pass


@dataclass
class RasterRun:
    """What stages 1–4 produced (see :func:`map_rasters`)."""

    pair: AlignedPair
    tile: int
    overlap: int
    windows: list
    shift: ShiftEstimate
    stats: StitchStats | None
    timings: dict
    is_main: bool = True
    windows_done: int = 0
    coreg: Coregistration | None = None


def _shift_record(co: Coregistration) -> ShiftEstimate:
    """The legacy ``shift_estimate`` record (median peak height of the windows) from a co-registration."""
    peaks = sorted(tp.z for tp in co.tie_points)
    return ShiftEstimate(co.dy, co.dx, co.n_tie_points, float(peaks[len(peaks) // 2]) if peaks else 0.0)


def tie_points_frame(co: Coregistration, grid):
    """The tie points as a point GeoDataFrame in the grid CRS (the ``coreg_tie_points`` layer of ``--coregister
    local``; the global mode's windows are summarised in ``run_metadata`` only)."""
    import geopandas as gpd
    import shapely

    tps = list(co.tie_points)
    xs, ys = [], []
    for tp in tps:
        x, y = grid.transform * (tp.col + 0.5, tp.row + 0.5)
        xs.append(x)
        ys.append(y)
    return gpd.GeoDataFrame(
        {"dx_px": [tp.dx for tp in tps], "dy_px": [tp.dy for tp in tps],
         "reliability": [tp.reliability for tp in tps], "used": [bool(tp.used) for tp in tps],
         "peak_z": [tp.z for tp in tps], "mode": [co.mode] * len(tps)},
        geometry=shapely.points(xs, ys) if tps else [], crs=grid.crs,
    )


def map_rasters(
    before: str | os.PathLike,
    after: str | os.PathLike,
    prob_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    options: MapOptions,
    *,
    model,
    progress: bool = True,
    atomic: bool = True,
) -> RasterRun:
    """Stages 1–4: align, tile, infer and stitch into a probability COG and a mask COG.

    Under ``accelerate launch`` every rank infers its own windows and only the main process stitches (``stats`` is
    ``None`` on the others). The tile store is a hidden folder beside ``prob_path``, removed at the end and on errors.

    Args:
        atomic: Write the COGs through :func:`maskcd.io.atomic.atomic_outputs` (temporary names, renamed at the end,
            replacing existing files; on any error nothing is left behind). ``False`` writes ``prob_path`` and
            ``mask_path`` directly: for a caller that owns atomicity itself (:func:`map_scene` passes its
            temporaries) and removes them on errors.
    """
    options.validate()
    if atomic:
        tag = shared_run_id(new_tag(), options.device)
        with atomic_outputs([prob_path, mask_path], overwrite=True, tag=tag, owner=_is_main_rank()) as staged:
            return map_rasters(before, after, staged[0], staged[1], options, model=model, progress=progress,
                               atomic=False)
    timings: dict[str, float] = {}
    bound_malloc()
    prob_path, mask_path = Path(prob_path), Path(mask_path)
    spec = model.inference_spec
    accelerator = make_accelerator(options.device)
    is_main = accelerator.is_main_process
    tmp_dir = prob_path.with_name(f".{prob_path.name}.maskcd-tiles")
    try:
        # 1. read and align
        t = time.perf_counter()
        pair = align_pair(before, after, spec, bands=options.bands, aoi=options.aoi, model_name=options.model,
                          gsd=options.gsd)
        grid = pair.grid
        tile = int(options.tile or spec.tile_size)
        overlap = resolve_overlap(tile, options.overlap)
        # per-date radiometric scaling into the model's value range (one decimated read of the overlap)
        pair = replace(pair, radiometry=compute_radiometry(pair, options.scale,
                                                           match_histogram=options.match_histogram))
        timings["align_s"] = time.perf_counter() - t

        # 1b. co-registration: estimated on the uncorrected reads, applied inside the after image's warp
        t = time.perf_counter()
        coreg = estimate_coregistration(pair, options.coregister)
        pair = replace(pair, coreg=coreg)
        shift = _shift_record(coreg)
        timings["coregister_s"] = time.perf_counter() - t

        # 2. tile (windows with < 5 % valid data are skipped when read)
        windows = grid_windows(grid.height, grid.width, tile, tile - overlap)
        logger.info("%d windows of %d² px (overlap %d px) over %d×%d px", len(windows), tile, overlap,
                    grid.width, grid.height)

        # 3. infer into the on-disk tile store
        t = time.perf_counter()
        if is_main:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            tmp_dir.mkdir()
        accelerator.wait_for_everyone()
        store = TileStore(tmp_dir / "tiles.f16", len(windows), windows[0].height, windows[0].width).create()
        bar = _Progress(windows, grid.n_pixels, progress and is_main)
        try:
            done = predict_to_store(model, WindowDataset(pair, windows, tile), store, accelerator,
                             batch_size=options.batch_size, workers=options.workers, on_batch=bar)
        finally:
            bar.close()
        total_done = int(accelerator.reduce(torch.tensor([done], device=accelerator.device), "sum").item())
        timings["infer_s"] = time.perf_counter() - t
        if total_done == 0:
            raise InputError(
                f"before {before} and after {after} have no valid pixels in common (nodata, masked or NaN "
                f"everywhere in their overlap{' inside the AOI' if options.aoi else ''}): check the files' nodata "
                f"values or pass images of the same place"
            )
        if not is_main:
            return RasterRun(pair, tile, overlap, windows, shift, None, timings, is_main=False, windows_done=done,
                             coreg=coreg)

        # 4. blend and stitch
        t = time.perf_counter()
        stats = stitch_to_cogs(store, windows, grid, prob_path, mask_path, overlap=overlap,
                               threshold=options.threshold, blend=options.blend, aoi=pair.aoi_geometry(),
                               n_workers=max(1, options.workers))
        store.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if stats.overlap_consistency is not None:
            logger.info("overlap consistency %.4f over %d px covered by several windows", stats.overlap_consistency,
                        stats.overlap_pixels)
        timings["stitch_s"] = time.perf_counter() - t
        return RasterRun(pair, tile, overlap, windows, shift, stats, timings, windows_done=done, coreg=coreg)
    except BaseException:
        if is_main:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _is_main_rank() -> bool:
    """Whether this process is the main one of an ``accelerate launch``/``torchrun`` run (always, without one)."""
    return int(os.environ.get("RANK", "0")) == 0


def _space_needs(before, options: MapOptions, model, prob_out: Path, mask_out: Path) -> tuple[dict, str]:
    """Folder → bytes this run needs at its peak (estimated from the size of ``before``, whose grid is the reference),
    and what for. Empty when ``before`` cannot be opened (the alignment stage then reports that with its own line)."""
    try:
        with rasterio.open(before) as ds:
            height, width = ds.height, ds.width
        tile = int(options.tile or model.inference_spec.tile_size)
        overlap = resolve_overlap(tile, options.overlap)
    except Exception:  # reported by align_pair / map_rasters with their one-line errors
        return {}, ""
    est = estimate_run_bytes(height, width, tile, overlap)
    needs = {prob_out.parent: est["tiles"] + est["prob"]}
    needs[mask_out.parent] = needs.get(mask_out.parent, 0) + est["mask"]
    return needs, f"tile store and COGs of a {width}×{height} scene"


@contextlib.contextmanager
def _run_guard(outputs: list[Path], run_id: str, needs: dict, what: str):
    """On the main process: remove what dead runs left in the output folders, check the free space, then hold this
    run's lock there."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    folders = sorted({p.parent.resolve() for p in outputs})
    for folder in folders:
        sweep_dead_runs(folder)
    check_free_space(needs, what)
    with RunLock(folders, run_id):
        yield


def _disk_full(err: BaseException, folder: Path, needs: dict) -> DiskFullError:
    path = enospc_path(err) or str(folder)
    need = sum(needs.values())
    about = f"; this run needs about {format_bytes(need)} in total" if need else ""
    return DiskFullError(
        f"no space left on the device while writing {path}{about}: free some space or write the outputs to another "
        f"disk (partial files were removed)"
    )


def map_scene(
    before: str | os.PathLike,
    after: str | os.PathLike,
    out_gpkg: str | os.PathLike,
    options: MapOptions,
    *,
    model=None,
    attributes: dict | None = None,
    progress: bool = True,
    vectorize: Callable | None = None,
) -> MapResult:
    """Map the change between ``before`` and ``after`` into ``out_gpkg`` plus probability and mask COGs.

    Args:
        before: Earlier image (its grid is the reference).
        after: Later image (warped onto the before grid).
        out_gpkg: GeoPackage to write (layer ``options.layer``).
        options: Run settings.
        model: An already loaded model to reuse; else ``load_model(options.model)``.
        attributes: Extra per-polygon attributes (``site_id``, ``before_date``...); dates read from the files' tags are
            used where these do not give them.
        progress: Show a tqdm bar (MP/s).
        vectorize: Replacement for :func:`maskcd.vectorization.iter_changes` (same signature, returning GeoDataFrame
            batches or one GeoDataFrame; benchmarks).

    Returns:
        A :class:`MapResult`; under ``accelerate launch`` only the main process writes outputs and fills it.

    Raises:
        InputError: Bad input (one line naming the file and the fix); its subclass ConfigError for a bad option value.
        OutputExistsError: An output exists and ``options.overwrite`` is false.
        DiskFullError: Too little free space for the estimated need, or ENOSPC while writing (nothing is left).
    """
    options.validate()
    t_start = time.perf_counter()
    run_id = shared_run_id(new_tag(), options.device)
    out, prob_out, mask_out = output_paths(out_gpkg, options)
    _check_outputs([out, prob_out, mask_out], options.overwrite)

    t = time.perf_counter()
    if model is None:
        from maskcd.models import load_model

        model = load_model(options.model)
    model.eval()
    load_s = time.perf_counter() - t

    needs, what = _space_needs(before, options, model, prob_out, mask_out)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHEMAX_MB), _run_guard([out, prob_out, mask_out], run_id, needs, what):
        try:
            # every output goes to its temporary; the three are renamed together when the block succeeds
            with atomic_outputs([out, prob_out, mask_out], overwrite=options.overwrite, tag=run_id,
                                owner=_is_main_rank()) as (tmp_gpkg, tmp_prob, tmp_mask):
                result = _map_staged(before, after, out, prob_out, mask_out, tmp_gpkg, tmp_prob, tmp_mask, options,
                                     model=model, load_s=load_s, run_id=run_id, attributes=attributes,
                                     progress=progress, vectorize=vectorize, t_start=t_start)
                t = time.perf_counter()
        except BaseException as err:
            if isinstance(err, Exception) and not isinstance(err, MaskCDError) and is_enospc(err):
                raise _disk_full(err, prob_out.parent, needs) from err
            raise
    if "write_s" in result.timings:  # the main process wrote the outputs
        result.timings["write_s"] += time.perf_counter() - t  # the renames
        result.timings["total_s"] = time.perf_counter() - t_start
    return result


def _map_staged(before, after, out: Path, prob_out: Path, mask_out: Path, tmp_gpkg: Path, tmp_prob: Path,
                tmp_mask: Path, options: MapOptions, *, model, load_s: float, run_id: str, attributes: dict | None,
                progress: bool, vectorize: Callable | None, t_start: float) -> MapResult:
    """Stages 1–6 of :func:`map_scene`, writing the outputs to their temporaries ``tmp_*`` (final paths: ``out``,
    ``prob_out``, ``mask_out``, recorded in the metadata and the result)."""
    rr = map_rasters(before, after, tmp_prob, tmp_mask, options, model=model, progress=progress,
                     atomic=False)
    timings = {"load_model_s": load_s, **rr.timings}
    if not rr.is_main:
        return MapResult(out, prob_out, mask_out, run_id=run_id, timings=timings)
    pair, grid, stats, shift = rr.pair, rr.pair.grid, rr.stats, rr.shift

    # 5. vectorise
    t = time.perf_counter()
    attrs = {
        "before_date": pair.before_date,
        "after_date": pair.after_date,
        "model_name": options.model,
        "model_sha": model_hash(model),
        "run_id": run_id,
    }
    attrs.update({k: v for k, v in (attributes or {}).items() if v is not None})
    attrs = {k: v for k, v in attrs.items() if v is not None}
    if vectorize is None:
        from maskcd.vectorization import iter_changes as vectorize
    from maskcd.vectorization import ChangesGpkgWriter

    simplify = options.simplify if options.simplify is not None else grid.res[0]
    polygons = vectorize(tmp_mask, tmp_prob, min_area_m2=float(options.min_area), simplify_m=simplify,
                         attributes=attrs, n_workers=max(1, options.workers))
    # streamed: finished polygons are appended batch by batch, memory does not grow with their number
    writer = ChangesGpkgWriter(tmp_gpkg, layer=options.layer, overwrite=True)
    for batch in [polygons] if hasattr(polygons, "geometry") else polygons:
        writer.append(batch)
    timings["vectorize_s"] = time.perf_counter() - t - writer.write_s

    # 6. write (the rest: style, metadata; map_scene renames the outputs into place)
    t = time.perf_counter() - writer.write_s
    changed_km2 = writer.summary.area_m2 / 1e6
    metadata = {
        "run_id": run_id,
        "arguments": {**options.to_dict(), "tile": rr.tile, "overlap_px": rr.overlap},
        "inputs": {"before": _file_info(str(before)), "after": _file_info(str(after))},
        "bands": list(pair.bands),
        "dates": {"before": attrs.get("before_date"), "after": attrs.get("after_date")},
        "grid": {"crs": grid.crs, "transform": list(grid.transform)[:6], "width": grid.width,
                 "height": grid.height, "res": list(grid.res), "input_res": pair.input_res,
                 "gsd_option": options.gsd, "resampling": pair.resampling,
                 "model_gsd": model.inference_spec.gsd},
        "model": {"name": options.model, "sha256_16": attrs["model_sha"],
                  "inference_spec": model.inference_spec.to_dict()},
        "shift_estimate": shift.to_dict(),
        "coregistration": rr.coreg.to_metadata() if rr.coreg else None,
        "radiometry": pair.radiometry.to_metadata() if pair.radiometry else None,
        "n_windows": len(rr.windows),
        "valid_km2": stats.valid_pixels * grid.pixel_area_m2 / 1e6,
        "changed_raster_km2": stats.changed_pixels * grid.pixel_area_m2 / 1e6,
        "overlap_consistency": stats.overlap_consistency,
        "timings_s": {**timings, "wall_before_write_s": time.perf_counter() - t_start},
        "mp_per_s": grid.n_pixels / 1e6 / max(timings["infer_s"], 1e-9),
        "notes": list(pair.notes),
        "versions": _versions(),
        "outputs": {"prob": str(prob_out), "mask": str(mask_out)},
    }
    writer.close(metadata)
    if rr.coreg is not None and rr.coreg.mode == "local" and rr.coreg.tie_points:
        from maskcd.vectorization import add_layer_to_gpkg

        add_layer_to_gpkg(tmp_gpkg, tie_points_frame(rr.coreg, grid), layer=TIE_POINTS_LAYER,
                          style=TIE_POINTS_LAYER, geometry_type="Point", overwrite_layer=True,
                          metadata={"coregistration": rr.coreg.to_metadata()}, atomic=False)
    timings["write_s"] = time.perf_counter() - t
    return MapResult(
        gpkg=out,
        prob_path=prob_out,
        mask_path=mask_out,
        n_pixels=grid.n_pixels,
        valid_km2=stats.valid_pixels * grid.pixel_area_m2 / 1e6,
        n_polygons=writer.summary.n_features,
        changed_km2=changed_km2,
        shift_px=(shift.dy, shift.dx),
        coregistration=rr.coreg.to_metadata() if rr.coreg else {},
        timings=timings,
        run_id=run_id,
    )
