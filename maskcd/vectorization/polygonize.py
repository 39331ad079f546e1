"""Stage 5 of ``maskcd-map``: change mask COG -> change polygons with zonal statistics, in parallel chunks.

Algorithm (chunk-size independent by construction; see ``tests/vectorization``):

1. The mask is cut into block-aligned square chunks. Each chunk, in a Dask task that opens the files itself, labels its
   change pixels (value 1; nodata and every other value is background) into 4-connected components
   (:func:`scipy.ndimage.label`), computes per-label pixel counts and probability sums/maxima from the probability COG,
   and polygonises the components with :func:`rasterio.features.shapes` (``connectivity=4``) in one call: their
   bounding-box crops are shelf-packed into a small canvas (change is sparse, and ``shapes`` costs per pixel scanned
   and per call), then shifted back. Vertices are in global pixel space ``(col, -row)``, exact integers.
2. A component is *interior* when it touches no internal chunk edge; it is final as is. The others are *edge pieces*;
   the task returns its four border label strips. The driver unions pieces whose pixels are 4-adjacent across an
   internal edge (union-find over the strips: pixel-exact, no geometric predicate, diagonal contact never merges) and
   dissolves each group with :func:`shapely.union_all`.
3. Min area works like a sieve of change blobs: a 4-connected blob whose pixel area is below ``min_area_m2`` is
   dropped, decided on the *merged* pixel count, so a blob cut by chunk borders is judged whole. (GDAL's sieve would
   also fill background holes below the threshold; holes are kept here: filling holes up to a size is a
   setting of its own.) Interior blobs that are too small are dropped inside the task already.
4. Geometries are canonicalised (collinear vertices left by the dissolve dropped, normalised), sorted north to south
   then west to east by their first pixel in raster order (unique per blob, independent of chunking) and numbered
   ``change_id = 1..N``; then coverage-simplified together (no overlaps between neighbours that touch at a corner),
   made valid, promoted to MultiPolygon and mapped to the raster CRS through the geotransform.

Memory: one chunk per worker (``chunk_size²`` × about 14 bytes) plus the polygons; the raster is never loaded whole
(16k × 16k mask, 4096-px chunks, 2 workers: peak RSS 0.4-0.6 GB, ``benchmarks/vectorize.py``).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from rasterio.windows import Window

from maskcd.errors import InputError
from maskcd.io.crs import utm_crs_at
from maskcd.io.open import open_raster

log = logging.getLogger(__name__)

PROB_SCALE = 254.0
"""The probability COG stores ``round(p * 254)`` as uint8; 255 is nodata."""

RESULT_COLUMNS = ["change_id", "area_m2", "perimeter_m", "n_pixels", "prob_mean", "prob_max"]
SCHEDULERS = ("threads", "processes", "distributed", "synchronous")
DEFAULT_SCHEDULER = "threads"


@dataclass(frozen=True)
class _Grid:
    height: int
    width: int
    transform: Affine
    crs: rasterio.crs.CRS
    mask_nodata: float | None
    prob_nodata: float | None
    block: tuple[int, int] | None


@dataclass
class ChunkResult:
    """What one chunk task returns (small: WKB polygons, per-label statistics and the four border strips).

    Attributes:
        index: ``(chunk_row, chunk_col)``.
        labels: Component label per polygon (int64, local to the chunk).
        wkb: Polygon per label in global pixel space ``(col, -row)`` (WKB bytes, object array).
        n_pixels, n_prob, prob_sum, prob_max: Per-label change pixel count, pixels with valid probability, their sum and
            maximum (raw uint8 units; max is -1 where none is valid).
        first: ``(row, col)`` of each label's first pixel in raster order, global pixel indices (int64, shape (n, 2)).
        edge: Whether the label touches an internal chunk edge.
        strips: Label strips ``{"top", "bottom", "left", "right"}`` along internal edges (absent on the raster border).
    """

    index: tuple[int, int]
    labels: np.ndarray
    wkb: np.ndarray
    n_pixels: np.ndarray
    n_prob: np.ndarray
    prob_sum: np.ndarray
    prob_max: np.ndarray
    first: np.ndarray
    edge: np.ndarray
    strips: dict


def _read_grid(mask_path: Path, prob_path: Path | None) -> _Grid:
    with open_raster(mask_path, "change mask") as src:
        block = src.block_shapes[0] if src.profile.get("tiled") else None
        grid = dict(height=src.height, width=src.width, transform=src.transform, crs=src.crs, mask_nodata=src.nodata,
                    block=block)
    prob_nodata = None
    if prob_path is not None:
        with open_raster(prob_path, "probability") as psrc:
            if (psrc.height, psrc.width) != (grid["height"], grid["width"]) or not psrc.transform.almost_equals(
                grid["transform"]
            ) or psrc.crs != grid["crs"]:
                raise InputError(
                    f"{prob_path}: probability grid {psrc.width}x{psrc.height} {psrc.crs} differs from the mask "
                    f"{mask_path} ({grid['width']}x{grid['height']} {grid['crs']}); write both on the reference grid"
                )
            if psrc.dtypes[0] != "uint8":
                raise InputError(
                    f"{prob_path}: probability raster must be uint8 0-254 (255 nodata), not {psrc.dtypes[0]}"
                )
            prob_nodata = 255 if psrc.nodata is None else psrc.nodata
    return _Grid(prob_nodata=prob_nodata, **grid)


def _chunk_shape(grid: _Grid, chunk_size: int) -> int:
    """Chunk side: ``chunk_size`` rounded to a multiple of the file's tile size (tiled files only)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, not {chunk_size}")
    if grid.block is None:
        return chunk_size
    step = math.lcm(*grid.block)
    return max(step, int(round(chunk_size / step)) * step)


def _windows(grid: _Grid, size: int) -> list[tuple[tuple[int, int], Window]]:
    out = []
    for i, r in enumerate(range(0, grid.height, size)):
        for j, c in enumerate(range(0, grid.width, size)):
            out.append(((i, j), Window(c, r, min(size, grid.width - c), min(size, grid.height - r))))
    return out


def polygonize_chunk(
    mask_path: str, prob_path: str | None, index: tuple[int, int], window: Window, shape: tuple[int, int],
    min_pixels: int,
) -> ChunkResult:
    """Label, measure and polygonise the change pixels of one chunk (runs in a Dask task).

    Args:
        mask_path: Mask raster (band 1; value 1 = change, everything else including nodata = no change).
        prob_path: Probability raster on the same grid (uint8 0-254, 255 nodata) or None.
        index: ``(chunk_row, chunk_col)``.
        window: The chunk's pixel window.
        shape: ``(height, width)`` of the whole raster, to tell internal chunk edges from the raster border.
        min_pixels: Interior components smaller than this are dropped here (edge pieces are always kept).

    Returns:
        The chunk's polygons and statistics, see :class:`ChunkResult`.
    """
    from scipy import ndimage

    r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
    with rasterio.open(mask_path) as src:
        data = src.read(1, window=window)
        nodata = src.nodata
    change = data == 1
    if nodata is not None and nodata == 1:  # a mask whose nodata is 1 has no change value
        change[:] = False
    labels, n = ndimage.label(change)  # default structure: 4-connectivity
    strips = {}
    if r0 > 0:
        strips["top"] = labels[0].copy()
    if r0 + h < shape[0]:
        strips["bottom"] = labels[-1].copy()
    if c0 > 0:
        strips["left"] = labels[:, 0].copy()
    if c0 + w < shape[1]:
        strips["right"] = labels[:, -1].copy()
    empty = ChunkResult(index, np.zeros(0, np.int64), np.zeros(0, object), *(np.zeros(0, np.int64) for _ in range(3)),
                        np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros(0, bool), strips)
    if n == 0:
        return empty
    flat = np.flatnonzero(change)  # row-major: a label's first occurrence is its first pixel in raster order
    rows, cols = np.divmod(flat, w)
    lab = labels.ravel()[flat]
    n_pix = np.bincount(lab, minlength=n + 1)
    n_prob = np.zeros(n + 1, np.int64)
    p_sum = np.zeros(n + 1, np.int64)
    p_max = np.full(n + 1, -1, np.int64)
    if prob_path is not None:
        with rasterio.open(prob_path) as psrc:
            pv = psrc.read(1, window=window).ravel()[flat]
            pnod = 255 if psrc.nodata is None else psrc.nodata
        ok = pv != pnod
        lab_ok, pv_ok = lab[ok], pv[ok].astype(np.int64)
        n_prob = np.bincount(lab_ok, minlength=n + 1)
        p_sum = np.bincount(lab_ok, weights=pv_ok, minlength=n + 1).round().astype(np.int64)
        np.maximum.at(p_max, lab_ok, pv_ok)
    edge = np.zeros(n + 1, bool)
    for s in strips.values():
        edge[s] = True
    edge[0] = False
    keep = np.ones(n + 1, bool)
    keep[0] = False
    keep[(~edge) & (n_pix < min_pixels)] = False
    if not keep.any():
        return empty
    ids = np.nonzero(keep)[0]
    order = np.arange(len(lab))
    first_i = np.full(n + 1, len(lab))
    np.minimum.at(first_i, lab, order)
    rmax = np.zeros(n + 1, np.int64)
    cmin = np.full(n + 1, w, np.int64)
    cmax = np.zeros(n + 1, np.int64)
    np.maximum.at(rmax, lab, rows)
    np.minimum.at(cmin, lab, cols)
    np.maximum.at(cmax, lab, cols)
    rmin = rows[first_i[ids]]
    first = np.stack([r0 + rmin, c0 + cols[first_i[ids]]], axis=1).astype(np.int64)
    polys = _trace(labels, ids, rmin, rmax[ids] + 1, cmin[ids], cmax[ids] + 1, r0, c0)
    return ChunkResult(
        index=index, labels=ids.astype(np.int64), wkb=shapely.to_wkb(np.asarray(polys, dtype=object)),
        n_pixels=n_pix[ids], n_prob=n_prob[ids], prob_sum=p_sum[ids], prob_max=p_max[ids], first=first,
        edge=edge[ids], strips=strips,
    )


def _polygon(geojson: dict):
    """GeoJSON polygon -> shapely Polygon (about 2.5x faster than ``shapely.geometry.shape``)."""
    rings = [shapely.linearrings(np.asarray(r, dtype=np.float64)) for r in geojson["coordinates"]]
    return shapely.polygons(rings[0], holes=rings[1:] or None)


# Pack the components' bounding boxes into one canvas when their area is below this fraction of the chunk's.
PACK_MAX_FRACTION = 0.6


def _trace(labels, ids, rmin, rmax, cmin, cmax, r0: int, c0: int) -> list:
    """Polygon of each label in ``ids`` in global pixel space ``(col, -row)``, with one ``shapes()`` call.

    :func:`rasterio.features.shapes` costs about 30 ns per pixel scanned plus about 0.5 ms per call. Change is usually
    sparse, so the components' bounding-box crops (``labels == k``, written as value ``i + 1``) are shelf-packed into a
    small canvas, polygonised in a single call, and each polygon is shifted back by its crop's offset (exact integer
    arithmetic). When the boxes cover most of the chunk, the chunk's label image is polygonised directly. Both paths
    give identical polygons (tested).
    """
    from rasterio import features

    hs, ws = rmax - rmin, cmax - cmin
    box_px = int(np.sum(hs * ws))
    out: dict[int, list] = {}
    with warnings.catch_warnings(), rasterio.Env():
        # rasterio wraps the mask array in a dataset without a transform and says so
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        if box_px < PACK_MAX_FRACTION * labels.size:
            width = int(max(ws.max(), math.isqrt(2 * box_px) + 1))
            order = np.lexsort((-ws, -hs))  # tallest first: little waste per shelf
            py, px = np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64)
            x = y = shelf = 0
            for i in order.tolist():
                if x + ws[i] > width:
                    y, x, shelf = y + shelf, 0, 0
                py[i], px[i] = y, x
                x, shelf = x + int(ws[i]), max(shelf, int(hs[i]))
            canvas = np.zeros((y + shelf, width), np.int32)
            for i, (k, a, b, c, d) in enumerate(zip(ids.tolist(), rmin.tolist(), rmax.tolist(), cmin.tolist(),
                                                    cmax.tolist())):
                view = canvas[py[i]:py[i] + b - a, px[i]:px[i] + d - c]
                view[labels[a:b, c:d] == k] = i + 1
            # canvas pixel space (col, -row); shifted back below
            t = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
            polys, which = [], []
            for g, value in features.shapes(canvas, mask=canvas > 0, connectivity=4, transform=t):
                polys.append(_polygon(g))
                which.append(int(value) - 1)
            polys, which = np.asarray(polys, dtype=object), np.asarray(which, np.int64)
            coords, index = shapely.get_coordinates(polys, return_index=True)
            w = which[index]
            coords[:, 0] += (c0 + cmin - px)[w]
            coords[:, 1] -= (r0 + rmin - py)[w]
            polys = shapely.set_coordinates(polys.copy(), coords)
            for i, g in zip(which.tolist(), polys):
                out.setdefault(int(ids[i]), []).append(g)
        else:
            keep = np.zeros(int(labels.max()) + 1, bool)
            keep[ids] = True
            t = Affine(1.0, 0.0, float(c0), 0.0, -1.0, -float(r0))
            for g, value in features.shapes(labels, mask=keep[labels], connectivity=4, transform=t):
                out.setdefault(int(value), []).append(_polygon(g))
    return [g[0] if len(g) == 1 else shapely.union_all(g) for g in (out[k] for k in ids.tolist())]


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo


def merge_chunks(results: list[ChunkResult]) -> pd.DataFrame:
    """Merge edge pieces across internal chunk edges; one row per 4-connected change blob of the whole raster.

    Returns:
        DataFrame with ``geometry`` (shapely Polygon in global pixel coordinates), ``n_pixels``, ``n_prob``,
        ``prob_sum``, ``prob_max``, ``first_row``, ``first_col``, in no particular order.
    """
    rows = []
    by_index = {r.index: r for r in results}
    # interior components are final
    piece_keys: list[tuple[tuple[int, int], int]] = []
    piece_pos: dict[tuple[tuple[int, int], int], tuple[ChunkResult, int]] = {}
    for r in results:
        for i in range(len(r.labels)):
            if r.edge[i]:
                key = (r.index, int(r.labels[i]))
                piece_pos[key] = (r, i)
                piece_keys.append(key)
            else:
                rows.append((shapely.from_wkb(r.wkb[i]), r.n_pixels[i], r.n_prob[i], r.prob_sum[i], r.prob_max[i],
                             r.first[i, 0], r.first[i, 1]))
    if piece_keys:
        slot = {k: n for n, k in enumerate(piece_keys)}
        uf = _UnionFind(len(piece_keys))
        for (ci, cj), r in by_index.items():
            for other_idx, mine, theirs in (((ci + 1, cj), "bottom", "top"), ((ci, cj + 1), "right", "left")):
                o = by_index.get(other_idx)
                if o is None or mine not in r.strips:
                    continue
                a, b = r.strips[mine], o.strips[theirs]
                both = (a > 0) & (b > 0)
                if not both.any():
                    continue
                pairs = np.unique(np.stack([a[both], b[both]], axis=1), axis=0)
                for la, lb in pairs:
                    ka, kb = ((ci, cj), int(la)), (other_idx, int(lb))
                    if ka in slot and kb in slot:  # both kept (edge pieces are never pre-filtered)
                        uf.union(slot[ka], slot[kb])
        groups: dict[int, list[int]] = {}
        for n in range(len(piece_keys)):
            groups.setdefault(uf.find(n), []).append(n)
        for members in groups.values():
            parts = [piece_pos[piece_keys[m]] for m in members]
            geoms = [shapely.from_wkb(r.wkb[i]) for r, i in parts]
            # the dissolve leaves collinear vertices where chunk edges crossed the outline: drop them (DP at 0)
            geom = geoms[0] if len(geoms) == 1 else shapely.simplify(shapely.union_all(geoms), 0.0,
                                                                      preserve_topology=False)
            first = min((int(r.first[i, 0]), int(r.first[i, 1])) for r, i in parts)
            rows.append((geom, sum(int(r.n_pixels[i]) for r, i in parts), sum(int(r.n_prob[i]) for r, i in parts),
                         sum(int(r.prob_sum[i]) for r, i in parts), max(int(r.prob_max[i]) for r, i in parts), *first))
    cols = ["geometry", "n_pixels", "n_prob", "prob_sum", "prob_max", "first_row", "first_col"]
    df = pd.DataFrame(rows, columns=cols)
    for c in cols[1:]:
        df[c] = df[c].astype(np.int64)
    return df


def _compute(tasks, scheduler: str, n_workers: int):
    import dask

    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, not {scheduler!r}")
    if len(tasks) <= 1 or n_workers <= 1:
        scheduler = "synchronous"
    if scheduler == "distributed":
        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          memory_limit=0) as cluster, Client(cluster) as client:
            return list(client.compute(tasks, sync=True))
    config = {}
    if scheduler == "processes" and sys.platform == "linux":
        config["multiprocessing.context"] = "fork"  # workers inherit the imported modules: no 1-2 s re-import each
    with dask.config.set(config):
        return list(dask.compute(*tasks, scheduler=scheduler, num_workers=n_workers))


def _metric_info(grid: _Grid) -> tuple[float, float | None]:
    """(pixel side in metres, CRS unit in metres or None for a geographic CRS)."""
    t = grid.transform
    if grid.crs.is_geographic:
        from pyproj import Transformer

        cx, cy = t @ (grid.width / 2, grid.height / 2)
        tr = Transformer.from_crs(grid.crs, utm_crs_at(cx, cy), always_xy=True)
        x0, y0 = tr.transform(cx, cy)
        x1, y1 = tr.transform(*(t @ (grid.width / 2 + 1, grid.height / 2)))
        x2, y2 = tr.transform(*(t @ (grid.width / 2, grid.height / 2 + 1)))
        return math.sqrt(math.hypot(x1 - x0, y1 - y0) * math.hypot(x2 - x0, y2 - y0)), None
    try:
        unit = float(grid.crs.linear_units_factor[1])
    except rasterio.errors.CRSError:
        unit = 1.0
    return math.sqrt(abs(t.a * t.e - t.b * t.d)) * unit, unit


def _to_multipolygons(geoms: np.ndarray) -> np.ndarray:
    """make_valid, keep the polygonal parts, one MultiPolygon per input (None where nothing polygonal is left)."""
    out = np.full(len(geoms), None, dtype=object)
    if not len(geoms):
        return out
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms = geoms.copy()
        geoms[bad] = shapely.make_valid(geoms[bad])
    parts, idx = shapely.get_parts(geoms, return_index=True)  # GeometryCollection/MultiPolygon -> members
    parts2, idx2 = shapely.get_parts(parts, return_index=True)  # a MultiPolygon inside a collection -> polygons
    idx = idx[idx2]
    poly = (shapely.get_type_id(parts2) == 3) & ~shapely.is_empty(parts2)
    parts2, idx = parts2[poly], idx[poly]
    if len(idx):
        order = np.argsort(idx, kind="stable")
        uniq = np.unique(idx)
        out[uniq] = shapely.multipolygons(parts2[order], indices=np.searchsorted(uniq, idx[order]))
    return out


def _affine(geoms: np.ndarray, t: Affine) -> np.ndarray:
    """Pixel-space ``(col, -row)`` coordinates -> map coordinates through the geotransform ``t``."""
    if not len(geoms):
        return geoms
    return shapely.transform(
        geoms,
        lambda xy: np.column_stack([t.a * xy[:, 0] - t.b * xy[:, 1] + t.c, t.d * xy[:, 0] - t.e * xy[:, 1] + t.f]),
    )


def vectorize_changes(
    mask_path: str | os.PathLike,
    prob_path: str | os.PathLike | None,
    *,
    min_area_m2: float,
    simplify_m: float | None,
    attributes: dict,
    chunk_size: int = 4096,
    n_workers: int = 2,
    scheduler: str = DEFAULT_SCHEDULER,
):
    """Polygonise a change mask into a GeoDataFrame of change polygons with zonal statistics.

    Args:
        mask_path: Mask raster, band 1: 1 = change, 0 = no change, nodata (255) = no data (never change).
        prob_path: Probability raster on the same grid (uint8 0-254 = p × 254, 255 nodata) for ``prob_mean`` and
            ``prob_max``, or None (both NaN).
        min_area_m2: Change blobs (4-connected) whose pixel area is below this are removed, judged on the whole blob
            after merging across chunks; area in m² (a geographic CRS is measured in its local UTM zone).
        simplify_m: Coverage simplification tolerance in metres (about the square root of the largest triangle area
            removed, Visvalingam-Whyatt; neighbours stay non-overlapping). ``None`` or 0 keeps the pixel outline.
        attributes: Constant columns appended to every row (e.g. ``before_date``, ``after_date``, ``site_id``,
            ``model_name``, ``model_sha``, ``run_id``), in the given order.
        chunk_size: Chunk side in pixels (rounded to a multiple of the file's tile size when it is tiled).
        n_workers: Parallel Dask workers.
        scheduler: ``"threads"`` (default), ``"processes"`` (forked on Linux), ``"distributed"`` (a LocalCluster of
            ``n_workers`` single-thread processes) or ``"synchronous"``. ``benchmarks/vectorize.py`` on the shared
            2-core machine, 16k x 16k mask, 2 workers: threads 10.8 s, processes 17.1 s, distributed 32.5 s (cluster
            start-up and transfers); in an earlier run processes edged out threads (10.2 vs 10.7 s) with less memory.
            All give identical output.

    Returns:
        GeoDataFrame in the raster CRS with columns ``change_id, area_m2, perimeter_m, n_pixels, prob_mean, prob_max``,
        then every key of ``attributes``, then ``geometry`` (MultiPolygon only, valid). ``change_id`` is 1..N,
        north to south then west to east by each blob's first pixel; ``area_m2``/``perimeter_m`` measure the written
        (simplified) geometry; ``n_pixels`` counts the blob's mask pixels; prob columns are in [0, 1].

    Raises:
        InputError: A raster is missing or unreadable, has no CRS, or the two grids differ.
    """
    import dask
    import geopandas as gpd

    mask_path = Path(mask_path)
    prob_path = None if prob_path is None else Path(prob_path)
    grid = _read_grid(mask_path, prob_path)
    px_m, unit_m = _metric_info(grid)
    px_area_m2 = px_m * px_m
    min_pixels = 0
    if min_area_m2 and min_area_m2 > 0 and unit_m is not None:
        min_pixels = int(math.ceil(min_area_m2 / px_area_m2 - 1e-9))
    size = _chunk_shape(grid, chunk_size)
    task = dask.delayed(polygonize_chunk, pure=True)
    tasks = [task(str(mask_path), None if prob_path is None else str(prob_path), idx, win, (grid.height, grid.width),
                  min_pixels) for idx, win in _windows(grid, size)]
    with warnings.catch_warnings():  # once here for the threads (the filter list is process-wide), again per task
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        t_start = time.perf_counter()
        results = _compute(tasks, scheduler, n_workers)
    t_chunks = time.perf_counter()
    df = merge_chunks(results)
    t_merge = time.perf_counter()
    if min_pixels:
        df = df[df["n_pixels"] >= min_pixels]
    # canonical vertex order, then an order that does not depend on the chunking
    geoms = shapely.normalize(df["geometry"].to_numpy())
    df = df.assign(geometry=geoms).sort_values(["first_row", "first_col"], kind="stable").reset_index(drop=True)
    geoms = df["geometry"].to_numpy()
    if unit_m is None and min_area_m2 and min_area_m2 > 0 and len(geoms):  # geographic: judge the blob in UTM
        exact = gpd.GeoSeries(_affine(geoms, grid.transform), crs=grid.crs)
        keep = (exact.to_crs(exact.estimate_utm_crs()).area >= min_area_m2).to_numpy()
        df, geoms = df[keep].reset_index(drop=True), geoms[keep]
    if simplify_m and simplify_m > 0 and len(geoms):
        geoms = shapely.coverage_simplify(geoms, simplify_m / px_m)
    geoms = _to_multipolygons(geoms)
    kept = np.asarray([g is not None for g in geoms], bool)
    if not kept.all():
        log.warning("%d polygons had no polygonal part after make_valid and were dropped", int((~kept).sum()))
        df, geoms = df[kept].reset_index(drop=True), geoms[kept]
    geoms = _affine(geoms, grid.transform)
    gs = gpd.GeoSeries(geoms, crs=grid.crs)
    if len(gs) and unit_m is None:
        metric = gs.to_crs(gs.estimate_utm_crs())
        area, perim = metric.area.to_numpy(), metric.length.to_numpy()
    else:
        area, perim = gs.area.to_numpy() * (unit_m or 1.0) ** 2, gs.length.to_numpy() * (unit_m or 1.0)
    n_prob = df["n_prob"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        prob_mean = np.where(n_prob > 0, df["prob_sum"].to_numpy() / np.maximum(n_prob, 1) / PROB_SCALE, np.nan)
        prob_max = np.where(df["prob_max"].to_numpy() >= 0, df["prob_max"].to_numpy() / PROB_SCALE, np.nan)
    data = {
        "change_id": np.arange(1, len(df) + 1, dtype=np.int64),
        "area_m2": np.asarray(area, np.float64),
        "perimeter_m": np.asarray(perim, np.float64),
        "n_pixels": df["n_pixels"].to_numpy(np.int64),
        "prob_mean": prob_mean.astype(np.float64),
        "prob_max": prob_max.astype(np.float64),
    }
    for key, value in attributes.items():
        if key in data or key == "geometry":
            raise ValueError(f"attribute {key!r} clashes with a computed column; rename it")
        data[key] = pd.Series([value] * len(df), dtype=_attribute_dtype(value))
    out = gpd.GeoDataFrame(data, geometry=gs.reset_index(drop=True), crs=grid.crs)
    t_end = time.perf_counter()
    out.attrs["timings"] = {"chunks_s": t_chunks - t_start, "merge_s": t_merge - t_chunks, "finish_s": t_end - t_merge}
    out.attrs["chunks"] = {"n": len(tasks), "size": size, "scheduler": scheduler, "n_workers": n_workers}
    log.info("vectorised %s: %d chunks of %d px, %d polygons", mask_path, len(tasks), size, len(out))
    return out


def _attribute_dtype(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int64"
    if isinstance(value, (float, np.floating)):
        return "float64"
    return "object"
