"""Quicklook PNG per site: one row per change layer, ``before | after | change overlay``, downsampled.

All three panels are on the grid of the change mask COG (the run's reference grid), read at reduced size by decimated
reads (``out_shape``), which GDAL serves from overviews: the mask COG's own, and for the images those of the source
files through a full-resolution :class:`rasterio.vrt.WarpedVRT` onto the mask grid. No full-resolution array is held.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from maskcd.contract import NODATA
from maskcd.io.atomic import atomic_write

OVERLAY_RGB = (255, 32, 32)
OVERLAY_ALPHA = 0.6
GAP = 4


def _mask_grid(mask_path: str | Path, max_size: int):
    """The mask COG's full grid, and its band 1 read at reduced size (a decimated read: GDAL uses the overviews)."""
    with rasterio.open(mask_path) as src:
        scale = max(1.0, max(src.width, src.height) / max_size)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        mask = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        return src.crs, src.transform, src.width, src.height, mask


def _stretch(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-band 2–98 % stretch of valid pixels to uint8."""
    out = np.zeros(data.shape, dtype=np.uint8)
    for i, band in enumerate(data):
        values = band[valid]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, [2, 98])
        hi = hi if hi > lo else lo + 1
        out[i] = np.clip((band.astype(np.float64) - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
    out[:, ~valid] = 0
    return out


def _read_rgb(path: str, bands: list[int] | None, grid, shape: tuple[int, int]) -> np.ndarray:
    """Bands of an image on the mask's full grid (a WarpedVRT), read decimated to ``shape``, stretched to uint8."""
    crs, transform, width, height = grid
    with rasterio.open(path) as src:
        if bands:
            idx = list(bands[:3])
        else:
            idx = [1, 2, 3] if src.count >= 3 else [1]
        # the VRT is at full resolution and the read is decimated, so GDAL serves it from the source's overviews
        # when there are some (VRTWarpedDataset implicit overviews), else warps block by block
        with WarpedVRT(src, crs=crs, transform=transform, width=width, height=height,
                       resampling=Resampling.bilinear) as vrt:
            data = vrt.read(idx, out_shape=(len(idx), *shape), resampling=Resampling.average)
            valid = vrt.read_masks(idx[0], out_shape=shape, resampling=Resampling.nearest) > 0
    if data.shape[0] == 1:
        data = np.repeat(data, 3, axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.all(np.isfinite(data), axis=0)
        data = np.nan_to_num(data)
    return _stretch(data[:3], valid)


def _overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = (rgb.astype(np.float32) * 0.6).astype(np.float32)
    hit = mask == 1
    for c in range(3):
        out[c][hit] = out[c][hit] * (1 - OVERLAY_ALPHA) + OVERLAY_RGB[c] * OVERLAY_ALPHA
    out[:, mask == NODATA] = 0
    return out.astype(np.uint8)


def write_quicklook(rows: list[dict], out_path: str | Path, *, bands: list[int] | None = None,
                    max_size: int = 384) -> Path:
    """Write the quicklook PNG (to a temporary name, then renamed).

    Args:
        rows: One dict per change layer with ``before``, ``after``, ``mask`` (the mask COG) and an optional ``title``.
        out_path: PNG to write.
        bands: 1-based bands shown as RGB (the first three); default the first three, or band 1 as grey.
        max_size: Longest side of each panel in pixels.

    Returns:
        ``out_path``.
    """
    panels = []
    for row in rows:
        crs, transform, width, height, mask = _mask_grid(row["mask"], max_size)
        grid = (crs, transform, width, height)
        before = _read_rgb(row["before"], bands, grid, mask.shape)
        after = _read_rgb(row["after"], bands, grid, mask.shape)
        panels.append((row.get("title", ""), [before, after, _overlay(after, mask)]))
    title_h = 14
    width = max(3 * p[1][0].shape[2] + 2 * GAP for p in panels)
    height = sum(p[1][0].shape[1] + title_h + GAP for p in panels)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for title, images in panels:
        draw.text((2, y + 1), title, fill=(0, 0, 0))
        x = 0
        for img in images:
            canvas.paste(Image.fromarray(np.moveaxis(img, 0, -1)), (x, y + title_h))
            x += img.shape[2] + GAP
        y += images[0].shape[1] + title_h + GAP
    out_path = Path(out_path)
    with atomic_write(out_path, overwrite=True) as tmp:
        canvas.save(tmp, format="PNG")
    return out_path
