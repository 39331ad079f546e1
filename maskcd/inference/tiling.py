"""Integer pixel windows covering the reference grid (pipeline stage 2).

TorchGeo's :class:`~torchgeo.samplers.GridGeoSampler` generates the grid, run on the scene's *pixel* space (a one-row
index ``box(0, 0, W, H)`` with unit resolution), so its GeoSlices are integer pixel offsets and no float drift of
``ymin + i·stride·res`` can creep in. It is wrapped to fix what TorchGeo 0.8 leaves to the caller
(``torchgeo.samplers.utils.tile_to_chips``):

* its last chip of each row/column **overhangs** the scene (``tile_to_chips`` = ceil((L-k)/s)+1): it is shifted back
  inside (open-cd/mmseg style), so no synthetic pixels reach the model;
* scenes smaller than a tile are **skipped** by TorchGeo: the wrapper emits one window of the scene size, which the
  dataset pads (reflect) to the tile size;
* windows with less than 5 % valid data are skipped at read time (see :class:`~maskcd.inference.dataset.WindowDataset`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely
from geopandas import GeoDataFrame

from maskcd.errors import InputError


@dataclass(frozen=True)
class TileWindow:
    """A window ``[row, row+height) × [col, col+width)`` of the reference grid and which scene/AOI edges it touches."""

    row: int
    col: int
    height: int
    width: int
    top: bool = False
    bottom: bool = False
    left: bool = False
    right: bool = False


def resolve_overlap(tile: int, overlap: float) -> int:
    """Overlap in pixels from an int ≥ 1 (pixels) or a fraction < 1 of the tile, in ``[0, tile/2]``.

    Raises:
        InputError: a negative overlap, or one of more than half the tile.
    """
    px = int(round(overlap * tile)) if 0 < overlap < 1 else int(round(overlap))
    if px < 0:
        raise InputError(f"overlap must be ≥ 0, got {overlap}: pass --overlap in px (≥ 1) or as a fraction (< 1)")
    if px > tile // 2:
        raise InputError(f"overlap {px} px is more than half the tile {tile}: pass --overlap ≤ {tile // 2} (or ≤ 0.5)")
    return px


class _PixelSpace:
    """The minimal GeoDataset surface GridGeoSampler needs, in pixel units: one footprint ``box(0, 0, W, H)``."""

    def __init__(self, height: int, width: int):
        t = pd.Timestamp(0)
        self.index = GeoDataFrame(
            {}, index=pd.IntervalIndex.from_tuples([(t, t)], closed="both", name="datetime"),
            geometry=[shapely.box(0, 0, width, height)],
        )
        self.res = (1.0, 1.0)
        self.bounds = (slice(0, width, 1), slice(0, height, 1), slice(t, t, 1))


def _starts(length: int, tile: int, stride: int, torchgeo_starts: list[int]) -> list[int]:
    """TorchGeo's starts with the overhanging last one shifted back inside (and duplicates removed)."""
    if length <= tile:
        return [0]
    if not torchgeo_starts:
        raise AssertionError("GridGeoSampler produced no window")
    starts = sorted({min(s, length - tile) for s in torchgeo_starts})
    if starts[-1] + tile < length or max(np.diff(starts), default=0) > stride:
        raise AssertionError(f"windows leave a gap: starts {starts} for length {length}, tile {tile}, stride {stride}")
    return starts


def grid_windows(height: int, width: int, tile: int, stride: int) -> list[TileWindow]:
    """Windows covering every pixel of an ``height × width`` grid, row-major.

    Args:
        height: Grid rows.
        width: Grid columns.
        tile: Window size (windows are ``min(tile, H) × min(tile, W)``).
        stride: Step between windows (``tile - overlap``).
    """
    from torchgeo.samplers import GridGeoSampler

    if stride < 1 or stride > tile:
        raise ValueError(f"stride must be in [1, tile], got {stride} for tile {tile}")
    # an axis shorter than the tile gets one window of its length (TorchGeo would skip the scene): the dataset pads
    # it to the model tile with reflection
    th, tw = min(tile, height), min(tile, width)
    ys: list[int] = []
    xs: list[int] = []
    for x_slice, y_slice, _ in GridGeoSampler(_PixelSpace(height, width), size=(th, tw), stride=stride):
        x0, y0 = x_slice.start, y_slice.start
        if abs(x0 - round(x0)) > 1e-6 or abs(y0 - round(y0)) > 1e-6:
            raise AssertionError(f"non-integer window offset {(y0, x0)}")
        ys.append(int(round(y0)))
        xs.append(int(round(x0)))
    rows = _starts(height, th, stride, ys)
    cols = _starts(width, tw, stride, xs)
    return [
        TileWindow(r, c, th, tw, top=r == 0, bottom=r + th >= height, left=c == 0, right=c + tw >= width)
        for r in rows
        for c in cols
    ]
