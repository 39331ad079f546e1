"""The merged ``catalog.gpkg`` from per-site GeoPackages: CRS handling, columns, order, sites layer, failures."""

from __future__ import annotations

import sqlite3

import geopandas as gpd
import pyogrio
import pytest
from shapely.geometry import MultiPolygon, box

from maskcd.batch.report import PairReport, SiteReport
from maskcd.batch.runner import write_failures, write_merged
from maskcd.inference.options import MapOptions
from maskcd.vectorization import add_layer_to_gpkg, write_changes_gpkg


def _site(outdir, site_id, crs, x0, y0, layers):
    folder = outdir / site_id
    folder.mkdir(parents=True)
    pairs = []
    for i, (layer, before_date, after_date) in enumerate(layers):
        gdf = gpd.GeoDataFrame(
            {"change_id": [1, 2], "area_m2": [100.0, 25.0], "prob_mean": [0.9, 0.6], "run_id": ["r", "r"]},
            geometry=[MultiPolygon([box(x0, y0, x0 + 10, y0 + 10)]), MultiPolygon([box(x0 + 20, y0, x0 + 25, y0 + 5)])],
            crs=crs,
        )
        if i == 0:
            write_changes_gpkg(gdf, folder / "changes.gpkg", layer=layer, metadata={"k": 1})
        else:
            add_layer_to_gpkg(folder / "changes.gpkg", gdf, layer=layer)
        pairs.append(PairReport(layer, before_date=before_date, after_date=after_date))
    return SiteReport(site_id, "mapped", n_pairs=len(pairs), pairs=pairs, n_polygons=2 * len(pairs),
                      changed_km2=125e-6 * len(pairs), valid_km2=0.01, max_shift_px=0.2,
                      footprint_wkt=box(x0, y0, x0 + 100, y0 + 100).wkt, footprint_crs=crs)


def test_merged_layers_sites_and_reprojection(tmp_path):
    sites = [
        _site(tmp_path, "utm33", "EPSG:32633", 500000, 5100000, [("changes", "2020-01-01", "2021-01-01")]),
        SiteReport.failure("bad", "InputError: x"),
        _site(tmp_path, "utm34", "EPSG:32634", 400000, 5100000,
              [("changes_20190101_20200101", "2019-01-01", "2020-01-01"),
               ("changes_20200101_20210101", "2020-01-01", "2021-01-01")]),
    ]
    merged = write_merged(tmp_path, [], sites, MapOptions(model="maskcd-tiny"), {"id": "maskcd-tiny", "sha256": "0"})
    changes = pyogrio.read_dataframe(merged, layer="changes")
    assert changes.crs.to_epsg() == 4326  # two UTM zones: geographic coordinates, areas kept in area_m2
    assert changes.columns[:4].tolist() == ["site_id", "layer", "before_date", "after_date"]
    assert changes["site_id"].tolist() == ["utm33"] * 2 + ["utm34"] * 4  # catalog order, then time order
    assert changes["layer"].tolist()[2:] == ["changes_20190101_20200101"] * 2 + ["changes_20200101_20210101"] * 2
    assert changes["area_m2"].tolist() == [100.0, 25.0] * 3
    # the reprojected polygon is where the UTM one was
    back = changes.iloc[[0]].to_crs("EPSG:32633").geometry.iloc[0]
    assert back.symmetric_difference(box(500000, 5100000, 500010, 5100010)).area < 1e-3
    table = pyogrio.read_dataframe(merged, layer="sites")
    assert table["site_id"].tolist() == ["utm33", "bad", "utm34"]
    assert table["status"].tolist() == ["mapped", "failed", "mapped"]
    assert table["n_pairs"].tolist() == [1, 0, 2] and table["error"].tolist()[1] == "InputError: x"
    assert table.geometry.isna().tolist() == [False, True, False]
    con = sqlite3.connect(merged)
    try:
        styles = con.execute("SELECT f_table_name, useAsDefault FROM layer_styles").fetchall()
        version = con.execute("PRAGMA application_id").fetchone()[0]
    finally:
        con.close()
    assert styles == [("changes", 1)] and version == 0x47504B47  # "GPKG"


def test_single_crs_is_kept_and_nothing_mapped_writes_no_merge(tmp_path):
    sites = [_site(tmp_path, "s", "EPSG:32633", 500000, 5100000, [("changes", None, None)])]
    merged = write_merged(tmp_path, [], sites, MapOptions(), {"id": "m", "sha256": "0"})
    assert pyogrio.read_dataframe(merged, layer="changes").crs.to_epsg() == 32633
    assert write_merged(tmp_path / "none", [], [SiteReport.failure("x", "e")], MapOptions(),
                        {"id": "m", "sha256": "0"}) is None


@pytest.mark.parametrize("failed", [0, 2])
def test_failures_csv(tmp_path, failed):
    sites = [SiteReport.failure(f"s{i}", 'ValueError: bad, "quoted"') for i in range(failed)]
    sites.append(SiteReport("ok", "mapped"))
    path = write_failures(tmp_path / "failures.csv", sites)
    rows = path.read_text().splitlines()
    assert rows[0] == "site_id,error" and len(rows) == 1 + failed
    if failed:
        assert rows[1] == 's0,"ValueError: bad, ""quoted"""'
