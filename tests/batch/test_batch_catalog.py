"""Catalog readers: CSV / GeoPackage / GeoJSON, wide and long (time-series) layouts, per-site errors."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest
from shapely.geometry import box

from maskcd.batch.catalog import read_catalog
from maskcd.errors import InputError


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")


def test_csv_wide_paths_relative_to_catalog(tmp_path):
    sub = tmp_path / "cat"
    sub.mkdir()
    _touch(tmp_path, "img/a1.tif", "img/a2.tif")
    (sub / "sites.csv").write_text(
        "site_id,before,after,before_date,after_date\n"
        f"alpha,../img/a1.tif,../img/a2.tif,2020-01-05,2021-02-03\n"
        f"beta,{tmp_path / 'img/a1.tif'},{tmp_path / 'img/a2.tif'},,\n"
    )
    jobs = read_catalog(sub / "sites.csv")
    assert [j.site_id for j in jobs] == ["alpha", "beta"]
    a, b = jobs
    assert a.error is None and len(a.pairs) == 1
    pair = a.pairs[0]
    assert pair.before == str((tmp_path / "img/a1.tif").resolve())
    assert (pair.before_date, pair.after_date, pair.layer, pair.prob_name) == (
        "2020-01-05", "2021-02-03", "changes", "change_prob.tif")
    assert b.pairs[0].before_date is None and b.aoi_wkt is None


def test_long_layout_gives_consecutive_pairs_in_time_order(tmp_path):
    # rows deliberately out of order, mixed with a two-date site
    (tmp_path / "long.csv").write_text(
        "site_id,date,path\n"
        "pit,2022-06-01,c.tif\npit,2020-06-01,a.tif\npit,2021-06-01,b.tif\n"
        "dump,2019-01-01,d1.tif\ndump,2019-12-31,d2.tif\n"
    )
    jobs = {j.site_id: j for j in read_catalog(tmp_path / "long.csv")}
    pit = jobs["pit"]
    assert pit.error is None
    assert [(Path(p.before).name, Path(p.after).name) for p in pit.pairs] == [("a.tif", "b.tif"), ("b.tif", "c.tif")]
    assert [p.layer for p in pit.pairs] == ["changes_20200601_20210601", "changes_20210601_20220601"]
    assert [p.mask_name for p in pit.pairs] == ["change_mask_20200601_20210601.tif", "change_mask_20210601_20220601.tif"]
    assert [Path(p).name for p in pit.images] == ["a.tif", "b.tif", "c.tif"]
    assert [p.layer for p in jobs["dump"].pairs] == ["changes"]


def test_per_site_errors_do_not_stop_the_catalog(tmp_path):
    (tmp_path / "long.csv").write_text(
        "site_id,date,path\n"
        "ok,2020-01-01,a.tif\nok,2021-01-01,b.tif\n"
        "single,2020-01-01,a.tif\n"
        "dup,2020-01-01,a.tif\ndup,2020-01-01,b.tif\n"
        "baddate,yesterday-ish,a.tif\nbaddate,2021-01-01,b.tif\n"
        "../evil,2020-01-01,a.tif\n../evil,2021-01-01,b.tif\n"
    )
    jobs = {j.site_id: j for j in read_catalog(tmp_path / "long.csv")}
    assert jobs["ok"].error is None
    assert "at least two dates" in jobs["single"].error
    assert "listed twice" in jobs["dup"].error
    assert "YYYY-MM-DD" in jobs["baddate"].error
    assert "cannot name a folder" in jobs["../evil"].error


def test_wide_rows_of_one_site_need_dates_and_are_sorted(tmp_path):
    (tmp_path / "w.csv").write_text(
        "site_id,before,after,before_date,after_date\n"
        "s,b.tif,c.tif,2021-01-01,2022-01-01\ns,a.tif,b.tif,2020-01-01,2021-01-01\n"
        "n,a.tif,b.tif,,\nn,b.tif,c.tif,,\n"
        "r,a.tif,b.tif,2022-01-01,2021-01-01\n"
    )
    jobs = {j.site_id: j for j in read_catalog(tmp_path / "w.csv")}
    assert [p.before_date for p in jobs["s"].pairs] == ["2020-01-01", "2021-01-01"]
    assert "before_date and after_date" in jobs["n"].error
    assert "not later than" in jobs["r"].error


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_vector_catalog_aoi_geometry(tmp_path, suffix):
    gdf = gpd.GeoDataFrame(
        {"Site_ID": ["m1", "m2"], "before": ["a.tif", "c.tif"], "after": ["b.tif", "d.tif"],
         "before_date": ["2020-03-01", None], "after_date": ["2021-03-01", None]},
        geometry=[box(500010, 5099900, 500050, 5099950), None],
        crs="EPSG:32633",
    )
    path = tmp_path / f"sites{suffix}"
    gdf.to_file(path, engine="pyogrio")
    jobs = read_catalog(path)
    assert [j.site_id for j in jobs] == ["m1", "m2"]
    assert jobs[0].aoi_crs and "32633" in jobs[0].aoi_crs
    assert jobs[0].aoi_wkt.startswith("POLYGON")
    assert jobs[0].pairs[0].before_date == "2020-03-01"
    assert jobs[1].aoi_wkt is None and jobs[1].error is None


def test_csv_aoi_wkt_with_crs_column(tmp_path):
    (tmp_path / "c.csv").write_text(
        'site_id,before,after,aoi,aoi_crs\nx,a.tif,b.tif,"POLYGON ((0 0, 1 0, 1 1, 0 0))",EPSG:32633\n'
        'y,a.tif,b.tif,"POINT (1 1)",\n'
    )
    x, y = read_catalog(tmp_path / "c.csv")
    assert x.aoi_crs == "EPSG:32633" and x.aoi_wkt.startswith("POLYGON")
    assert "must be a polygon" in y.error


def test_table_level_errors_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_catalog(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("id,before,after\nx,a,b\n")
    with pytest.raises(InputError, match="no 'site_id' column"):
        read_catalog(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("site_id,first,second\nx,a,b\n")
    with pytest.raises(InputError, match="'before' and 'after'"):
        read_catalog(tmp_path / "bad2.csv")
    (tmp_path / "sites.xlsx").write_text("x")
    with pytest.raises(InputError, match="unknown format"):
        read_catalog(tmp_path / "sites.xlsx")


def test_csv_aoi_as_relative_polygon_file(tmp_path):
    gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10), box(10, 0, 20, 10)], crs="EPSG:32633").to_file(
        tmp_path / "aoi.gpkg", engine="pyogrio")
    (tmp_path / "c.csv").write_text("site_id,before,after,aoi\nx,a.tif,b.tif,aoi.gpkg\nz,a.tif,b.tif,nope.gpkg\n")
    x, z = read_catalog(tmp_path / "c.csv")
    assert "32633" in x.aoi_crs
    import shapely

    assert shapely.from_wkt(x.aoi_wkt).equals(box(0, 0, 20, 10))  # the file's polygons, dissolved
    assert "cannot be read" in z.error
