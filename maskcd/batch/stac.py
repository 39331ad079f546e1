"""STAC in and out of ``maskcd-batch``: items grouped into sites, band assets stacked by VRT, results as a Catalog.

**Input.** A STAC ItemCollection (a ``FeatureCollection`` JSON, e.g. saved search results), a Catalog or Collection
(its JSON file, or a folder holding ``catalog.json``/``collection.json``; items are found recursively), or a single
Item, read with :mod:`pystac`. Items are grouped into sites:

* by the property named by ``site_key`` when given;
* else by the item's ``site_id`` property, then ``mgrs:tile`` (also ``s2:mgrs_tile`` or the MGRS extension's
  ``mgrs:utm_zone`` + ``mgrs:latitude_band`` + ``mgrs:grid_square``);
* or, when a sites layer (polygons with a ``site_id`` column) is given, by intersection of each item's geometry with
  the site polygons; the polygon is then the site's AOI.

Each site's items, ordered by ``datetime`` (or ``start_datetime``), give the consecutive pairs of a time series, as
the long catalog layout does (:mod:`maskcd.batch.catalog`). ``assets`` names the image asset(s) of an item: one key
(``visual``) is read as it is; several keys (``red,green,blue``) are stacked into a GDAL VRT that references the
single-band files without copying them. Keys may also be the ``common_name`` of an asset's ``eo:bands``/``bands``.
Hrefs may be local paths (relative ones resolve against the item's or the collection file's folder) or URLs that GDAL
reads: ``http(s)://`` becomes ``/vsicurl/``, ``s3://`` ``/vsis3/``, ``gs://`` ``/vsigs/``, ``az://`` ``/vsiaz/``.

**Output.** :func:`write_results_catalog` writes ``OUTDIR/catalog.json`` (a self-contained STAC Catalog) and one STAC
Item per finished site at ``OUTDIR/<site_id>/<site_id>.json`` whose assets are the site's GeoPackage, COGs, quicklook
and report (relative hrefs), and whose properties carry the model, the mapping options and the co-registration
figures of every pair. Every JSON file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd

from maskcd.batch.catalog import SiteJob, _check_site_id, series_pairs
from maskcd.batch.report import PairReport, SiteReport
from maskcd.errors import InputError
from maskcd.io.atomic import write_text_atomic

logger = logging.getLogger(__name__)

STAC_CATALOG_NAME = "catalog.json"
STAC_INPUTS_DIR = "stac_inputs"
DEFAULT_SITE_KEYS = ("site_id", "mgrs:tile", "s2:mgrs_tile")
RGB = ("red", "green", "blue")
MEDIA_GPKG = "application/geopackage+sqlite3"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def is_stac(path: str | Path) -> bool:
    """Whether ``path`` is a STAC source: a folder with ``catalog.json``/``collection.json``, or a JSON file that is a
    STAC Catalog, Collection, Item or an ItemCollection (a FeatureCollection of STAC Items)."""
    path = Path(path)
    if path.is_dir():
        return any((path / n).is_file() for n in ("catalog.json", "collection.json"))
    if path.suffix.lower() not in (".json", ".geojson") or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    if "stac_version" in data:
        return True
    features = data.get("features") if data.get("type") == "FeatureCollection" else None
    return bool(features) and isinstance(features[0], dict) and "stac_version" in features[0]


@dataclass
class StacInput:
    """STAC items grouped into site jobs, and the VRTs their pairs refer to (written by :func:`write_stacks`).

    Args:
        jobs: One job per site, in first-appearance order (sites layer order with ``sites``).
        stacks: ``{site_id: {vrt path: [GDAL paths of the band files]}}``.
        sources: ``{site_id: [self hrefs of the site's input items]}`` (links of the result items).
    """

    jobs: list[SiteJob] = field(default_factory=list)
    stacks: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)


def gdal_path(href: str, base: str | Path | None = None) -> str:
    """An asset href as a path GDAL opens: URLs become ``/vsicurl/``, ``/vsis3/``, ``/vsigs/`` or ``/vsiaz/`` paths,
    ``file://`` URLs and relative paths become absolute local paths (relative to ``base``)."""
    href = href.strip()
    if href.startswith("/vsi"):
        return href
    scheme = urlparse(href).scheme.lower()
    if scheme in ("http", "https"):
        return "/vsicurl/" + href
    prefixes = {"s3": "/vsis3/", "gs": "/vsigs/", "gcs": "/vsigs/", "az": "/vsiaz/", "abfs": "/vsiaz/"}
    if scheme in prefixes:
        return prefixes[scheme] + href.split("://", 1)[1]
    if scheme == "file":
        return str(Path(unquote(urlparse(href).path)))
    if len(scheme) > 1:
        raise InputError(f"asset href {href!r} uses the scheme {scheme}://, which GDAL cannot read; use a path or "
                         f"an http(s)/s3/gs/az URL")
    p = Path(href).expanduser()
    if not p.is_absolute():
        p = Path(base or ".").absolute() / p
    return os.path.normpath(p)


def _load_items(path: Path) -> tuple[list, Path]:
    """``(items, base folder for relative hrefs of items without a self link)``."""
    import pystac

    if path.is_dir():
        path = next(path / n for n in ("catalog.json", "collection.json") if (path / n).is_file())
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("type") == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
        else:
            obj = pystac.read_file(str(path))
            if isinstance(obj, pystac.Item):
                items = [obj]
            elif isinstance(obj, pystac.Catalog):  # a Collection is a Catalog
                items = list(obj.get_items(recursive=True))
            else:
                raise InputError(f"STAC file {path} is a {type(obj).__name__}; pass an ItemCollection, Catalog, "
                                 f"Collection or Item")
    except InputError:
        raise
    except Exception as err:  # pystac raises many types for malformed STAC
        first = str(err).splitlines()[0] if str(err) else ""
        raise InputError(f"STAC {path} cannot be read ({type(err).__name__}: {first}); check the file") from err
    if not items:
        raise InputError(f"STAC {path} holds no item; pass a catalog or item collection with items")
    return items, path.resolve().parent


def _site_of(item, site_key: str | None) -> str | None:
    props = item.properties
    if site_key:
        value = props.get(site_key)
        return None if value is None else str(value).strip()
    for key in DEFAULT_SITE_KEYS:
        if props.get(key) not in (None, ""):
            return str(props[key]).strip()
    parts = [props.get(k) for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")]
    if all(p not in (None, "") for p in parts):
        return f"{int(parts[0]):02d}{parts[1]}{parts[2]}"
    return None


def _item_date(item) -> pd.Timestamp:
    dt = item.datetime or item.common_metadata.start_datetime
    if dt is None:
        raise InputError(f"STAC item {item.id} has neither datetime nor start_datetime; give it a date")
    ts = pd.Timestamp(dt)
    return pd.Timestamp(ts.date())


def _asset_names(asset) -> set[str]:
    names = set()
    for key in ("eo:bands", "bands"):
        for band in asset.extra_fields.get(key) or []:
            if isinstance(band, dict):
                names.update(str(band[k]) for k in ("common_name", "eo:common_name", "name") if band.get(k))
    return names


def _pick_assets(item, assets: list[str] | None) -> list[tuple[str, object]]:
    wanted = assets
    if not wanted:
        if "visual" in item.assets:
            wanted = ["visual"]
        elif all(_find_asset(item, k) is not None for k in RGB):
            wanted = list(RGB)
        else:
            raise InputError(f"STAC item {item.id} has no 'visual' asset nor red/green/blue assets (assets: "
                             f"{', '.join(item.assets) or 'none'}); pass --assets KEY or --assets KEY1,KEY2,KEY3")
    picked = []
    for key in wanted:
        asset = _find_asset(item, key)
        if asset is None:
            raise InputError(f"STAC item {item.id} has no asset {key!r} (assets: {', '.join(item.assets) or 'none'}); "
                             f"pass --assets with its asset keys")
        picked.append((key, asset))
    return picked


def _find_asset(item, key: str):
    if key in item.assets:
        return item.assets[key]
    matches = [a for a in item.assets.values() if key in _asset_names(a)]
    return matches[0] if len(matches) == 1 else None


def _asset_path(asset, item, base: Path) -> str:
    href = asset.href
    owner = item.get_self_href()
    remote_owner = bool(owner) and len(urlparse(owner).scheme) > 1  # a one-letter scheme is a Windows drive
    if remote_owner and not urlparse(href).scheme and not href.startswith("/"):
        href = asset.get_absolute_href() or href  # relative href of a remote item: resolve against its URL
    folder = Path(owner).parent if owner and not remote_owner else base
    return gdal_path(href, folder)


def _safe_name(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "item"


def _read_sites_layer(path: str | Path) -> list[tuple[str, object, str]]:
    """``[(site_id, polygon in EPSG:4326, polygon WKT in the layer's CRS, CRS)]`` of a sites layer."""
    import pyogrio

    path = Path(path)
    try:
        frame = pyogrio.read_dataframe(path)
    except Exception as err:
        raise InputError(f"sites layer {path} cannot be read ({type(err).__name__}); pass a polygon file") from err
    cols = {str(c).lower(): c for c in frame.columns}
    if "site_id" not in cols:
        raise InputError(f"sites layer {path} has no 'site_id' column; add one naming each site")
    if frame.crs is None:
        raise InputError(f"sites layer {path} has no CRS; write it with one")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    wgs = frame.to_crs("EPSG:4326")
    crs = frame.crs.to_string()
    return [(str(sid).strip(), g4326, g.wkt, crs)
            for sid, g, g4326 in zip(frame[cols["site_id"]], frame.geometry, wgs.geometry, strict=True)]


def _item_geometry(item):
    import shapely
    from shapely.geometry import box, shape

    if item.geometry:
        return shapely.make_valid(shape(item.geometry))
    if item.bbox:
        return box(*item.bbox[:2], *item.bbox[-2:]) if len(item.bbox) == 4 else box(
            item.bbox[0], item.bbox[1], item.bbox[3], item.bbox[4])
    return None


def read_stac(path: str | Path, outdir: str | Path, *, layer: str = "changes", site_key: str | None = None,
              assets: list[str] | None = None, sites: str | Path | None = None) -> StacInput:
    """Group the items of a STAC source into site jobs (nothing is written; see :func:`write_stacks`).

    Args:
        path: ItemCollection / Catalog / Collection / Item JSON file, or a folder with ``catalog.json``.
        outdir: The run's output folder; stacked VRTs go to ``OUTDIR/stac_inputs/<site_id>/<item>.vrt``.
        layer: Base layer name (as for :func:`maskcd.batch.catalog.read_catalog`).
        site_key: Property grouping items into sites (default: ``site_id``, then ``mgrs:tile``).
        assets: Asset keys; one is read directly, several are stacked (default ``visual``, else red/green/blue).
        sites: Polygon layer with a ``site_id`` column: items are grouped by intersection instead of a property.

    Raises:
        InputError: The source is unreadable or empty, an item has no site, or the sites layer is unusable.
    """
    path = Path(path)
    items, base = _load_items(path)
    outdir = Path(outdir).resolve()
    groups: dict[str, list] = {}
    aois: dict[str, tuple[str, str]] = {}
    if sites is not None:
        polygons = _read_sites_layer(sites)
        for sid, _, wkt, crs in polygons:
            groups.setdefault(sid, [])
            aois.setdefault(sid, (wkt, crs))
        for item in items:
            geom = _item_geometry(item)
            if geom is None:
                raise InputError(f"STAC item {item.id} has no geometry or bbox; it cannot be matched to a site")
            for sid, g4326, _, _ in polygons:
                if g4326.intersects(geom) and item not in groups[sid]:
                    groups[sid].append(item)
        unused = [it.id for it in items if not any(it in g for g in groups.values())]
        if unused:
            logger.info("%d STAC item(s) intersect no site of %s: %s", len(unused), sites, ", ".join(unused[:5]))
    else:
        for item in items:
            sid = _site_of(item, site_key)
            if not sid:
                what = f"property {site_key!r}" if site_key else "'site_id' or 'mgrs:tile' property"
                raise InputError(f"STAC item {item.id} in {path} has no {what}; pass --site-key PROPERTY or "
                                 f"--sites POLYGONS to group items into sites")
            groups.setdefault(sid, []).append(item)

    result = StacInput()
    for sid, site_items in groups.items():
        job = SiteJob(site_id=sid)
        if sid in aois:
            job.aoi_wkt, job.aoi_crs = aois[sid]
        stacks: dict[str, list[str]] = {}
        try:
            _check_site_id(sid, path)
            if not site_items:
                raise InputError(f"site {sid}: no STAC item intersects its polygon in {sites}")
            images = []
            for item in site_items:
                picked = _pick_assets(item, assets)
                paths = [_asset_path(a, item, base) for _, a in picked]
                if len(paths) == 1:
                    image = paths[0]
                else:
                    image = str(outdir / STAC_INPUTS_DIR / sid / f"{_safe_name(item.id)}.vrt")
                    stacks[image] = paths
                images.append((_item_date(item), image))
            job.pairs = series_pairs(sid, images, layer)
        except InputError as err:
            job.error = str(err)
        result.jobs.append(job)
        result.stacks[sid] = stacks
        result.sources[sid] = [h for h in (it.get_self_href() for it in site_items) if h]
    return result


def write_stacks(stac: StacInput) -> None:
    """Write the VRTs of every site; a site whose band files cannot be stacked gets ``job.error`` set."""
    for job in stac.jobs:
        if job.error:
            continue
        try:
            for vrt, sources in stac.stacks.get(job.site_id, {}).items():
                write_stack_vrt(sources, vrt)
        except InputError as err:
            job.error = f"site {job.site_id}: {err}"


def write_stack_vrt(sources: list[str], out: str | Path) -> Path:
    """A VRT with band *i* = band 1 of ``sources[i]``, referencing the files (no pixel is copied).

    The VRT grid spans the first source's extent at the finest resolution of the sources, so single-band assets of
    different resolutions stack (coarser ones are read resampled by GDAL). All sources must share one CRS. The file
    is rewritten only when its text changes, so a resumed run sees the same input.

    Raises:
        InputError: A source cannot be opened, has several bands, or has another CRS than the first.
    """
    import numpy as np
    import rasterio

    infos = []
    for src in sources:
        try:
            with rasterio.open(src) as ds:
                infos.append({"path": src, "width": ds.width, "height": ds.height, "transform": ds.transform,
                              "crs": ds.crs, "dtype": ds.dtypes[0], "nodata": ds.nodata, "count": ds.count,
                              "bounds": ds.bounds})
        except rasterio.errors.RasterioIOError as err:
            raise InputError(f"band file {src} cannot be opened ({str(err).splitlines()[0]}); check the asset href") \
                from err
    ref = infos[0]
    for info in infos:
        if info["count"] != 1:
            raise InputError(f"band file {info['path']} has {info['count']} bands; stacking takes single-band "
                             f"assets (or pass one multi-band asset to --assets)")
        if info["crs"] != ref["crs"]:
            raise InputError(f"band file {info['path']} is in {info['crs']}, not {ref['crs']} like "
                             f"{ref['path']}; stack assets of one projection")
        if info["transform"].b or info["transform"].d:
            raise InputError(f"band file {info['path']} is rotated; stacking takes north-up rasters")
    res_x = min(abs(i["transform"].a) for i in infos)
    res_y = min(abs(i["transform"].e) for i in infos)
    left, bottom, right, top = ref["bounds"]
    width, height = round((right - left) / res_x), round((top - bottom) / res_y)
    dtype = np.result_type(*[np.dtype(i["dtype"]) for i in infos])
    gdal_type = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                 "int32": "Int32", "float32": "Float32", "float64": "Float64", "int64": "Int64",
                 "uint64": "UInt64"}[dtype.name]

    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if ref["crs"] is not None:
        ET.SubElement(root, "SRS").text = ref["crs"].to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (left, res_x, 0.0, top, 0.0, -res_y))
    for i, info in enumerate(infos, start=1):
        band = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(i))
        if info["nodata"] is not None:
            ET.SubElement(band, "NoDataValue").text = repr(float(info["nodata"]))
        source = ET.SubElement(band, "ComplexSource" if info["nodata"] is not None else "SimpleSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = info["path"]
        ET.SubElement(source, "SourceBand").text = "1"
        ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(info["width"]), ySize=str(info["height"]))
        b = info["bounds"]
        ET.SubElement(source, "DstRect", xOff=repr((b.left - left) / res_x), yOff=repr((top - b.top) / res_y),
                      xSize=repr((b.right - b.left) / res_x), ySize=repr((b.top - b.bottom) / res_y))
        if info["nodata"] is not None:
            ET.SubElement(source, "NODATA").text = repr(float(info["nodata"]))
    text = ET.tostring(root, encoding="unicode")
    out = Path(out)
    if out.is_file() and out.read_text() == text:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    return out


# ---------------------------------------------------------------------------------------------------- results


def _atomic_stac_io():
    import pystac

    class AtomicStacIO(pystac.stac_io.DefaultStacIO):
        """Writes each JSON under a temporary name, then renames it: a killed run leaves no half-written file."""

        def write_text_to_href(self, href, txt):  # noqa: D102 - pystac API
            path = Path(href)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, txt)

    return AtomicStacIO()


def _footprint_4326(report: SiteReport):
    import geopandas as gpd
    import shapely

    if not report.footprint_wkt or not report.footprint_crs:
        return None
    geom = shapely.from_wkt(report.footprint_wkt)
    return gpd.GeoSeries([geom], crs=report.footprint_crs).to_crs("EPSG:4326").iloc[0]


def _coregistration(site_dir: Path, report: SiteReport) -> list[dict]:
    from maskcd.vectorization import read_run_metadata

    figures = []
    for pair in report.pairs:
        entry = {"layer": pair.layer, "shift_px": pair.shift_px}
        try:
            meta = read_run_metadata(site_dir / "changes.gpkg", layer=pair.layer)
        except Exception:  # an older GeoPackage without run_metadata: the report's shift is what we have
            meta = {}
        if isinstance(meta.get("coregistration"), dict):
            entry.update(meta["coregistration"])
        figures.append(entry)
    return figures


def site_item(outdir: Path, report: SiteReport, options: dict, model_fp: dict, sources: list[str] | None = None):
    """The STAC Item of one finished site (assets with absolute hrefs; :func:`write_results_catalog` relativises)."""
    import datetime as dt

    import pystac
    import shapely

    site_dir = outdir / report.site_id
    geom = _footprint_4326(report)
    first, last = report.first_date, report.last_date

    def when(day):
        return dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc) if day else None

    start, end = when(first), when(last)
    props = {
        "maskcd:model": model_fp["id"],
        "maskcd:model_sha256": model_fp["sha256"],
        "maskcd:options": options,
        "maskcd:n_pairs": report.n_pairs,
        "maskcd:n_polygons": report.n_polygons,
        "maskcd:changed_km2": report.changed_km2,
        "maskcd:valid_km2": report.valid_km2,
        "maskcd:max_shift_px": report.max_shift_px,
        "maskcd:layers": [
            {k: getattr(p, k) for k in ("layer", "before_date", "after_date", "n_polygons", "changed_km2", "run_id")}
            for p in report.pairs
        ],
        "maskcd:coregistration": _coregistration(site_dir, report),
    }
    if start and end and start != end:
        props.update(start_datetime=start.isoformat(), end_datetime=end.isoformat())
    item = pystac.Item(
        id=report.site_id,
        geometry=shapely.geometry.mapping(geom) if geom is not None else None,
        bbox=list(geom.bounds) if geom is not None else None,
        datetime=end or start or dt.datetime.now(dt.timezone.utc),
        properties=props,
    )
    item.add_asset("changes", pystac.Asset(str(site_dir / "changes.gpkg"), title="change polygons (styled layers)",
                                           media_type=MEDIA_GPKG, roles=["data"]))
    for pair in report.pairs:
        stem = _pair_stem(pair, len(report.pairs))
        for kind, title in (("prob", "change probability (0-254, 255 nodata)"), ("mask", "change mask (0/1)")):
            name = f"change_{kind}{stem}.tif"
            item.add_asset(f"change_{kind}{stem}", pystac.Asset(
                str(site_dir / name), title=f"{title} {pair.before_date or ''} -> {pair.after_date or ''}",
                media_type=pystac.MediaType.COG, roles=["data"]))
    item.add_asset("quicklook", pystac.Asset(str(site_dir / "quicklook.png"), title="before | after | overlay",
                                             media_type=pystac.MediaType.PNG, roles=["overview"]))
    item.add_asset("report", pystac.Asset(str(site_dir / "report.json"), title="site report",
                                          media_type=pystac.MediaType.JSON, roles=["metadata"]))
    for href in sources or []:
        item.add_link(pystac.Link("derived_from", href, media_type=pystac.MediaType.JSON))
    return item


def _pair_stem(pair: PairReport, n_pairs: int) -> str:
    """The raster-name suffix of a pair: ``""`` for a one-pair site, else the layer name's ``_<before>_<after>``."""
    if n_pairs == 1:
        return ""
    match = re.search(r"(_[^_]+_[^_]+)$", pair.layer)
    return match.group(1) if match else ""


def write_results_catalog(outdir: str | Path, sites: list[SiteReport], options: dict, model_fp: dict,
                          sources: dict[str, list[str]] | None = None) -> Path | None:
    """Write ``OUTDIR/catalog.json`` with one Item per finished site (``mapped`` or ``skipped``).

    Items of sites that failed in this run are removed (their outputs are no longer vouched for by a manifest).

    Returns:
        The catalog path, or ``None`` when no site finished.
    """
    import pystac

    outdir = Path(outdir).resolve()
    done = [s for s in sites if s.has_outputs]
    for s in sites:
        if s.failed:
            (outdir / s.site_id / f"{s.site_id}.json").unlink(missing_ok=True)
    if not done:
        return None
    catalog = pystac.Catalog(id="maskcd-results", description=f"maskcd-batch change maps of {len(done)} site(s), "
                             f"model {model_fp['id']}", title="maskcd change maps")
    for report in done:
        catalog.add_item(site_item(outdir, report, options, model_fp, (sources or {}).get(report.site_id)))
    catalog.normalize_hrefs(str(outdir))  # items at OUTDIR/<site_id>/<site_id>.json, beside their outputs
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, stac_io=_atomic_stac_io())
    return outdir / STAC_CATALOG_NAME
