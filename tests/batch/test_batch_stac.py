"""STAC in and out of ``maskcd-batch``: items grouped into sites, band assets stacked by VRT, a results Catalog.

The end-to-end test builds a STAC ItemCollection from the real NAIP dates in ``../shared/data`` (three items of one
site, one single-band GeoTIFF per band, cropped to 128 × 128 px) and runs it through the ``maskcd-batch`` CLI.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pyogrio
import pystac
import pytest
import rasterio
from rasterio.windows import from_bounds

from maskcd.batch.stac import gdal_path, is_stac, read_stac, write_stack_vrt
from maskcd.cli.batch import main
from maskcd.errors import InputError
from tests.conftest import shared_path

NAIP_DATES = ("20090818", "20150926", "20200831")
CROP = (487000.0, 5207000.0, 487640.0, 5207640.0)  # 128 × 128 px of 5 m, EPSG:26914
UTM = "EPSG:26914"


def _footprint_4326(bounds=CROP):
    import geopandas as gpd
    from shapely.geometry import box

    return gpd.GeoSeries([box(*bounds)], crs=UTM).to_crs("EPSG:4326").iloc[0]


def write_band_crops(src: Path, folder: Path, bounds=CROP) -> dict[str, Path]:
    """Bands 1–3 of ``src`` inside ``bounds`` as single-band GeoTIFFs ``red``, ``green``, ``blue``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    with rasterio.open(src) as ds:
        window = from_bounds(*bounds, ds.transform).round_offsets().round_lengths()
        profile = {**ds.profile, "count": 1, "width": int(window.width), "height": int(window.height),
                   "transform": ds.window_transform(window), "tiled": False}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        for band, name in zip((1, 2, 3), ("red", "green", "blue"), strict=True):
            path = folder / f"{name}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(ds.read(band, window=window), 1)
            out[name] = path
    return out


def naip_item(date: str, bands: dict[str, Path], props: dict | None = None, relative_to: Path | None = None):
    geom = _footprint_4326()
    item = pystac.Item(
        id=f"naip_{date}", geometry=geom.__geo_interface__, bbox=list(geom.bounds),
        datetime=dt.datetime(int(date[:4]), int(date[4:6]), int(date[6:]), 17, 30, tzinfo=dt.timezone.utc),
        properties={"mgrs:tile": "14TNT", **(props or {})},
    )
    for name, path in bands.items():
        href = str(path) if relative_to is None else str(path.relative_to(relative_to))
        item.add_asset(name, pystac.Asset(href, media_type=pystac.MediaType.GEOTIFF, roles=["data"],
                                          extra_fields={"eo:bands": [{"name": name.upper(), "common_name": name}]}))
    return item


@pytest.fixture(scope="module")
def naip_bands(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """``{date: {red|green|blue: single-band crop}}`` of the three real NAIP dates."""
    folder = shared_path("geotiff_bitemporal", "naip_northdakota_m_4709963_se_14")
    root = tmp_path_factory.mktemp("naip-bands")
    return {d: write_band_crops(folder / f"m_4709963_se_14_1_{d}.tif", root / d) for d in NAIP_DATES}


@pytest.fixture()
def item_collection(naip_bands, tmp_path) -> Path:
    """An ItemCollection file (saved-search style) of three NAIP items of one site, absolute hrefs."""
    items = [naip_item(d, naip_bands[d]) for d in (NAIP_DATES[1], NAIP_DATES[0], NAIP_DATES[2])]  # not in order
    path = tmp_path / "search.json"
    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    return path


def test_item_collection_runs_through_maskcd_batch(item_collection, naip_bands, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    argv = [str(item_collection), "-o", str(out), "--assets", "red,green,blue", "--model", tiny_model_dir,
            "--tile", "128", "--threshold", "0.25", "--device", "cpu", "--loader-workers", "0", "--batch-size", "2",
            "--workers", "1", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    site = out / "14TNT"
    layers = [name for name, _ in pyogrio.list_layers(site / "changes.gpkg")]
    assert [n for n in layers if n.startswith("changes")] == ["changes_20090818_20150926", "changes_20150926_20200831"]

    # the band files are stacked by VRT (no pixel copied): band i of the VRT is the i-th asset
    vrts = sorted((out / "stac_inputs" / "14TNT").glob("*.vrt"))
    assert [v.name for v in vrts] == [f"naip_{d}.vrt" for d in NAIP_DATES]
    assert all(v.stat().st_size < 8000 for v in vrts)
    with rasterio.open(vrts[0]) as vrt:
        stacked = vrt.read()
    for i, name in enumerate(("red", "green", "blue")):
        with rasterio.open(naip_bands[NAIP_DATES[0]][name]) as band:
            np.testing.assert_array_equal(stacked[i], band.read(1))

    # the results Catalog reads back with pystac, every asset resolves to an existing file
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    items = list(catalog.get_items(recursive=True))
    assert [i.id for i in items] == ["14TNT"]
    item = items[0]
    assert Path(item.get_self_href()) == (site / "14TNT.json").resolve()
    hrefs = {k: Path(a.get_absolute_href()) for k, a in item.assets.items()}
    assert set(hrefs) == {"changes", "change_prob_20090818_20150926", "change_mask_20090818_20150926",
                          "change_prob_20150926_20200831", "change_mask_20150926_20200831", "quicklook", "report"}
    assert all(p.is_file() for p in hrefs.values()), hrefs
    assert all(not Path(a.href).is_absolute() for a in item.assets.values())  # self-contained: relative hrefs
    assert item.properties["maskcd:model"] == tiny_model_dir
    assert item.properties["maskcd:options"]["threshold"] == 0.25
    assert item.properties["start_datetime"].startswith("2009-08-18")
    assert item.properties["end_datetime"].startswith("2020-08-31")
    coreg = item.properties["maskcd:coregistration"]
    assert [c["layer"] for c in coreg] == ["changes_20090818_20150926", "changes_20150926_20200831"]
    assert all(len(c["shift_px"]) == 2 for c in coreg)
    assert item.geometry is not None and _footprint_4326().buffer(1e-4).contains(
        __import__("shapely").geometry.shape(item.geometry))
    # a resumed run finds the same VRTs and skips the site (no cluster is even started)
    assert main(argv) == 0
    assert "skipped" in capsys.readouterr().out


def test_catalog_folder_with_relative_hrefs(naip_bands, tmp_path):
    root = tmp_path / "stac"
    catalog = pystac.Catalog(id="naip", description="NAIP crops")
    for d in NAIP_DATES[:2]:
        catalog.add_item(naip_item(d, naip_bands[d], props={"site_id": "pothole"}))
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    assert is_stac(root) and is_stac(root / "catalog.json")
    stac = read_stac(root, tmp_path / "out", assets=["red", "green", "blue"])
    (job,) = stac.jobs
    assert job.site_id == "pothole" and job.error is None  # site_id wins over mgrs:tile
    assert [(p.before_date, p.after_date) for p in job.pairs] == [("2009-08-18", "2015-09-26")]
    sources = stac.stacks["pothole"][job.pairs[0].before]
    assert sources == [os.path.normpath(naip_bands[NAIP_DATES[0]][b]) for b in ("red", "green", "blue")]
    assert len(stac.sources["pothole"]) == 2 and all(Path(h).is_file() for h in stac.sources["pothole"])


def test_grouping_by_key_and_by_sites_layer(naip_bands, tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    items = [naip_item(d, naip_bands[d], props={"tile": t})
             for d, t in zip(NAIP_DATES, ("x", "y", "x"), strict=True)]
    path = tmp_path / "items.geojson"
    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    by_key = read_stac(path, tmp_path / "o", site_key="tile")
    assert [j.site_id for j in by_key.jobs] == ["x", "y"]
    assert len(by_key.jobs[0].pairs) == 1 and by_key.jobs[0].pairs[0].after_date == "2020-08-31"
    assert "1 image" in by_key.jobs[1].error  # one date only: the site fails, the run goes on

    # --sites: item footprints intersected with site polygons; the polygon becomes the AOI
    inside = box(CROP[0] + 100, CROP[1] + 100, CROP[0] + 300, CROP[1] + 300)
    far = box(CROP[0] + 5000, CROP[1], CROP[0] + 5200, CROP[1] + 200)
    sites = tmp_path / "sites.gpkg"
    gpd.GeoDataFrame({"SITE_ID": ["pit", "elsewhere"]}, geometry=[inside, far], crs=UTM).to_file(sites)
    by_aoi = read_stac(path, tmp_path / "o", sites=sites)
    pit, elsewhere = by_aoi.jobs
    assert pit.site_id == "pit" and len(pit.pairs) == 2 and pit.aoi_wkt == inside.wkt and "26914" in pit.aoi_crs
    assert "no STAC item intersects" in elsewhere.error

    with pytest.raises(InputError, match="has no property 'nope'; pass --site-key"):
        read_stac(path, tmp_path / "o", site_key="nope")


def test_asset_choice_and_bad_items(naip_bands, tmp_path):
    visual = naip_item(NAIP_DATES[0], {"visual": naip_bands[NAIP_DATES[0]]["red"]}, props={"site_id": "v"})
    visual2 = naip_item(NAIP_DATES[1], {"visual": naip_bands[NAIP_DATES[1]]["red"]}, props={"site_id": "v"})
    for it in (visual, visual2):
        it.assets["visual"].extra_fields["eo:bands"] = [{"name": "B1", "common_name": "red"}]
    same_day = naip_item(NAIP_DATES[1], naip_bands[NAIP_DATES[0]], props={"site_id": "dup"})
    same_day.id = "other"
    dup = naip_item(NAIP_DATES[1], naip_bands[NAIP_DATES[1]], props={"site_id": "dup"})
    path = tmp_path / "items.json"
    path.write_text(json.dumps(pystac.ItemCollection([visual, visual2, same_day, dup]).to_dict()))
    v, d = read_stac(path, tmp_path / "o").jobs
    # default asset: visual, read directly (no VRT)
    assert v.error is None and v.pairs[0].before == str(naip_bands[NAIP_DATES[0]]["red"])
    assert "2015-09-26 is listed twice" in d.error
    v, d = read_stac(path, tmp_path / "o", assets=["nir"]).jobs
    assert "has no asset 'nir'" in v.error and "--assets" in v.error
    # an asset key may also be a band's common_name
    v, _ = read_stac(path, tmp_path / "o", assets=["red"]).jobs
    assert v.error is None and v.pairs[0].before == str(naip_bands[NAIP_DATES[0]]["red"])

    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "FeatureCollection", "features": [{"stac_version": "1.0.0", "type": "Feature"}]}')
    with pytest.raises(InputError, match=r"STAC .*bad.json cannot be read"):
        read_stac(bad, tmp_path / "o")
    assert not is_stac(tmp_path / "missing.json")


def test_gdal_paths():
    assert gdal_path("https://x.org/a/b.tif") == "/vsicurl/https://x.org/a/b.tif"
    assert gdal_path("s3://bucket/k/b04.tif") == "/vsis3/bucket/k/b04.tif"
    assert gdal_path("gs://bucket/b.tif") == "/vsigs/bucket/b.tif"
    assert gdal_path("/vsis3/bucket/b.tif") == "/vsis3/bucket/b.tif"
    assert gdal_path("file:///data/a%20b.tif") == "/data/a b.tif"
    assert gdal_path("bands/red.tif", "/data/item") == "/data/item/bands/red.tif"
    with pytest.raises(InputError, match="ftp://"):
        gdal_path("ftp://host/a.tif")


def test_stack_vrt_mixed_resolution_and_crs(tmp_path, image_writer):
    fine = image_writer(tmp_path / "fine.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), res=10.0)
    coarse = image_writer(tmp_path / "coarse.tif", np.full((32, 32), 7, dtype=np.uint8), res=20.0)
    vrt = write_stack_vrt([str(fine), str(coarse)], tmp_path / "s.vrt")
    with rasterio.open(vrt) as ds:
        assert (ds.width, ds.height, ds.count, ds.res, ds.dtypes[0]) == (64, 64, 2, (10.0, 10.0), "uint16")
        data = ds.read()
    assert (data[0] == np.arange(64 * 64).reshape(64, 64)).all() and (data[1] == 7).all()
    mtime = vrt.stat().st_mtime_ns
    write_stack_vrt([str(fine), str(coarse)], vrt)
    assert vrt.stat().st_mtime_ns == mtime  # unchanged text: not rewritten (a resume sees the same input)
    other = image_writer(tmp_path / "o.tif", np.zeros((64, 64), np.uint8), crs="EPSG:32632", res=10.0)
    with pytest.raises(InputError, match="stack assets of one projection"):
        write_stack_vrt([str(fine), str(other)], tmp_path / "x.vrt")
    with pytest.raises(InputError, match="cannot be opened"):
        write_stack_vrt([str(tmp_path / "nothing.tif")], tmp_path / "y.vrt")


def test_remote_inputs_are_fingerprinted_by_address(tmp_path):
    from maskcd.batch.manifest import file_fingerprint, is_up_to_date, write_manifest

    url = "/vsis3/bucket/tile/B04.tif"
    assert file_fingerprint(url) == {"path": url, "remote": True}  # no stat, no download
    local = tmp_path / "a.tif"
    local.write_bytes(b"abc")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "changes.gpkg").write_bytes(b"x")
    write_manifest(tmp_path / "site", {"k": 1}, [file_fingerprint(url), file_fingerprint(local)], ["changes.gpkg"])
    assert is_up_to_date(tmp_path / "site", {"k": 1}) == (True, "")
    local.write_bytes(b"abcd")
    assert is_up_to_date(tmp_path / "site", {"k": 1})[1].endswith("changed size")
