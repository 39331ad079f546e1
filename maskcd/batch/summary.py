"""What ``maskcd-batch`` reports: each site's ``report.json``, ``failures.csv``, the ``sites`` layer and the
summary table printed at the end of a run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from maskcd.batch.report import SiteReport
from maskcd.io.atomic import atomic_write, write_text_atomic

REPORT_NAME = "report.json"
FAILURES_NAME = "failures.csv"


def write_report(report: SiteReport, path: str | Path) -> Path:
    """Write a site's ``report.json`` (:meth:`SiteReport.to_dict`), atomically."""
    return write_text_atomic(path, json.dumps(report.to_dict(), indent=2))


def read_report(site_dir: str | Path, **overrides) -> SiteReport:
    """The :class:`SiteReport` in ``site_dir/report.json`` (with ``overrides``, e.g. ``status="skipped"``).

    Raises:
        OSError, ValueError: The file is missing, unreadable or not a report.
    """
    with open(Path(site_dir) / REPORT_NAME) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{Path(site_dir) / REPORT_NAME} is not a site report")
    try:
        return SiteReport.from_dict(data, **overrides)
    except TypeError as err:  # a required field is missing
        raise ValueError(f"{Path(site_dir) / REPORT_NAME} is not a site report: {err}") from err


def write_failures(path: Path, sites: list[SiteReport]) -> Path:
    """Write ``failures.csv`` (``site_id, error``) atomically; a header only when nothing failed."""
    with atomic_write(path, overwrite=True) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["site_id", "error"])
        for site in sites:
            if site.failed:
                writer.writerow([site.site_id, site.error or ""])
    return path


def sites_frame(sites: list[SiteReport], crs):
    """The ``sites`` layer: one row per catalog site (:meth:`SiteReport.sites_row`), its valid-data footprint as
    geometry (reprojected to ``crs``; empty for sites without outputs)."""
    import geopandas as gpd
    import shapely

    rows, geoms = [], []
    for site in sites:
        rows.append(site.sites_row())
        geom = None
        if site.footprint_wkt:
            geom = gpd.GeoSeries([shapely.from_wkt(site.footprint_wkt)], crs=site.footprint_crs).to_crs(crs)[0]
        geoms.append(geom)
    return gpd.GeoDataFrame(rows, geometry=gpd.GeoSeries(geoms, crs=crs), crs=crs)


def summary_table(result) -> str:
    """A plain-text table of a :class:`~maskcd.batch.runner.BatchResult`: one line per site (what this run did with
    it) and a total line.

    ``MP/s`` is megapixels of the reference grid per second of ``map_scene`` (all pairs), for sites mapped in this
    run; ``seconds`` is the site's wall time on its worker.
    """
    header = ("site_id", "status", "pairs", "polygons", "changed_km2", "seconds", "MP/s", "note")
    lines = []
    for s in result.sites:
        fresh = s.status == "mapped"
        mp = s.mp_per_s if fresh else None
        lines.append((s.site_id, s.status, "" if s.failed else str(s.n_pairs), "" if s.failed else str(s.n_polygons),
                      "" if s.failed else f"{s.changed_km2:.4f}",
                      f"{s.seconds:.1f}" if s.seconds is not None and s.status != "skipped" else "-",
                      f"{mp:.2f}" if mp else "-", (s.error or "")[:100] if s.failed else ""))
    counts = {k: sum(s.status == k for s in result.sites) for k in ("mapped", "skipped", "failed")}
    total_km2 = sum(s.changed_km2 for s in result.sites)
    lines.append(("total", ", ".join(f"{v} {k}" for k, v in counts.items()),
                  str(sum(s.n_pairs for s in result.sites)),
                  str(sum(s.n_polygons for s in result.sites)), f"{total_km2:.4f}",
                  f"{result.seconds:.1f}", "", ""))
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(row: tuple) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)])


__all__ = ["FAILURES_NAME", "REPORT_NAME", "read_report", "sites_frame", "summary_table", "write_failures",
           "write_report"]
