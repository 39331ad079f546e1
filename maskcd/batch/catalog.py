"""Site catalogs for ``maskcd-batch``: CSV, GeoPackage or GeoJSON tables turned into per-site jobs.

Two layouts are accepted (column names are case-insensitive):

* **Wide** — one row per pair: ``site_id, before, after`` plus optional ``before_date``, ``after_date`` and an AOI.
  A site listed on several rows gives one pair per row, in time order when dates are given, else in row order.
* **Long** — one row per image: ``site_id, date, path`` (plus an optional AOI). A site with *n* dates gives the
  *n − 1* consecutive pairs in time order: a time series.

Image paths are relative to the catalog file's folder unless absolute. The AOI is the row geometry for GeoPackage
and GeoJSON catalogs (in the file's CRS); CSV catalogs may give an ``aoi`` column holding WKT (CRS from an ``aoi_crs``
column, default ``EPSG:4326``) or the path of a polygon file. Rows of one site must agree on the AOI; the first
non-empty one is used.

Problems of one site (a missing date, fewer than two images, a duplicate date, a bad id) do not stop the run: the
site's :attr:`SiteJob.error` is set and the run records it in ``failures.csv``. Problems of the whole table (missing
columns, unreadable file) raise :class:`~maskcd.errors.InputError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from maskcd.errors import InputError

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".parquet")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Pair:
    """One change layer to map.

    Args:
        before: Earlier image (absolute path).
        after: Later image (absolute path).
        before_date: ISO date (``YYYY-MM-DD``) of ``before`` or ``None``.
        after_date: ISO date of ``after`` or ``None``.
        layer: GeoPackage layer name of this pair in the site's GeoPackage.
        stem: Suffix used in the names of this pair's raster outputs (``""`` for a single-pair site).
    """

    before: str
    after: str
    before_date: str | None = None
    after_date: str | None = None
    layer: str = "changes"
    stem: str = ""

    @property
    def prob_name(self) -> str:
        return f"change_prob{self.stem}.tif"

    @property
    def mask_name(self) -> str:
        return f"change_mask{self.stem}.tif"


@dataclass
class SiteJob:
    """Everything one site needs, picklable so it can travel to a Dask worker.

    Args:
        site_id: Folder name under the output directory.
        pairs: Change layers in time order.
        aoi_wkt: AOI polygon as WKT, or ``None``.
        aoi_crs: CRS of ``aoi_wkt`` (any string ``pyproj`` accepts).
        error: Set when the catalog rows of this site are unusable; the site is then recorded as failed.
    """

    site_id: str
    pairs: list[Pair] = field(default_factory=list)
    aoi_wkt: str | None = None
    aoi_crs: str | None = None
    error: str | None = None

    @property
    def images(self) -> list[str]:
        """Distinct input images in first-use order."""
        seen: dict[str, None] = {}
        for pair in self.pairs:
            seen.setdefault(pair.before)
            seen.setdefault(pair.after)
        return list(seen)


def read_catalog(path: str | Path, *, layer: str = "changes") -> list[SiteJob]:
    """Read a site catalog.

    Args:
        path: CSV, GeoPackage or GeoJSON file.
        layer: Layer name used for single-pair sites; time-series pairs get ``<layer>_<before>_<after>``.

    Returns:
        One :class:`SiteJob` per distinct ``site_id``, in first-appearance order.

    Raises:
        InputError: The file is missing or unreadable, or lacks the required columns.
    """
    path = Path(path)
    table, crs = _read_table(path)
    table.columns = [str(c).lower() if c != "geometry" else c for c in table.columns]
    if "site_id" not in table.columns:
        raise InputError(f"catalog {path} has no 'site_id' column (columns: {_cols(table)}); add one")
    wide = {"before", "after"} <= set(table.columns)
    long = {"date", "path"} <= set(table.columns)
    if wide and long:
        raise InputError(f"catalog {path} has both before/after and date/path columns; keep one layout")
    if not (wide or long):
        raise InputError(
            f"catalog {path} needs either 'before' and 'after' columns (one row per pair) or 'date' and 'path' "
            f"columns (one row per image); it has {_cols(table)}"
        )
    base = path.resolve().parent
    jobs: list[SiteJob] = []
    table = table.assign(_row=range(len(table)))
    table["site_id"] = table["site_id"].map(lambda v: "" if pd.isna(v) else str(v).strip())
    for site_id, rows in table.groupby("site_id", sort=False):
        job = SiteJob(site_id=site_id)
        try:
            _check_site_id(site_id, path)
            job.aoi_wkt, job.aoi_crs = _site_aoi(rows, crs, base, path)
            job.pairs = _wide_pairs(rows, base, layer) if wide else _long_pairs(rows, base, layer)
        except InputError as err:
            job.error = str(err)
        jobs.append(job)
    if not jobs:
        raise InputError(f"catalog {path} lists no site; add rows")
    return jobs


def _cols(table: pd.DataFrame) -> str:
    return ", ".join(c for c in table.columns if c != "geometry") or "none"


def _read_table(path: Path) -> tuple[pd.DataFrame, str | None]:
    if not path.is_file():
        raise InputError(f"catalog {path} does not exist; pass a CSV, GeoPackage or GeoJSON file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                               na_values=[""]), None
        if suffix in VECTOR_SUFFIXES:
            import pyogrio

            frame = pyogrio.read_dataframe(path)
            crs = frame.crs.to_string() if getattr(frame, "crs", None) is not None else None
            if "geometry" not in frame.columns:
                frame = pd.DataFrame(frame)
            return frame, crs
    except Exception as err:  # pandas/pyogrio raise many types for unreadable files
        raise InputError(f"catalog {path} cannot be read ({type(err).__name__}: {err}); check the file") from err
    raise InputError(f"catalog {path}: unknown format {suffix!r}; use .csv, .gpkg or .geojson")


def _check_site_id(site_id: str, path: Path) -> None:
    if not _SAFE_ID.match(site_id):
        raise InputError(
            f"catalog {path}: site_id {site_id!r} cannot name a folder; use letters, digits, '.', '_' or '-'"
        )


def _missing(value) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and pd.isna(value)) or str(value).strip() == ""


def _resolve(value, base: Path, what: str, site_id: str) -> str:
    if _missing(value):
        raise InputError(f"site {site_id}: empty {what!r} path in the catalog; fill it in")
    p = Path(str(value).strip()).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _parse_date(value, site_id: str, what: str) -> pd.Timestamp | None:
    if _missing(value):
        return None
    try:
        return pd.Timestamp(str(value).strip())
    except (ValueError, TypeError) as err:
        raise InputError(f"site {site_id}: {what} {value!r} is not a date; write it as YYYY-MM-DD") from err


def _iso(ts: pd.Timestamp | None) -> str | None:
    return None if ts is None else ts.strftime("%Y-%m-%d")


def _stamp(ts: pd.Timestamp | None, index: int) -> str:
    return ts.strftime("%Y%m%d") if ts is not None else f"t{index}"


def _wide_pairs(rows: pd.DataFrame, base: Path, layer: str) -> list[Pair]:
    site_id = rows["site_id"].iloc[0]
    items = []
    for _, row in rows.iterrows():
        before = _resolve(row.get("before"), base, "before", site_id)
        after = _resolve(row.get("after"), base, "after", site_id)
        b_date = _parse_date(row.get("before_date"), site_id, "before_date")
        a_date = _parse_date(row.get("after_date"), site_id, "after_date")
        if b_date is not None and a_date is not None and a_date <= b_date:
            raise InputError(
                f"site {site_id}: after_date {_iso(a_date)} is not later than before_date {_iso(b_date)}; swap them"
            )
        items.append((b_date, a_date, int(row["_row"]), before, after))
    if len(items) > 1:
        if any(b is None or a is None for b, a, *_ in items):
            raise InputError(
                f"site {site_id} has {len(items)} rows: give before_date and after_date on each so the change "
                f"layers can be ordered in time"
            )
        items.sort(key=lambda t: (t[0], t[1]))
    return _make_pairs([(b, a, before, after) for b, a, _, before, after in items], layer)


def _long_pairs(rows: pd.DataFrame, base: Path, layer: str) -> list[Pair]:
    site_id = rows["site_id"].iloc[0]
    images = []
    for _, row in rows.iterrows():
        date = _parse_date(row.get("date"), site_id, "date")
        if date is None:
            raise InputError(f"site {site_id}: an image row has no date; every row of the long layout needs one")
        images.append((date, _resolve(row.get("path"), base, "path", site_id)))
    return series_pairs(site_id, images, layer)


def series_pairs(site_id: str, images: list[tuple[pd.Timestamp, str]], layer: str) -> list[Pair]:
    """The consecutive pairs of one site's dated images (the long layout; also STAC items).

    Raises:
        InputError: A date repeats, or fewer than two images.
    """
    images = sorted(images, key=lambda t: t[0])
    dates = [d for d, _ in images]
    if len(set(dates)) != len(dates):
        dup = sorted({_iso(d) for d in dates if dates.count(d) > 1})
        raise InputError(f"site {site_id}: date {', '.join(dup)} is listed twice; keep one image per date")
    if len(images) < 2:
        raise InputError(f"site {site_id} has {len(images)} image; a change layer needs at least two dates")
    return _make_pairs(
        [(b[0], a[0], b[1], a[1]) for b, a in zip(images[:-1], images[1:])], layer
    )


def _make_pairs(items: list[tuple], layer: str) -> list[Pair]:
    if len(items) == 1:
        b, a, before, after = items[0]
        return [Pair(before, after, _iso(b), _iso(a), layer=layer, stem="")]
    pairs = []
    for i, (b, a, before, after) in enumerate(items):
        stem = f"_{_stamp(b, i)}_{_stamp(a, i + 1)}"
        pairs.append(Pair(before, after, _iso(b), _iso(a), layer=f"{layer}{stem}", stem=stem))
    if len({p.layer for p in pairs}) != len(pairs):
        raise InputError(f"two change layers of one site would share the name {pairs[0].layer!r}; dates repeat")
    return pairs


def _site_aoi(rows: pd.DataFrame, crs: str | None, base: Path, path: Path) -> tuple[str | None, str | None]:
    site_id = rows["site_id"].iloc[0]
    if "geometry" in rows.columns:
        geoms = [g for g in rows["geometry"] if g is not None and not g.is_empty]
        if not geoms:
            return None, None
        if crs is None:
            raise InputError(f"catalog {path} has AOI geometries without a CRS; write the file with a CRS")
        geom = geoms[0]
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise InputError(f"site {site_id}: the AOI is a {geom.geom_type}; it must be a polygon")
        return geom.wkt, crs
    if "aoi" not in rows.columns:
        return None, None
    values = [str(v).strip() for v in rows["aoi"] if isinstance(v, str) and v.strip()]
    if not values:
        return None, None
    value = values[0]
    if value.lower().endswith(VECTOR_SUFFIXES):
        import pyogrio

        aoi_path = Path(value).expanduser()
        aoi_path = aoi_path if aoi_path.is_absolute() else base / aoi_path
        try:
            frame = pyogrio.read_dataframe(aoi_path)
        except Exception as err:
            raise InputError(f"site {site_id}: AOI file {aoi_path} cannot be read ({err}); fix the path") from err
        if frame.crs is None or frame.empty:
            raise InputError(f"site {site_id}: AOI file {aoi_path} is empty or has no CRS")
        return frame.geometry.union_all().wkt, frame.crs.to_string()
    import shapely

    try:
        geom = shapely.from_wkt(value)
    except Exception as err:
        raise InputError(f"site {site_id}: aoi {value[:40]!r} is neither WKT nor a polygon file") from err
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise InputError(f"site {site_id}: the AOI is a {geom.geom_type}; it must be a polygon")
    aoi_crs = rows["aoi_crs"].dropna().iloc[0] if "aoi_crs" in rows.columns and rows["aoi_crs"].notna().any() else None
    return geom.wkt, str(aoi_crs or "EPSG:4326")
