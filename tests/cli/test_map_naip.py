"""``maskcd-map`` on real NAIP (2009 → 2020, 4 bands, grids offset by 1–2 m) with the legacy tiny MaskCD."""

from __future__ import annotations

import sqlite3

import pytest
import rasterio

from maskcd.cli.map import main

FOLDER = ("geotiff_bitemporal", "naip_northdakota_m_4709963_se_14")


def test_naip_2009_2020_writes_a_styled_geopackage_in_the_input_crs(tmp_path, shared_data, capsys):
    import geopandas as gpd

    folder = shared_data(*FOLDER)
    model = shared_data("reference", "maskcd_tiny_legacy")
    before = folder / "m_4709963_se_14_1_20090818.tif"
    after = folder / "m_4709963_se_14_1_20200831.tif"
    out = tmp_path / "naip.gpkg"
    rc = main([str(before), str(after), "-o", str(out), "--model", str(model), "--bands", "1,2,3", "--device", "cpu",
               "--workers", "1", "--batch-size", "4", "--min-area", "100", "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "676,216 px" in captured.out  # 934 × 724: the 2009 grid is the reference

    gdf = gpd.read_file(out, layer="changes")
    assert gdf.crs.to_epsg() == 26914
    assert len(gdf) > 0
    assert gdf.geometry.is_valid.all() and set(gdf.geom_type) == {"MultiPolygon"}
    assert (gdf["area_m2"] >= 100).all()
    assert set(gdf["before_date"]) == {"2009-08-18"} and set(gdf["after_date"]) == {"2020-08-31"}
    for col in ("change_id", "area_m2", "perimeter_m", "n_pixels", "prob_mean", "prob_max", "model_sha", "run_id"):
        assert col in gdf.columns

    with sqlite3.connect(out) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        assert "rtree_changes_geom" in tables, "R-tree spatial index missing"
        n_rtree = con.execute("SELECT count(*) FROM rtree_changes_geom").fetchone()[0]
        assert n_rtree == len(gdf)
        rows = con.execute(
            "SELECT f_table_name, f_geometry_column, useAsDefault, styleQML FROM layer_styles").fetchall()
        assert len(rows) == 1
        name, geom_col, default, qml = rows[0]
        assert (name, geom_col, int(default)) == ("changes", "geom", 1)
        assert "prob_mean" in qml and "graduatedSymbol" in qml
        assert con.execute("SELECT count(*) FROM run_metadata").fetchone()[0] > 0

    with rasterio.open(tmp_path / "naip_change_prob.tif") as ds:
        assert ds.crs.to_epsg() == 26914 and (ds.width, ds.height) == (934, 724)
        assert ds.transform.c == 485900.0 and ds.transform.f == 5209247.0
        assert ds.overviews(1)
