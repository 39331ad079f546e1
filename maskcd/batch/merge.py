"""Merging the sites' outputs into ``OUTDIR/catalog.gpkg`` (every site's polygons, plus the ``sites`` layer)."""

from __future__ import annotations

from pathlib import Path

from maskcd.batch.catalog import SiteJob
from maskcd.batch.report import SiteReport
from maskcd.batch.summary import sites_frame
from maskcd.batch.worker import GPKG_NAME
from maskcd.inference.options import MapOptions
from maskcd.io.atomic import atomic_write

MERGED_NAME = "catalog.gpkg"
MERGED_LAYER = "changes"
SITES_LAYER = "sites"


def target_crs(reports: list[SiteReport]):
    """The merged file's CRS: the sites' CRS when they share one, else EPSG:4326."""
    from pyproj import CRS

    crss = {r.footprint_crs for r in reports if r.footprint_crs}
    if len(crss) == 1:
        return CRS.from_user_input(crss.pop())
    return CRS.from_epsg(4326)


def merged_changes(outdir: Path, done: list[SiteReport], crs):
    """Every pair's polygons of the finished sites, with ``site_id``, ``layer``, ``before_date`` and ``after_date``
    first, in ``crs``; sites in the given order, pairs in time order."""
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    frames = []
    for site in done:
        gpkg = outdir / site.site_id / GPKG_NAME
        for pair in site.pairs:
            gdf = pyogrio.read_dataframe(gpkg, layer=pair.layer)
            # catalog dates win; without them keep what map_scene read from the files' tags
            dates = {c: getattr(pair, c) if getattr(pair, c) is not None else (gdf[c] if c in gdf.columns else None)
                     for c in ("before_date", "after_date")}
            gdf = gdf.drop(columns=[c for c in ("site_id", "layer", "before_date", "after_date") if c in gdf.columns])
            gdf.insert(0, "site_id", site.site_id)
            gdf.insert(1, "layer", pair.layer)
            gdf.insert(2, "before_date", dates["before_date"])
            gdf.insert(3, "after_date", dates["after_date"])
            frames.append(gdf.to_crs(crs) if gdf.crs is not None else gdf.set_crs(crs))
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs)


def write_merged(outdir: Path, jobs: list[SiteJob], sites: list[SiteReport], options: MapOptions,
                 model_fp: dict) -> Path | None:
    """Write ``catalog.gpkg``: a styled ``changes`` layer with every site's polygons and a ``sites`` layer.

    Polygons keep their attributes and get ``site_id``, ``layer``, ``before_date`` and ``after_date``. When the sites
    share a CRS it is kept, else everything is reprojected to EPSG:4326 (areas stay in the ``area_m2`` attribute).
    Sites are in catalog order, pairs in time order, so the file does not depend on which worker finished first.

    Returns:
        The GeoPackage path, or ``None`` when no site has outputs.
    """
    from maskcd.vectorization import ChangesGpkgWriter, add_layer_to_gpkg

    outdir = Path(outdir)
    done = [s for s in sites if s.has_outputs]
    if not done:
        return None
    crs = target_crs(done)
    polygons = merged_changes(outdir, done, crs)
    metadata = {
        "tool": "maskcd-batch",
        "model": model_fp["id"],
        "model_sha256": model_fp["sha256"],
        "options": options.to_dict(),
        "n_sites": len(sites),
        "n_failed": sum(s.failed for s in sites),
        "sites": ",".join(s.site_id for s in sites),
    }
    final = outdir / MERGED_NAME
    with atomic_write(final, overwrite=True) as tmp:
        writer = ChangesGpkgWriter(tmp, layer=MERGED_LAYER)
        writer.append(polygons)
        writer.close(metadata)
        add_layer_to_gpkg(tmp, sites_frame(sites, crs), layer=SITES_LAYER, style=None, geometry_type="MultiPolygon",
                          metadata={"description": "one row per catalog site: valid-data footprint and totals"},
                          atomic=False)
    return final


__all__ = ["MERGED_LAYER", "MERGED_NAME", "SITES_LAYER", "merged_changes", "target_crs", "write_merged"]
