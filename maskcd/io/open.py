"""Opening input rasters with checks that turn every bad input into one :class:`~maskcd.errors.InputError` line."""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

import rasterio
from rasterio.errors import RasterioIOError

from maskcd.errors import InputError

DATE_TAGS = ("ACQUISITION_DATE", "DATE_ACQUIRED", "TIFFTAG_DATETIME", "DATETIME", "date")
_DATE_RE = re.compile(r"(?<!\d)(19[5-9]\d|20\d\d)[-:/]?(\d{2})[-:/]?(\d{2})(?!\d)")


def open_raster(path: str | os.PathLike, role: str) -> rasterio.DatasetReader:
    """Open ``path`` for reading after checking that it exists, is a raster and carries a CRS.

    Args:
        path: The file.
        role: ``"before"`` or ``"after"`` (named in error messages).

    Raises:
        InputError: Missing file, not a raster / corrupt, or no CRS; the message names the file and the fix.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{role} image {p} does not exist: check the path")
    if p.is_dir():
        raise InputError(f"{role} image {p} is a folder: pass a GeoTIFF file")
    try:
        ds = rasterio.open(p)
    except RasterioIOError as err:
        reason = str(err).splitlines()[0] if str(err) else "unreadable"
        raise InputError(f"{role} image {p} is not a readable raster ({reason}): pass a GeoTIFF or other GDAL raster") from err
    try:
        if ds.crs is None:
            raise InputError(
                f"{role} image {p} has no CRS: assign one first, e.g. `rio edit-info --crs EPSG:32633 {p}`"
            )
        if ds.count < 1 or ds.width < 1 or ds.height < 1:
            raise InputError(f"{role} image {p} has no pixels or no bands: pass a non-empty raster")
        if ds.transform.b != 0 or ds.transform.d != 0:
            # rotated grids are handled by warping too, but the reference grid must be north-up
            if role == "before":
                raise InputError(f"{role} image {p} has a rotated geotransform: warp it north-up first (gdalwarp)")
        # the first and the last block (usually the end of the file): a truncated or corrupt file fails here, not in
        # a worker; later damage is reported by the window reads with the file name
        ds.read(1, window=ds.block_window(1, 0, 0))
        h, w = ds.block_shapes[0]
        ds.read(1, window=ds.block_window(1, (ds.height - 1) // h, (ds.width - 1) // w))
    except InputError:
        ds.close()
        raise
    except Exception as err:  # noqa: BLE001 - GDAL errors on corrupt data come in several types
        ds.close()
        raise InputError(f"{role} image {p} cannot be read ({str(err).splitlines()[0]}): the file is corrupt") from err
    return ds


def acquisition_date(ds: rasterio.DatasetReader) -> str | None:
    """ISO date (``YYYY-MM-DD``) from the file's tags (``ACQUISITION_DATE``, ``TIFFTAG_DATETIME``...) or file name."""
    tags = ds.tags()
    candidates = [tags[k] for k in DATE_TAGS if k in tags]
    candidates.append(Path(ds.name).stem)
    for text in candidates:
        for m in _DATE_RE.finditer(str(text)):
            try:
                return date(int(m.group(1)), int(m.group(2)), int(m.group(3))).isoformat()
            except ValueError:
                continue
    return None
