"""Stage 5 of ``maskcd-map``: change mask COG -> change polygons with zonal statistics, in parallel chunks.

Algorithm (chunk-size independent by construction; see ``tests/vectorization``):

1. The mask is cut into block-aligned square chunks. Each chunk, in a Dask task that opens the files itself, labels its
   change pixels (value 1; nodata and every other value is background) into 4-connected components
   (:func:`~maskcd.vectorization.outline.label_components`: run by run where change is sparse, else
   :func:`scipy.ndimage.label`), computes per-label pixel counts and probability sums/maxima from the probability COG,
   and traces the outlines of the components it keeps along their pixel edges, all at once with array operations
   (:func:`maskcd.vectorization.outline.trace_outlines`: the polygons :func:`rasterio.features.shapes` gives with
   ``connectivity=4``, at a cost that follows the change pixels, not the chunk's area, and without the GIL for most
   of it). Vertices are in global pixel space ``(col, -row)``, exact integers.
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
   ``change_id = 1..N``; coverage-simplified (no overlaps between neighbours that touch at a corner; the same result
   as simplifying all of them together), made valid, promoted to MultiPolygon and mapped to the raster CRS through
   the geotransform.

Streaming: chunks are computed a few chunk rows at a time, top to bottom (:func:`iter_changes`), one step ahead of the
driver while the steps are light: the next step's tasks run while the driver merges, numbers and writes the current
one (:class:`_StepsAhead`); the driver's cluster simplification runs on a small thread pool. Blobs complete as
soon as no piece of theirs touches the bottom of the newest chunk row (:class:`BlobMerger`); they are simplified per
cluster of intersecting convex hulls once nothing still to come can touch the cluster, and yielded in ``change_id``
order (:class:`_Releaser`), in batches of :data:`BATCH_ROWS`. Memory: one chunk per worker (``chunk_size²`` × about
11 bytes), the results of the step being computed, one chunk row of polygons (the row being merged and released) and
one output batch, whatever the number of polygons (``benchmarks/map_pipeline.py`` c2;
``benchmarks/results/issue15.md``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from rasterio.windows import Window

from maskcd.contract import NODATA, PROB_SCALE
from maskcd.errors import InputError
from maskcd.io.crs import utm_crs_at
from maskcd.io.open import open_raster
from maskcd.vectorization.outline import label_components, trace_outlines

log = logging.getLogger(__name__)


RESULT_COLUMNS = ["change_id", "area_m2", "perimeter_m", "n_pixels", "prob_mean", "prob_max"]
SCHEDULERS = ("threads", "processes", "distributed", "synchronous")
DEFAULT_SCHEDULER = "threads"
DEFAULT_CHUNK = 2048
"""Chunk side: a chunk task holds about 11 bytes per pixel at its peak (45 MB at 2048², 180 MB at 4096²) per worker."""


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
            prob_nodata = NODATA if psrc.nodata is None else psrc.nodata
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
    r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
    with rasterio.open(mask_path) as src:
        change = src.read(1, window=window) == 1
        nodata = src.nodata
    if nodata is not None and nodata == 1:  # a mask whose nodata is 1 has no change value
        change[:] = False
    # change pixels, row-major (a label's first occurrence is its first pixel); int32 (chunks are far below 2**31 px)
    # and every array freed as soon as it is used: two tasks run at once in one process
    flat = np.flatnonzero(change).astype(np.int32)
    lab, n = label_components(change, flat)
    strips = {}  # component numbers along the chunk's internal edges (0: no change)
    if r0 > 0:
        k = int(np.searchsorted(flat, w))
        strips["top"] = _strip(w, flat[:k], lab[:k])
    if r0 + h < shape[0]:
        k = int(np.searchsorted(flat, (h - 1) * w))
        strips["bottom"] = _strip(w, flat[k:] - (h - 1) * w, lab[k:])
    if c0 > 0 or c0 + w < shape[1]:
        col = flat % w
        if c0 > 0:
            at = col == 0
            strips["left"] = _strip(h, flat[at] // w, lab[at])
        if c0 + w < shape[1]:
            at = col == w - 1
            strips["right"] = _strip(h, flat[at] // w, lab[at])
        del col, at
    empty = ChunkResult(index, np.zeros(0, np.int64), np.zeros(0, object), *(np.zeros(0, np.int64) for _ in range(3)),
                        np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros(0, bool), strips)
    if n == 0:
        return empty
    n_pix = np.bincount(lab, minlength=n + 1)
    n_prob = np.zeros(n + 1, np.int64)
    p_sum = np.zeros(n + 1, np.int64)
    p_max = np.full(n + 1, -1, np.int64)
    if prob_path is not None:
        with rasterio.open(prob_path) as psrc:
            pv = psrc.read(1, window=window).ravel()[flat]
            pnod = NODATA if psrc.nodata is None else psrc.nodata
        ok = pv != pnod
        lab_ok, pv_ok = lab[ok], pv[ok].astype(np.int64)
        del pv, ok
        n_prob = np.bincount(lab_ok, minlength=n + 1)
        p_sum = np.bincount(lab_ok, weights=pv_ok, minlength=n + 1).round().astype(np.int64)
        np.maximum.at(p_max, lab_ok, pv_ok)
        del lab_ok, pv_ok
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
    first_i = _first_occurrence(lab, n)[ids - 1]
    first = np.stack(np.divmod(flat[first_i].astype(np.int64), w), axis=1) + np.array([r0, c0], np.int64)
    if len(ids) < n:  # small interior components are not traced
        sel = keep[lab]
        flat, lab = flat[sel], lab[sel]
        del sel
    polys, traced = trace_outlines(change, flat, lab, r0, c0)
    del change, flat, lab
    if not np.array_equal(traced, ids):  # cannot happen: every kept component has pixels
        raise RuntimeError(f"chunk {index}: traced components differ from the kept ones")
    return ChunkResult(
        index=index, labels=ids.astype(np.int64), wkb=shapely.to_wkb(polys),
        n_pixels=n_pix[ids], n_prob=n_prob[ids], prob_sum=p_sum[ids], prob_max=p_max[ids], first=first,
        edge=edge[ids], strips=strips,
    )


def _strip(length: int, at: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    strip = np.zeros(length, np.int32)
    strip[at] = numbers
    return strip


def _first_occurrence(lab: np.ndarray, n: int) -> np.ndarray:
    """Index in ``lab`` of the first occurrence of each label ``1..n`` (every label occurs).

    Components are numbered in the order in which a raster scan meets them (:func:`label_components`), so label ``k``
    first occurs where the running maximum steps up to ``k``; checked, with a general (slower) fallback.
    """
    step = np.empty(len(lab), bool)
    step[0] = True
    np.greater(lab[1:], np.maximum.accumulate(lab)[:-1], out=step[1:])
    pos = np.flatnonzero(step)
    if len(pos) == n and np.array_equal(lab[pos], np.arange(1, n + 1)):
        return pos
    first = np.full(n + 1, len(lab), np.int64)
    np.minimum.at(first, lab, np.arange(len(lab)))
    return first[1:]


@dataclass
class _Piece:
    """An edge piece waiting for the chunks around it (pixel-space WKB and its statistics)."""

    wkb: bytes
    n_pixels: int
    n_prob: int
    prob_sum: int
    prob_max: int
    first: tuple[int, int]
    open_below: bool  # touches the bottom edge of the newest chunk row: the row below may continue it


Blob = tuple  # (geometry, n_pixels, n_prob, prob_sum, prob_max, first_row, first_col): one whole 4-connected blob


class BlobMerger:
    """Streaming merge of edge pieces across internal chunk edges, one chunk row at a time, top to bottom.

    :meth:`add_row` takes the :class:`ChunkResult` of one chunk row (any order) and returns the blobs that are now
    complete: interior components as they are, and union-find groups of edge pieces (pixels 4-adjacent across an
    internal edge, read from the border label strips: pixel-exact, diagonal contact never merges) that no longer touch
    the bottom edge of the newest row, dissolved with :func:`shapely.union_all`. Only the pieces of groups still open
    towards the unprocessed rows are kept, with the previous row's bottom strips, so memory is bounded by the pieces
    along one chunk-row border, not by the number of blobs. The result does not depend on the chunk size.
    """

    def __init__(self):
        self.pieces: dict[tuple[tuple[int, int], int], _Piece] = {}
        self.parent: dict[tuple[tuple[int, int], int], tuple[tuple[int, int], int]] = {}
        self.bottom: dict[int, tuple[tuple[int, int], np.ndarray]] = {}  # chunk column -> (index, strip) of last row

    def _find(self, a):
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def _union(self, a, b) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def _union_strips(self, ia, a: np.ndarray, ib, b: np.ndarray) -> None:
        both = (a > 0) & (b > 0)
        if not both.any():
            return
        for la, lb in np.unique(np.stack([a[both], b[both]], axis=1), axis=0):
            ka, kb = (ia, int(la)), (ib, int(lb))
            if ka in self.parent and kb in self.parent:  # both kept (edge pieces are never pre-filtered)
                self._union(ka, kb)

    def add_row(self, results: list[ChunkResult]) -> list[Blob]:
        """Merge one chunk row (the next one down); return the blobs completed by it."""
        results = sorted(results, key=lambda r: r.index[1])
        done: list[Blob] = []
        for piece in self.pieces.values():  # the row above is now merged into: its bottom contacts are resolved
            piece.open_below = False
        for r in results:
            below = set(np.unique(r.strips["bottom"]).tolist()) if "bottom" in r.strips else set()
            for i in range(len(r.labels)):
                if r.edge[i]:
                    key = (r.index, int(r.labels[i]))
                    self.pieces[key] = _Piece(r.wkb[i], int(r.n_pixels[i]), int(r.n_prob[i]), int(r.prob_sum[i]),
                                              int(r.prob_max[i]), (int(r.first[i, 0]), int(r.first[i, 1])),
                                              int(r.labels[i]) in below)
                    self.parent[key] = key
                else:  # interior components are final
                    done.append((shapely.from_wkb(r.wkb[i]), int(r.n_pixels[i]), int(r.n_prob[i]),
                                 int(r.prob_sum[i]), int(r.prob_max[i]), int(r.first[i, 0]), int(r.first[i, 1])))
        for left, right in zip(results, results[1:]):
            if "right" in left.strips and right.index[1] == left.index[1] + 1:
                self._union_strips(left.index, left.strips["right"], right.index, right.strips["left"])
        for r in results:
            above = self.bottom.get(r.index[1])
            if above is not None and "top" in r.strips and above[0][0] == r.index[0] - 1:
                self._union_strips(above[0], above[1], r.index, r.strips["top"])
        self.bottom = {r.index[1]: (r.index, r.strips["bottom"]) for r in results if "bottom" in r.strips}
        groups: dict = {}
        for key in self.pieces:
            groups.setdefault(self._find(key), []).append(key)
        for members in groups.values():
            parts = [self.pieces[k] for k in members]
            if any(p.open_below for p in parts):
                continue
            geoms = [shapely.from_wkb(p.wkb) for p in parts]
            # the dissolve leaves collinear vertices where chunk edges crossed the outline: drop them (DP at 0)
            geom = geoms[0] if len(geoms) == 1 else shapely.simplify(shapely.union_all(geoms), 0.0,
                                                                      preserve_topology=False)
            done.append((geom, sum(p.n_pixels for p in parts), sum(p.n_prob for p in parts),
                         sum(p.prob_sum for p in parts), max(p.prob_max for p in parts), *min(p.first for p in parts)))
            for k in members:
                del self.pieces[k], self.parent[k]
        return done

    def pending_first(self) -> tuple[int, int] | None:
        """The first pixel ``(row, col)`` of the earliest blob still open, None when none is."""
        return min((p.first for p in self.pieces.values()), default=None)

    def pending_top(self) -> int | None:
        """The top pixel row of the open blobs (their unseen parts can still widen them anywhere below it)."""
        first = self.pending_first()
        return None if first is None else first[0]


def merge_chunks(results: list[ChunkResult]) -> pd.DataFrame:
    """Merge all chunks at once (see :class:`BlobMerger`); one row per 4-connected change blob of the whole raster.

    Returns:
        DataFrame with ``geometry`` (shapely Polygon in global pixel coordinates), ``n_pixels``, ``n_prob``,
        ``prob_sum``, ``prob_max``, ``first_row``, ``first_col``, in no particular order.
    """
    merger, rows = BlobMerger(), []
    by_row: dict[int, list[ChunkResult]] = {}
    for r in results:
        by_row.setdefault(r.index[0], []).append(r)
    for i in sorted(by_row):
        rows.extend(merger.add_row(by_row[i]))
    return _blob_frame(rows)


BLOB_COLUMNS = ["geometry", "n_pixels", "n_prob", "prob_sum", "prob_max", "first_row", "first_col"]


def _blob_frame(rows: list[Blob]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=BLOB_COLUMNS)
    for c in BLOB_COLUMNS[1:]:
        df[c] = df[c].astype(np.int64)
    return df


class _Executor:
    """Runs chunk tasks batch by batch on one Dask scheduler, with the workers kept for the whole run.

    - ``threads``: Dask's threaded scheduler.
    - ``processes``: Dask's multiprocessing scheduler on one process pool for the run (forked on Linux: the workers
      inherit the imported modules), one task per dispatch (Dask's default of 6 tasks per dispatch left one worker
      idle while the other ran most of a chunk row). The workers die with the process that started them
      (:func:`maskcd.workers.die_with_parent`).
    - ``distributed``: a ``distributed`` LocalCluster of single-thread worker processes.
    - ``synchronous``, or one task, or one worker: inline.
    """

    def __init__(self, scheduler: str, n_workers: int, n_tasks: int):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, not {scheduler!r}")
        if n_tasks <= 1 or n_workers <= 1:
            scheduler = "synchronous"
        self.scheduler, self.n_workers = scheduler, n_workers
        self._cluster = self._client = self._pool = None

    def __enter__(self) -> _Executor:
        if self.scheduler == "distributed":
            from dask.distributed import Client, LocalCluster

            self._cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1, processes=True,
                                         dashboard_address=":0", memory_limit=0)
            self._client = Client(self._cluster)
        elif self.scheduler == "processes":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            from maskcd.workers import die_with_parent

            method = "fork" if sys.platform == "linux" else None  # fork: no 1-2 s re-import per worker
            self._pool = ProcessPoolExecutor(self.n_workers, mp_context=multiprocessing.get_context(method),
                                             initializer=die_with_parent(), initargs=(0,))
        return self

    def __exit__(self, *exc) -> None:
        if self._client is not None:
            self._client.close()
            self._cluster.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def compute(self, tasks) -> list:
        import dask

        if self._client is not None:
            return list(self._client.compute(tasks, sync=True))
        if self._pool is not None:
            return list(dask.compute(*tasks, scheduler="processes", pool=self._pool, chunksize=1))
        return list(dask.compute(*tasks, scheduler=self.scheduler, num_workers=self.n_workers))


AHEAD_MAX_POLYGONS = 8192
"""A step whose chunks hold more polygons than this is merged before the next step starts (see :class:`_StepsAhead`)."""


class _StepsAhead:
    """Computes the chunk steps in order, one step ahead of the driver while the steps are light.

    ``take(k)`` returns step ``k``'s results and, when they hold at most :data:`AHEAD_MAX_POLYGONS` polygons, starts
    step ``k + 1`` on the executor from a background thread: the next chunk row's tasks then run while the driver
    merges, simplifies, numbers and writes this one (serial work that left the workers idle for about a quarter of
    the stage on sparse change; the tasks hardly hold the GIL, ``benchmarks/vectorize_gil.py``). With dense change
    the driver's work is the longer part, so running ahead gains nothing there and would only add the next step's
    task memory to the merge's; such a step is merged first. At most two steps' results are alive. With the
    synchronous scheduler (one worker, or one task) everything runs inline.
    """

    def __init__(self, ex: _Executor, steps: list[list]):
        self.ex, self.steps, self._next = ex, steps, None
        self._pool = (ThreadPoolExecutor(1, thread_name_prefix="maskcd-chunks")
                      if ex.scheduler != "synchronous" and len(steps) > 1 else None)
        self.n_ahead = 0

    def take(self, k: int) -> list:
        if self._next is not None and self._next[0] == k:
            results = self._next[1].result()
        else:
            results = self.ex.compute(self.steps[k])
        self._next = None
        light = sum(len(r.labels) for r in results) <= AHEAD_MAX_POLYGONS
        if self._pool is not None and k + 1 < len(self.steps) and light:
            self._next = (k + 1, self._pool.submit(self.ex.compute, self.steps[k + 1]))
            self.n_ahead += 1
        return results

    def __enter__(self) -> _StepsAhead:
        return self

    def __exit__(self, *exc) -> None:
        """Waits for a step still running (a consumer that stops early, or an error): no task outlives the stage."""
        if self._next is not None:
            self._next[1].cancel()
            self._next = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


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


@dataclass
class _Setup:
    grid: _Grid
    px_m: float
    unit_m: float | None
    utm: rasterio.crs.CRS | None  # where a geographic CRS is measured
    min_pixels: int
    min_area_m2: float
    tolerance_px: float
    size: int
    attributes: dict


def _setup(mask_path: Path, prob_path: Path | None, min_area_m2, simplify_m, attributes, chunk_size) -> _Setup:
    grid = _read_grid(mask_path, prob_path)
    px_m, unit_m = _metric_info(grid)
    min_pixels = 0
    if min_area_m2 and min_area_m2 > 0 and unit_m is not None:
        min_pixels = int(math.ceil(min_area_m2 / (px_m * px_m) - 1e-9))
    utm = None
    if unit_m is None:  # one UTM zone for the whole raster (its centre), so that every batch is measured alike
        cx, cy = grid.transform @ (grid.width / 2, grid.height / 2)
        utm = utm_crs_at(cx, cy)
    for key in attributes:
        if key in RESULT_COLUMNS or key == "geometry":
            raise ValueError(f"attribute {key!r} clashes with a computed column; rename it")
    return _Setup(grid, px_m, unit_m, utm, min_pixels, float(min_area_m2 or 0.0),
                  simplify_m / px_m if simplify_m and simplify_m > 0 else 0.0, _chunk_shape(grid, chunk_size),
                  dict(attributes))


def _measure(geoms: np.ndarray, st: _Setup) -> tuple[np.ndarray, np.ndarray]:
    """(area m², perimeter m) of map-space geometries."""
    import geopandas as gpd

    gs = gpd.GeoSeries(geoms, crs=st.grid.crs)
    if st.unit_m is None:
        metric = gs.to_crs(st.utm or gs.estimate_utm_crs())
        return metric.area.to_numpy(), metric.length.to_numpy()
    return gs.area.to_numpy() * st.unit_m**2, gs.length.to_numpy() * st.unit_m


def _finish(blobs: list[Blob], st: _Setup, first_id: int):
    """Ordered, simplified blobs -> GeoDataFrame rows numbered from ``first_id``."""
    import geopandas as gpd

    df = _blob_frame(blobs)
    geoms = _to_multipolygons(df["geometry"].to_numpy())
    kept = np.asarray([g is not None for g in geoms], bool)
    if not kept.all():
        log.warning("%d polygons had no polygonal part after make_valid and were dropped", int((~kept).sum()))
        df, geoms = df[kept].reset_index(drop=True), geoms[kept]
    geoms = _affine(geoms, st.grid.transform)
    if len(geoms):
        area, perim = _measure(geoms, st)
    else:
        area = perim = np.zeros(0)
    n_prob = df["n_prob"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        prob_mean = np.where(n_prob > 0, df["prob_sum"].to_numpy() / np.maximum(n_prob, 1) / PROB_SCALE, np.nan)
        prob_max = np.where(df["prob_max"].to_numpy() >= 0, df["prob_max"].to_numpy() / PROB_SCALE, np.nan)
    data = {
        "change_id": np.arange(first_id, first_id + len(df), dtype=np.int64),
        "area_m2": np.asarray(area, np.float64),
        "perimeter_m": np.asarray(perim, np.float64),
        "n_pixels": df["n_pixels"].to_numpy(np.int64),
        "prob_mean": prob_mean.astype(np.float64),
        "prob_max": prob_max.astype(np.float64),
    }
    for key, value in st.attributes.items():
        data[key] = pd.Series([value] * len(df), dtype=_attribute_dtype(value))
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=st.grid.crs), crs=st.grid.crs)


SIMPLIFY_GROUP = 256
"""Polygons per :func:`shapely.coverage_simplify` call (whole clusters are packed into groups of about this size).

One call over a whole chunk row (about 17,000 noise blobs at 16k px width) built GEOS structures of about 130-190 MB
and cost more per polygon than calls over a few hundred."""


def _simplify_clusters(geoms: np.ndarray, comp: np.ndarray, tolerance: float, map_fn=map) -> np.ndarray:
    """Coverage-simplify ``geoms`` cluster by cluster (``comp``: cluster id per geometry), in groups of whole clusters.

    Clusters do not interact (see :class:`_Releaser`), so this equals one call over all of them; inside a group the
    geometries keep their input order. ``map_fn`` maps the groups (a thread pool's ``map`` runs them in parallel:
    GEOS runs without the GIL).
    """
    out = np.empty(len(geoms), dtype=object)
    if not len(geoms):
        return out
    uniq, inv, counts = np.unique(comp, return_inverse=True, return_counts=True)
    group = ((np.cumsum(counts) - counts) // SIMPLIFY_GROUP)[inv]  # clusters starting in one block share a group
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    sels = np.split(order, bounds)
    for sel, simple in zip(sels, map_fn(lambda sel: shapely.coverage_simplify(geoms[sel], tolerance), sels)):
        out[sel] = simple
    return out


class _Releaser:
    """Holds complete blobs until they can be simplified and numbered without knowing the rest of the raster.

    - *Simplification* is a coverage simplification (neighbours stay non-overlapping). Its topology check only looks at
      vertices inside the triangles it removes, which lie inside the polygon's convex hull, so blobs interact only
      through chains of intersecting convex hulls (*clusters*). A cluster is simplified, on its own, once no blob still
      to come can reach it: its hulls end above the first unread row and above every blob still open. The result is
      the same as simplifying everything at once (tested), and the same for any chunking.
    - *Numbering* follows each blob's first pixel in raster order; a simplified blob is released once every blob that
      could still come before it (held, open, or in unread rows) is known.
    """

    def __init__(self, st: _Setup, map_fn=map):
        self.st, self.map_fn = st, map_fn  # map_fn: how simplification groups are mapped (a thread pool's map)
        self.held: list[Blob] = []  # complete, filtered, normalised; not simplified yet
        self.ready: list[Blob] = []  # simplified, waiting for their turn

    def add(self, blobs: list[Blob]) -> None:
        st = self.st
        blobs = [b for b in blobs if b[1] >= st.min_pixels]
        if not blobs:
            return
        geoms = shapely.normalize(np.asarray([b[0] for b in blobs], dtype=object))  # canonical vertex order
        if st.unit_m is None and st.min_area_m2 > 0:  # geographic: judge the whole blob in metres
            keep = _measure(_affine(geoms, st.grid.transform), st)[0] >= st.min_area_m2
            geoms, blobs = geoms[keep], [b for b, k in zip(blobs, keep) if k]
        self.held.extend((g, *b[1:]) for g, b in zip(geoms, blobs))

    def release(self, next_row: int, pending_first: tuple[int, int] | None) -> list[Blob]:
        """Blobs that can be final now, in raster order of their first pixel.

        Args:
            next_row: First pixel row not read yet (the raster height at the end).
            pending_first: First pixel of the earliest blob still open (see :meth:`BlobMerger.pending_first`).
        """
        limit_row = next_row if pending_first is None else min(next_row, pending_first[0])
        blocking = (next_row, -1) if pending_first is None else min((next_row, -1), pending_first)
        if self.held:
            geoms = np.asarray([b[0] for b in self.held], dtype=object)
            bottom = -shapely.bounds(geoms)[:, 1]  # vertex row below the blob's last pixel row
            if self.st.tolerance_px > 0:
                from scipy.sparse import coo_matrix
                from scipy.sparse.csgraph import connected_components

                hulls = shapely.convex_hull(geoms)
                i, j = shapely.STRtree(hulls).query(hulls, predicate="intersects")
                n, comp = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(len(geoms),) * 2),
                                               directed=False)
                comp_bottom = np.full(n, -np.inf)
                np.maximum.at(comp_bottom, comp, bottom)
                closed = comp_bottom[comp] < limit_row
            else:
                closed = bottom < limit_row
            if closed.any():
                idx = np.flatnonzero(closed)
                idx = idx[np.lexsort(([self.held[k][6] for k in idx], [self.held[k][5] for k in idx]))]
                done = geoms[idx]
                if self.st.tolerance_px > 0:
                    done = _simplify_clusters(done, comp[idx], self.st.tolerance_px, self.map_fn)
                self.ready.extend((g, *self.held[k][1:]) for g, k in zip(done, idx))
                self.held = [b for b, c in zip(self.held, closed) if not c]
            if self.held:
                blocking = min(blocking, min((b[5], b[6]) for b in self.held))
        self.ready.sort(key=lambda b: (b[5], b[6]))
        n = 0
        while n < len(self.ready) and (self.ready[n][5], self.ready[n][6]) < blocking:
            n += 1
        out, self.ready = self.ready[:n], self.ready[n:]
        return out

    def n_held(self) -> int:
        return len(self.held) + len(self.ready)


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    The chunk tasks free tens of MB per chunk in worker threads; glibc keeps much of it in per-thread arenas, where it
    counts as resident and raised the peak of later chunk rows (16k² noise-like mask: +60 MB by the end).
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            import ctypes
            import ctypes.util

            try:
                _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
                pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None

BATCH_ROWS = 4096
"""Polygons per yielded batch (each one GeoPackage append, one transaction)."""


def iter_changes(
    mask_path: str | os.PathLike,
    prob_path: str | os.PathLike | None,
    *,
    min_area_m2: float,
    simplify_m: float | None,
    attributes: dict,
    chunk_size: int = DEFAULT_CHUNK,
    n_workers: int = 2,
    scheduler: str = DEFAULT_SCHEDULER,
    batch_rows: int = BATCH_ROWS,
    stats: dict | None = None,
):
    """Polygonise a change mask chunk row by chunk row, yielding GeoDataFrame batches in ``change_id`` order.

    Same arguments and columns as :func:`vectorize_changes`, which concatenates the batches. Chunks are computed a few
    rows at a time, one step ahead of the merge while the steps are light (:class:`_StepsAhead`: the workers compute
    the next rows while this generator merges the current ones and its consumer writes them), merged as they come
    (:class:`BlobMerger`) and each finished polygon is yielded once (batches of about ``batch_rows``; at least one
    batch, empty with the full schema when there is no change), so memory stays bounded by the chunks in flight and
    the polygons near the current chunk-row border, not by the number of polygons. ``stats``, when given, receives the
    timings, the chunking (with the number of steps run ahead) and the most polygons held at once.

    Raises:
        InputError: A raster is missing or unreadable, has no CRS, or the two grids differ.
    """
    import dask

    mask_path = Path(mask_path)
    prob_path = None if prob_path is None else Path(prob_path)
    st = _setup(mask_path, prob_path, min_area_m2, simplify_m, attributes, chunk_size)
    grid = st.grid
    task = dask.delayed(polygonize_chunk, pure=True)
    by_row: dict[int, list] = {}
    for idx, win in _windows(grid, st.size):
        by_row.setdefault(idx[0], []).append(
            task(str(mask_path), None if prob_path is None else str(prob_path), idx, win, (grid.height, grid.width),
                 st.min_pixels))
    n_tasks = sum(len(v) for v in by_row.values())
    n_cols = len(by_row[0])
    rows_per_step = max(1, math.ceil(2 * n_workers / n_cols))
    timings = {"chunks_s": 0.0, "merge_s": 0.0, "finish_s": 0.0}
    next_id, yielded, peak_held, buffer = 1, False, 0, []
    chunk_rows = sorted(by_row)
    steps = [chunk_rows[s0:s0 + rows_per_step] for s0 in range(0, len(chunk_rows), rows_per_step)]
    merger = BlobMerger()
    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        # once here for the threads (the filter list is process-wide), again per task
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        ex = stack.enter_context(_Executor(scheduler, n_workers, n_tasks))
        ahead = stack.enter_context(_StepsAhead(ex, [[t for i in step for t in by_row[i]] for step in steps]))
        # the driver's cluster simplification runs on a small thread pool too: GEOS releases the GIL
        helpers = (stack.enter_context(ThreadPoolExecutor(n_workers, thread_name_prefix="maskcd-simplify"))
                   if ex.scheduler != "synchronous" and st.tolerance_px > 0 else None)
        releaser = _Releaser(st, map if helpers is None else helpers.map)
        for k, step in enumerate(steps):
            t0 = time.perf_counter()
            results = ahead.take(k)  # and starts computing step k + 1 while this one is merged and written
            t1 = time.perf_counter()
            for i in step:
                releaser.add(merger.add_row([r for r in results if r.index[0] == i]))
            del results
            last = k + 1 == len(steps)
            # below the last row nothing is left to read: every blob, even one ending on the raster's edge, is final
            next_row = grid.height + 1 if last else (step[-1] + 1) * st.size
            buffer.extend(releaser.release(next_row, merger.pending_first()))
            peak_held = max(peak_held, releaser.n_held() + len(merger.pieces) + len(buffer))
            _trim_heap()
            t2 = time.perf_counter()
            timings["chunks_s"] += t1 - t0
            timings["merge_s"] += t2 - t1
            while buffer and (len(buffer) >= batch_rows or last):
                t2 = time.perf_counter()
                out = _finish(buffer[:batch_rows], st, next_id)
                del buffer[:batch_rows]
                timings["finish_s"] += time.perf_counter() - t2
                next_id += len(out)
                if len(out):
                    yielded = True
                    yield out
                del out
            _trim_heap()
    if merger.pieces or releaser.n_held():  # cannot happen: the last row closes everything
        raise RuntimeError(f"{mask_path}: {len(merger.pieces)} pieces and {releaser.n_held()} polygons left unmerged")
    if not yielded:
        yield _finish([], st, 1)
    if stats is not None:
        stats.update(timings=timings, chunks={"n": n_tasks, "size": st.size, "scheduler": scheduler,
                                              "n_workers": n_workers, "steps": len(steps),
                                              "steps_run_ahead": ahead.n_ahead}, peak_polygons_held=peak_held)
    log.info("vectorised %s: %d chunks of %d px, %d polygons", mask_path, n_tasks, st.size, next_id - 1)


def vectorize_changes(
    mask_path: str | os.PathLike,
    prob_path: str | os.PathLike | None,
    *,
    min_area_m2: float,
    simplify_m: float | None,
    attributes: dict,
    chunk_size: int = DEFAULT_CHUNK,
    n_workers: int = 2,
    scheduler: str = DEFAULT_SCHEDULER,
):
    """Polygonise a change mask into a GeoDataFrame of change polygons with zonal statistics.

    Holds every polygon in memory; :func:`iter_changes` yields the same rows in batches (``maskcd-map`` streams them
    into the GeoPackage with :func:`maskcd.vectorization.gpkg.stream_changes_gpkg`).

    Args:
        mask_path: Mask raster, band 1: 1 = change, 0 = no change, nodata (255) = no data (never change).
        prob_path: Probability raster on the same grid (uint8 0-254 = p × 254, 255 nodata) for ``prob_mean`` and
            ``prob_max``, or None (both NaN).
        min_area_m2: Change blobs (4-connected) whose pixel area is below this are removed, judged on the whole blob
            after merging across chunks; area in m² (a geographic CRS is measured in the UTM zone of its centre).
        simplify_m: Coverage simplification tolerance in metres (about the square root of the largest triangle area
            removed, Visvalingam-Whyatt; neighbours stay non-overlapping). ``None`` or 0 keeps the pixel outline.
        attributes: Constant columns appended to every row (e.g. ``before_date``, ``after_date``, ``site_id``,
            ``model_name``, ``model_sha``, ``run_id``), in the given order.
        chunk_size: Chunk side in pixels (rounded to a multiple of the file's tile size when it is tiled); memory per
            worker grows with its square, the result does not depend on it.
        n_workers: Parallel Dask workers.
        scheduler: ``"threads"`` (default), ``"processes"`` (one pool of forked workers per run on Linux),
            ``"distributed"`` (a LocalCluster of ``n_workers`` single-thread processes) or ``"synchronous"``.
            ``benchmarks/vectorize.py`` on the 2-core machine, idle, 16k x 16k mask (5,899 polygons), 2 workers,
            medians of 3 after the imports: threads 3.3 s, processes 3.2 s (a third less memory in the driver),
            distributed 5.5 s (cluster start-up and transfers); GDAL's polygonize 4.2 s. All give identical output.

    Returns:
        GeoDataFrame in the raster CRS with columns ``change_id, area_m2, perimeter_m, n_pixels, prob_mean, prob_max``,
        then every key of ``attributes``, then ``geometry`` (MultiPolygon only, valid). ``change_id`` is 1..N,
        north to south then west to east by each blob's first pixel; ``area_m2``/``perimeter_m`` measure the written
        (simplified) geometry; ``n_pixels`` counts the blob's mask pixels; prob columns are in [0, 1].

    Raises:
        InputError: A raster is missing or unreadable, has no CRS, or the two grids differ.
    """
    stats: dict = {}
    parts = list(iter_changes(mask_path, prob_path, min_area_m2=min_area_m2, simplify_m=simplify_m,
                              attributes=attributes, chunk_size=chunk_size, n_workers=n_workers, scheduler=scheduler,
                              stats=stats))
    out = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    out.attrs["timings"] = stats.get("timings", {})
    out.attrs["chunks"] = stats.get("chunks", {})
    return out


def _attribute_dtype(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int64"
    if isinstance(value, (float, np.floating)):
        return "float64"
    return "object"
