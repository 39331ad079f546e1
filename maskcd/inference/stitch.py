"""Blend window probabilities into a probability COG and a mask COG with Dask (pipeline stage 4).

Output chunks (block-aligned, default 1024²) are computed in parallel by Dask's threaded scheduler: each chunk reads
only the windows that overlap it from the on-disk :class:`~maskcd.inference.store.TileStore`, accumulates ``Σ w·p``
and ``Σ w`` in float32 and thresholds once. Chunks are written into tiled GeoTIFFs (the COG driver cannot be written
window by window), which are then copied to COGs with overviews. Memory is bounded by the chunk size, not the scene.

* probability: uint8, ``round(p·254)`` in 0–254, 255 = nodata, average overviews;
* mask: uint8 {0, 1}, 255 = nodata, a colour table (1 = red), nearest overviews.

Pixels that are invalid in either date, outside the AOI, or covered by no processed window are nodata in both.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.features import geometry_mask

from maskcd.contract import NODATA, prob_to_uint8
from maskcd.inference.blend import window_weights
from maskcd.inference.store import TileStore
from maskcd.inference.tiling import TileWindow
from maskcd.io.align import Grid

MASK_COLORMAP = {0: (0, 0, 0, 0), 1: (230, 25, 25, 255), NODATA: (0, 0, 0, 0)}
BLOCK = 512


@dataclass
class StitchStats:
    """Pixel counts over the whole grid after stitching.

    ``overlap_pixels`` are valid pixels predicted by two or more windows; ``overlap_agree`` those where every window's
    own thresholded prediction agrees (FTW-style *overlap consistency*, a cheap seam QA number).
    """

    valid_pixels: int = 0
    changed_pixels: int = 0
    overlap_pixels: int = 0
    overlap_agree: int = 0

    @property
    def overlap_consistency(self) -> float | None:
        return self.overlap_agree / self.overlap_pixels if self.overlap_pixels else None


def _gtiff_profile(grid: Grid) -> dict:
    return dict(
        driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="uint8", crs=grid.crs,
        transform=grid.transform, nodata=NODATA, tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
        compress="deflate", predictor=2, bigtiff="IF_SAFER",
    )


class _Writer:
    """Dask ``store`` target: band 0 of a block goes to the probability GeoTIFF, band 1 to the mask GeoTIFF; band 2
    (0 = single coverage, 1 = overlap agreeing, 2 = overlap disagreeing) is only counted."""

    def __init__(self, prob_ds, mask_ds, stats: StitchStats):
        self.prob_ds, self.mask_ds, self.stats = prob_ds, mask_ds, stats
        self.lock = threading.Lock()
        self.shape = (3, prob_ds.height, prob_ds.width)
        self.dtype = np.uint8
        self.ndim = 3

    def __setitem__(self, key, value: np.ndarray) -> None:
        _, rows, cols = key
        window = rasterio.windows.Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        with self.lock:
            self.prob_ds.write(value[0], 1, window=window)
            self.mask_ds.write(value[1], 1, window=window)
            self.stats.valid_pixels += int(np.count_nonzero(value[1] != NODATA))
            self.stats.changed_pixels += int(np.count_nonzero(value[1] == 1))
            self.stats.overlap_pixels += int(np.count_nonzero(value[2] >= 1))
            self.stats.overlap_agree += int(np.count_nonzero(value[2] == 1))


def blend_chunk(
    store: TileStore,
    windows: list[TileWindow],
    starts: np.ndarray,
    r0: int, r1: int, c0: int, c1: int,
    *,
    overlap: int,
    blend: str,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Blended float32 probability of grid rows ``[r0, r1)`` × cols ``[c0, c1)`` (NaN where nothing valid covers) and
    the overlap QA code per pixel (0 single coverage, 1 windows agree after thresholding, 2 they disagree)."""
    acc = np.zeros((r1 - r0, c1 - c0), np.float32)
    wsum = np.zeros_like(acc)
    n_cov = np.zeros(acc.shape, np.uint8)
    n_pos = np.zeros(acc.shape, np.uint8)
    rr, cc, hh, ww = starts
    hit = np.nonzero((rr < r1) & (rr + hh > r0) & (cc < c1) & (cc + ww > c0))[0]
    for i in hit:
        w = windows[i]
        ys, ye = max(r0, w.row), min(r1, w.row + w.height)
        xs, xe = max(c0, w.col), min(c1, w.col + w.width)
        p = store.read(i)[ys - w.row : ye - w.row, xs - w.col : xe - w.col].astype(np.float32)
        wt = window_weights(w.height, w.width, overlap, w.top, w.bottom, w.left, w.right, blend)
        wt = wt[ys - w.row : ye - w.row, xs - w.col : xe - w.col]
        ok = ~np.isnan(p)
        sl = (slice(ys - r0, ye - r0), slice(xs - c0, xe - c0))
        acc[sl] += np.where(ok, wt * np.nan_to_num(p), 0.0)
        wsum[sl] += np.where(ok, wt, 0.0)
        n_cov[sl] += ok
        n_pos[sl] += ok & (np.nan_to_num(p) > threshold)
    out = np.full_like(acc, np.nan)
    np.divide(acc, wsum, out=out, where=wsum > 0)
    qa = np.where(n_cov >= 2, np.where((n_pos == 0) | (n_pos == n_cov), 1, 2), 0).astype(np.uint8)
    return out, qa


def stitch_to_cogs(
    store: TileStore,
    windows: list[TileWindow],
    grid: Grid,
    prob_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    *,
    overlap: int,
    threshold: float,
    blend: str = "cosine",
    aoi=None,
    chunk: int = 1024,
    n_workers: int = 2,
) -> StitchStats:
    """Blend the stored window probabilities and write the probability and mask COGs (see the module docstring)."""
    prob_path, mask_path = Path(prob_path), Path(mask_path)
    chunk = max(BLOCK, (int(chunk) // BLOCK) * BLOCK)
    starts = np.array([[w.row, w.col, w.height, w.width] for w in windows], dtype=np.int64).T.reshape(4, -1)
    transform = grid.transform

    def block(dummy, block_info=None):
        (r0, r1), (c0, c1) = block_info[0]["array-location"]
        p, qa = blend_chunk(store, windows, starts, r0, r1, c0, c1, overlap=overlap, blend=blend, threshold=threshold)
        nod = np.isnan(p)
        if aoi is not None:
            nod |= geometry_mask([aoi], out_shape=p.shape, transform=transform @ Affine.translation(c0, r0))
        prob = prob_to_uint8(p)
        mask = (np.nan_to_num(p) > threshold).astype(np.uint8)
        prob[nod] = NODATA
        mask[nod] = NODATA
        qa[nod] = 0
        return np.stack([prob, mask, qa])

    dummy = da.zeros((grid.height, grid.width), chunks=chunk, dtype=np.uint8)
    out = da.map_blocks(block, dummy, new_axis=0, chunks=((3,), *dummy.chunks), dtype=np.uint8)
    stats = StitchStats()
    tmp_prob = prob_path.with_name(prob_path.name + ".tiles.tif")
    tmp_mask = mask_path.with_name(mask_path.name + ".tiles.tif")
    try:
        with rasterio.open(tmp_prob, "w", **_gtiff_profile(grid)) as pds, rasterio.open(tmp_mask, "w", **_gtiff_profile(grid)) as mds:
            mds.write_colormap(1, MASK_COLORMAP)
            with dask.config.set(scheduler="threads", num_workers=max(1, n_workers)):
                da.store(out, _Writer(pds, mds, stats), lock=False)
        write_cog(tmp_prob, prob_path, resampling="average", n_threads=n_workers)
        write_cog(tmp_mask, mask_path, resampling="nearest", n_threads=n_workers)
    finally:
        for p in (tmp_prob, tmp_mask):
            p.unlink(missing_ok=True)
    return stats


def overview_count(width: int, height: int, min_size: int = 128) -> int:
    """Overview levels (factor 2 each) until the smaller side reaches ``min_size``; at least one."""
    n = int(math.floor(math.log2(max(1, max(width, height)) / min_size))) + 1 if max(width, height) > min_size else 1
    return max(1, n)


def write_cog(src_path: str | os.PathLike, dst_path: str | os.PathLike, *, resampling: str, n_threads: int = 2) -> None:
    """Copy a tiled GeoTIFF to a Cloud-Optimized GeoTIFF (512 blocks, DEFLATE, overviews with ``resampling``)."""
    with rasterio.open(src_path) as src:
        n = overview_count(src.width, src.height)
    rasterio.shutil.copy(
        str(src_path), str(dst_path), driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=str(BLOCK),
        BIGTIFF="IF_SAFER", OVERVIEW_RESAMPLING=resampling.upper(), OVERVIEW_COUNT=str(n),
        NUM_THREADS=str(max(1, n_threads)),
    )
