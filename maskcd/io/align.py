"""Read and align a before/after pair onto one reference pixel grid (pipeline stage 1).

* The **before** image's grid is the reference (CRS, pixel size, origin). When its CRS is geographic the reference is
  the same footprint in the local UTM zone (logged), and the before image is warped too.
* The **after** image is read through a :class:`rasterio.vrt.WarpedVRT` (bilinear) built with the reference grid's
  explicit ``crs/transform/width/height``, so every window lies inside the VRT (``boundless=True`` is never needed, and
  WarpedVRT refuses it) and areas the after image does not cover come back as nodata.
* Validity = valid before ∧ valid after, from nodata values, mask or alpha bands and NaN.
* Bands are selected from what the model's :class:`~maskcd.contract.InferenceSpec` records (band names matched to the
  files' colour interpretation / descriptions, else the first C bands) or from ``--bands``.

An :class:`AlignedPair` is a small picklable description; :meth:`AlignedPair.reader` opens the files in the calling
process (each DataLoader worker opens its own; datasets are never inherited across fork).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window

from maskcd.contract import InferenceSpec
from maskcd.errors import InputError
from maskcd.io.coreg import Coregistration, corrected_src_transform
from maskcd.io.radiometry import Radiometry
from maskcd.io.crs import utm_crs_at
from maskcd.io.open import acquisition_date, open_raster

logger = logging.getLogger(__name__)

GSD_RATIO_WARN = 1.25
GSD_RESAMPLE_RATIO = 1.5
"""``--gsd model`` resamples when the input pixel size is more than this factor away from the model's GSD."""


def resolve_gsd(gsd: str | float, input_res: float, model_gsd: float | None) -> float | None:
    """The mapping pixel size in CRS units for ``--gsd`` (``None``: the input's own grid).

    ``native`` keeps the input grid; ``model`` uses the model's training GSD when the input pixel size is more than
    :data:`GSD_RESAMPLE_RATIO` times away from it (and the model records one); a number is a pixel size in metres.
    """
    if isinstance(gsd, str):
        key = gsd.strip().lower()
        if key == "native":
            return None
        if key == "model":
            if not model_gsd:
                return None
            ratio = max(input_res / model_gsd, model_gsd / input_res)
            return float(model_gsd) if ratio > GSD_RESAMPLE_RATIO else None
        try:
            gsd = float(key)
        except ValueError:
            raise InputError(f"--gsd {gsd!r}: pass native, model or a pixel size in metres") from None
    if not gsd > 0:
        raise InputError(f"--gsd {gsd!r}: the pixel size must be positive")
    return float(gsd)


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: ``crs`` (WKT), ``transform``, ``width``, ``height``."""

    crs: str
    transform: Affine
    width: int
    height: int

    @property
    def res(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return (t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f)

    @property
    def n_pixels(self) -> int:
        return self.width * self.height

    @property
    def pixel_area_m2(self) -> float:
        return self.res[0] * self.res[1]

    def window_transform(self, row: int, col: int) -> Affine:
        return self.transform @ Affine.translation(col, row)

    def scaled(self, factor: int) -> Grid:
        """The grid with ``factor``-times larger pixels over (at least) the same footprint."""
        w = max(1, math.ceil(self.width / factor))
        h = max(1, math.ceil(self.height / factor))
        return Grid(self.crs, self.transform @ Affine.scale(factor), w, h)


@dataclass(frozen=True)
class AlignedPair:
    """A before/after pair described on one reference grid (picklable; open with :meth:`reader`).

    Args:
        before: Path of the before image.
        after: Path of the after image.
        grid: The reference (output) grid, already cropped to the AOI's bounding box when an AOI is given.
        bands: 1-based band indices read from both files.
        spec: The model's inference spec (value scale, normalisation).
        warp_before: Whether the before image must be warped (geographic CRS mapped to UTM).
        before_offset: ``(row, col)`` of the grid's origin in the before file's pixels (when not warped).
        before_date: ISO date from the before file's tags or name, if any.
        after_date: Same for the after image.
        aoi_wkb: The AOI polygon (WKB, in the grid CRS), if any.
        notes: Messages for the run record (warnings given while aligning).
        resampling: Resampling of the warps onto the grid (``bilinear``; ``average`` when the mapping grid is coarser
            than the input by more than 1.5×).
        input_res: Pixel size of the reference image (before any ``--gsd`` resampling).
        coreg: The co-registration applied to the after image when it is read (see :mod:`maskcd.io.coreg`).
        radiometry: The per-date value scaling applied to both images when they are read
            (see :mod:`maskcd.io.radiometry`).
    """

    before: str
    after: str
    grid: Grid
    bands: tuple[int, ...]
    spec: InferenceSpec
    warp_before: bool = False
    before_offset: tuple[int, int] = (0, 0)
    before_date: str | None = None
    after_date: str | None = None
    aoi_wkb: bytes | None = None
    notes: tuple[str, ...] = field(default=())
    resampling: str = "bilinear"
    input_res: float | None = None
    coreg: Coregistration | None = None
    radiometry: Radiometry | None = None

    def reader(self, grid: Grid | None = None, resampling: Resampling | None = None, *,
               coregistered: bool = True, scaled: bool = True) -> PairReader:
        """Open both images for windowed reads on ``grid`` (default: the reference grid).

        ``coregistered=False`` reads the after image without the co-registration correction (for estimating it);
        ``scaled=False`` returns raw values (for computing the scaling).
        """
        coreg = self.coreg if coregistered and self.coreg is not None and self.coreg.applied else None
        radiometry = self.radiometry if scaled and self.radiometry is not None and not self.radiometry.is_identity else None
        return PairReader(self, grid or self.grid, resampling or Resampling[self.resampling], coreg=coreg,
                          radiometry=radiometry)

    def aoi_geometry(self):
        if self.aoi_wkb is None:
            return None
        import shapely

        return shapely.from_wkb(self.aoi_wkb)


def _vrt_kwargs(src: rasterio.DatasetReader, grid: Grid, resampling: Resampling) -> dict:
    """WarpedVRT arguments that carry the source's validity (nodata, NaN, alpha or mask) into the VRT."""
    kw = dict(crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height, resampling=resampling)
    alpha = [i + 1 for i, ci in enumerate(src.colorinterp) if ci == ColorInterp.alpha]
    if src.nodata is not None:
        kw.update(src_nodata=src.nodata, nodata=src.nodata)
    elif np.issubdtype(np.dtype(src.dtypes[0]), np.floating):
        kw.update(src_nodata=float("nan"), nodata=float("nan"))
    elif not alpha:
        # no nodata, no alpha: an added alpha band marks what the source covers (plus any internal mask)
        kw.update(add_alpha=True)
    # with an alpha band, rasterio carries it into the VRT itself and read_masks follows it
    return kw


class PairReader:
    """Windowed reads of the aligned pair on one grid; opened per process.

    ``read(row, col, height, width)`` returns ``(before, after, valid)``: ``(C, h, w)`` float32 raw values (invalid
    pixels zero-filled) and a ``(h, w)`` bool validity.
    """

    def __init__(self, pair: AlignedPair, grid: Grid, resampling: Resampling, coreg: Coregistration | None = None,
                 radiometry: Radiometry | None = None):
        self.pair = pair
        self.radiometry = radiometry
        self.grid = grid
        self.resampling = resampling
        self.coreg = coreg
        self._local_vrt: tuple[tuple[int, int, int, int], WarpedVRT] | None = None
        self._src_a = self._src_b = None
        try:
            self._src_a = rasterio.open(pair.before)
        except RasterioIOError as err:
            raise InputError(f"before image {pair.before} cannot be opened any more ({str(err).splitlines()[0]}): was it moved or changed during the run?") from err
        try:
            self._src_b = rasterio.open(pair.after)
        except RasterioIOError as err:
            self._src_a.close()
            raise InputError(f"after image {pair.after} cannot be opened any more ({str(err).splitlines()[0]}): was it moved or changed during the run?") from err
        same_grid = grid == pair.grid and not pair.warp_before
        self._vrt_a = None if same_grid else WarpedVRT(self._src_a, **_vrt_kwargs(self._src_a, grid, resampling))
        kw_b = _vrt_kwargs(self._src_b, grid, resampling)
        if coreg is not None and not coreg.is_local:
            # global shift: the after image's source transform is moved, so the one warp applies it
            kw_b["src_transform"] = self._shifted_src_transform(Affine.translation(coreg.dx, coreg.dy))
        self._vrt_b = None if coreg is not None and coreg.is_local else WarpedVRT(self._src_b, **kw_b)

    def _shifted_src_transform(self, pixel_map: Affine) -> Affine:
        """The after image's source transform under which a warp reads, at reference-grid pixel ``p``, the after
        content at ``pixel_map(p)`` (offsets are in pixels of the pair's reference grid; the source transform does not
        depend on the grid a reader warps onto)."""
        ref = self.pair.grid
        return corrected_src_transform(self._src_b.transform, self._src_b.crs, ref.transform, ref.crs, pixel_map,
                                       (ref.width / 2, ref.height / 2))

    def _local_after(self, row: int, col: int, height: int, width: int) -> tuple[WarpedVRT, Window]:
        """A WarpedVRT over one window whose source transform applies the local field's affine approximation over
        that window (built per window, kept for a repeated read of the same window)."""
        key = (row, col, height, width)
        if self._local_vrt is not None and self._local_vrt[0] == key:
            return self._local_vrt[1], Window(0, 0, width, height)
        if self._local_vrt is not None:
            self._local_vrt[1].close()
            self._local_vrt = None
        to_ref = ~self.pair.grid.transform * self.grid.transform  # this grid's pixels -> reference-grid pixels
        c0, r0 = to_ref * (col, row)
        c1, r1 = to_ref * (col + width, row + height)
        pm = self.coreg.window_affine(r0, c0, r1 - r0, c1 - c0)
        wgrid = Grid(self.grid.crs, self.grid.window_transform(row, col), width, height)
        kw = _vrt_kwargs(self._src_b, wgrid, self.resampling)
        kw["src_transform"] = self._shifted_src_transform(pm)
        vrt = WarpedVRT(self._src_b, **kw)
        self._local_vrt = (key, vrt)
        return vrt, Window(0, 0, width, height)

    @staticmethod
    def _read(ds, bands, window, role: str, path: str) -> tuple[np.ndarray, np.ndarray]:
        """Data and validity of one window, never boundless (WarpedVRT raises on boundless reads).

        For a WarpedVRT the validity comes out of the same warp as the data (its nodata value, NaN, or its alpha band
        read together with the data): ``read_masks`` on a WarpedVRT would run the warp a second time.
        """
        try:
            if isinstance(ds, WarpedVRT):
                alpha = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha]
                if ds.nodata is not None and not np.isnan(ds.nodata):
                    data = ds.read(bands, window=window, out_dtype="float32")
                    valid = ~(data == np.float32(ds.nodata)).any(axis=0)
                elif ds.nodata is not None:
                    data = ds.read(bands, window=window, out_dtype="float32")
                    valid = np.ones(data.shape[1:], bool)
                elif alpha:
                    both = ds.read([*bands, alpha[0]], window=window, out_dtype="float32")
                    data, valid = both[:-1], both[-1] > 0
                else:
                    data = ds.read(bands, window=window, out_dtype="float32")
                    valid = ds.read_masks(bands, window=window).min(axis=0) > 0
            else:
                data = ds.read(bands, window=window, out_dtype="float32")
                valid = ds.read_masks(bands, window=window).min(axis=0) > 0
        except RasterioIOError as err:
            raise InputError(
                f"{role} image {path} cannot be read near pixel row {int(window.row_off)}, col {int(window.col_off)} "
                f"({str(err).splitlines()[0]}): the file is corrupt or truncated"
            ) from err
        valid &= ~np.isnan(data).any(axis=0)
        return data, valid

    def read(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        bands = list(self.pair.bands)
        if self._vrt_a is None:
            r0, c0 = self.pair.before_offset
            a, va = self._read(self._src_a, bands, Window(c0 + col, r0 + row, width, height), "before", self.pair.before)
        else:
            a, va = self._read(self._vrt_a, bands, Window(col, row, width, height), "before", self.pair.before)
        if self._vrt_b is None:
            vrt_b, win_b = self._local_after(row, col, height, width)
        else:
            vrt_b, win_b = self._vrt_b, Window(col, row, width, height)
        b, vb = self._read(vrt_b, bands, win_b, "after", self.pair.after)
        valid = va & vb
        a[:, ~valid] = 0.0
        b[:, ~valid] = 0.0
        if self.radiometry is not None:
            self.radiometry.apply(a, b, valid)
        return a, b, valid

    def close(self) -> None:
        if self._local_vrt is not None:
            self._local_vrt[1].close()
            self._local_vrt = None
        for ds in (self._vrt_a, self._vrt_b, self._src_a, self._src_b):
            if ds is not None:
                ds.close()

    def __enter__(self) -> PairReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _utm_crs_for(src: rasterio.DatasetReader):
    w, s, e, n = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    utm = utm_crs_at((w + e) / 2, (s + n) / 2)
    if utm is None:
        raise InputError(f"before image {src.name}: no UTM zone covers its footprint; reproject it to a projected CRS first")
    return utm


def select_bands(src_a, src_b, bands: list[int] | None, spec: InferenceSpec, model_name: str = "the model") -> tuple[int, ...]:
    """1-based band indices to read from both images (see the module docstring)."""
    n = spec.num_bands
    if bands:
        bands = [int(b) for b in bands]
        for ds, role in ((src_a, "before"), (src_b, "after")):
            bad = [b for b in bands if b < 1 or b > ds.count]
            if bad:
                raise InputError(
                    f"--bands {','.join(map(str, bands))}: {role} image {ds.name} has only {ds.count} band(s); "
                    f"pick indices between 1 and {ds.count}"
                )
        if len(bands) != n:
            raise InputError(
                f"--bands selects {len(bands)} band(s) but {model_name} expects {n} ({', '.join(spec.input_bands)}): "
                f"pass {n} band indices"
            )
        return tuple(bands)
    if src_a.count != src_b.count:
        raise InputError(
            f"band-count mismatch: before {src_a.name} has {src_a.count} bands, after {src_b.name} has {src_b.count}: "
            f"pass --bands to pick the same {n} bands from both"
        )
    for ds, role in ((src_a, "before"), (src_b, "after")):
        if ds.count < n:
            raise InputError(
                f"{role} image {ds.name} has {ds.count} band(s) but {model_name} needs {n} "
                f"({', '.join(spec.input_bands)}): pass images with those bands or another --model"
            )
    wanted = [b.lower() for b in spec.input_bands]
    names = [
        ((desc or "").lower(), ci.name.lower()) for desc, ci in zip(src_a.descriptions, src_a.colorinterp)
    ]
    found = []
    for w in wanted:
        idx = [i + 1 for i, (desc, ci) in enumerate(names) if w in (desc, ci)]
        found.append(idx[0] if idx else None)
    if all(found) and len(set(found)) == n:
        return tuple(found)
    if src_a.count > n:
        logger.info("using the first %d of %d bands as %s (pass --bands to choose)", n, src_a.count, spec.input_bands)
    return tuple(range(1, n + 1))


def _snap_window(grid: Grid, bounds: tuple[float, float, float, float]) -> tuple[int, int, int, int] | None:
    """Pixel window ``(row0, col0, row1, col1)`` of the grid covering ``bounds`` (snapped outward), or None."""
    inv = ~grid.transform
    left, bottom, right, top = bounds
    c0, r0 = inv @ (left, top)
    c1, r1 = inv @ (right, bottom)
    eps = 1e-6
    r0, c0 = max(0, math.floor(r0 + eps)), max(0, math.floor(c0 + eps))
    r1, c1 = min(grid.height, math.ceil(r1 - eps)), min(grid.width, math.ceil(c1 - eps))
    if r1 <= r0 or c1 <= c0:
        return None
    return r0, c0, r1, c1


def _read_aoi(aoi: str, crs) -> object:
    import geopandas as gpd
    import shapely

    if not os.path.exists(aoi):
        raise InputError(f"AOI file {aoi} does not exist: check the --aoi path")
    try:
        gdf = gpd.read_file(aoi)
    except Exception as err:  # noqa: BLE001 - pyogrio raises several types
        raise InputError(f"AOI file {aoi} is not a readable vector file ({str(err).splitlines()[0]}): pass a GeoPackage/GeoJSON polygon") from err
    if gdf.empty or gdf.crs is None:
        raise InputError(f"AOI file {aoi} is empty or has no CRS: pass polygons with a CRS")
    geom = shapely.union_all(gdf.to_crs(crs).geometry.values)
    if geom.is_empty or geom.area <= 0:
        raise InputError(f"AOI file {aoi} holds no polygon area: pass polygons")
    return shapely.make_valid(geom)


def align_pair(
    before: str | os.PathLike,
    after: str | os.PathLike,
    spec: InferenceSpec,
    *,
    bands: list[int] | None = None,
    aoi: str | None = None,
    model_name: str = "the model",
    gsd: str | float = "native",
) -> AlignedPair:
    """Check both inputs and describe them on the before image's grid (or on a grid with the same origin and
    ``gsd`` pixels, see :func:`resolve_gsd`; both dates are then resampled in their warp).

    Raises:
        InputError: Missing/corrupt file, no CRS, band-count mismatch, no overlap, or an AOI outside the scene.
    """
    notes: list[str] = []
    src_a = open_raster(before, "before")
    try:
        src_b = open_raster(after, "after")
    except InputError:
        src_a.close()
        raise
    with src_a, src_b:
        band_idx = select_bands(src_a, src_b, bands, spec, model_name)
        warp_before = False
        if src_a.crs.is_geographic:
            utm = _utm_crs_for(src_a)
            transform, width, height = calculate_default_transform(
                src_a.crs, utm, src_a.width, src_a.height, *src_a.bounds
            )
            msg = f"before image {before} has a geographic CRS ({src_a.crs}); mapping on its local UTM zone {utm.to_string()}"
            logger.warning(msg)
            notes.append(msg)
            grid = Grid(utm.to_wkt(), transform, int(width), int(height))
            warp_before = True
        else:
            grid = Grid(src_a.crs.to_wkt(), src_a.transform, src_a.width, src_a.height)
        # overlap of the after image with the reference grid
        b_bounds = transform_bounds(src_b.crs, grid.crs, *src_b.bounds, densify_pts=21)
        g = grid.bounds
        inter = (max(g[0], b_bounds[0]), max(g[1], b_bounds[1]), min(g[2], b_bounds[2]), min(g[3], b_bounds[3]))
        if inter[0] >= inter[2] or inter[1] >= inter[3]:
            raise InputError(
                f"before {before} and after {after} do not overlap (before bounds {tuple(round(v, 1) for v in g)}, "
                f"after {tuple(round(v, 1) for v in b_bounds)} in the before CRS): pass two images of the same place"
            )
        # pixel-size ratio
        _, bw, bh = calculate_default_transform(src_b.crs, grid.crs, src_b.width, src_b.height, *src_b.bounds)
        b_res = (b_bounds[2] - b_bounds[0]) / max(bw, 1)
        ratio = max(b_res / grid.res[0], grid.res[0] / b_res)
        if ratio > GSD_RATIO_WARN:
            msg = f"after pixel size ≈{b_res:.3g} vs before {grid.res[0]:.3g} (ratio {ratio:.2f} > {GSD_RATIO_WARN}): after is resampled onto the before grid"
            logger.warning(msg)
            notes.append(msg)
        input_res = grid.res[0]
        target = resolve_gsd(gsd, input_res, spec.gsd)
        resampling = "bilinear"
        if target is not None and abs(target - input_res) > 1e-6 * input_res:
            t = grid.transform
            width = max(1, math.ceil(grid.width * abs(t.a) / target - 1e-6))
            height = max(1, math.ceil(grid.height * abs(t.e) / target - 1e-6))
            grid = Grid(grid.crs, Affine(target, 0.0, t.c, 0.0, -target, t.f), width, height)
            warp_before = True
            resampling = "average" if target > GSD_RESAMPLE_RATIO * input_res else "bilinear"
            msg = f"mapping at {target:.4g} m pixels (input {input_res:.4g} m, --gsd {gsd}): both dates resampled ({resampling}) in their warp"
            logger.info(msg)
            notes.append(msg)
        elif gsd == "model" and spec.gsd is None:
            notes.append("the model records no training GSD: mapping at the input's pixel size")
        if spec.gsd and not (0.5 <= grid.res[0] / spec.gsd <= 2.0):
            msg = f"pixel size {grid.res[0]:.3g} m is far from the model's training GSD {spec.gsd:.3g} m"
            logger.warning(msg)
            notes.append(msg)
        for ds, role in ((src_a, "before"), (src_b, "after")):
            kind = np.dtype(ds.dtypes[band_idx[0] - 1])
            if np.issubdtype(kind, np.integer) and np.iinfo(kind).max > 4 * spec.value_scale and spec.value_scale <= 255:
                logger.info("%s image is %s; values are divided by the model's value_scale %g", role, kind, spec.value_scale)
        aoi_wkb = None
        offset = (0, 0)
        if aoi:
            import shapely

            geom = _read_aoi(aoi, grid.crs)
            win = _snap_window(grid, geom.bounds)
            if win is None:
                raise InputError(f"AOI file {aoi} does not overlap before image {before}: pass an AOI inside the scene")
            r0, c0, r1, c1 = win
            grid = Grid(grid.crs, grid.window_transform(r0, c0), c1 - c0, r1 - r0)
            offset = (r0, c0)
            aoi_wkb = shapely.to_wkb(geom)
        return AlignedPair(
            before=str(before),
            after=str(after),
            grid=grid,
            bands=band_idx,
            spec=spec,
            warp_before=warp_before,
            before_offset=offset,
            before_date=acquisition_date(src_a),
            after_date=acquisition_date(src_b),
            aoi_wkb=aoi_wkb,
            notes=tuple(notes),
            resampling=resampling,
            input_res=float(input_res),
        )
