"""``maskcd-map`` end to end on small seeded GeoTIFFs: bad input → one line, exit ≠ 0, nothing left behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from maskcd.cli.map import main

@pytest.fixture
def scene_pair(tmp_path, geotiff_writer):
    """A seeded 3-band uint8 pair (UTM 33N, 1 m) with a bright block appearing in the after image."""

    def make(h: int = 96, w: int = 120, name: str = "s"):
        rng = np.random.default_rng(7)
        x = np.stack([ndimage.gaussian_filter(rng.random((h, w)), 2.0) for _ in range(3)])
        a = (30 + 180 * (x - x.min()) / np.ptp(x)).astype(np.uint8)
        b = a.copy()
        b[:, 20:50, 30:70] = 250
        pa = geotiff_writer(tmp_path / f"{name}_before.tif", a, tags={"ACQUISITION_DATE": "2021-06-15"})
        pb = geotiff_writer(tmp_path / f"{name}_after.tif", b, tags={"ACQUISITION_DATE": "2023-07-02"})
        return pa, pb

    return make


FAST = ["--model", "maskcd-tiny", "--tile", "64", "--overlap", "16", "--device", "cpu", "--workers", "0", "-q"]


def listing(folder):
    return sorted(p.name for p in folder.rglob("*"))


def assert_one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("maskcd-map: error:"), err
    for n in needles:
        assert str(n) in err[0], err[0]


def test_missing_file(tmp_path, scene_pair, capsys):
    a, _ = scene_pair()
    before = listing(tmp_path)
    rc = main([str(a), str(tmp_path / "nope.tif"), "-o", str(tmp_path / "o.gpkg"), *FAST])
    assert_one_line_error(capsys, rc, tmp_path / "nope.tif", "does not exist")
    assert listing(tmp_path) == before


def test_not_a_raster(tmp_path, scene_pair, capsys):
    a, _ = scene_pair()
    bad = tmp_path / "b.tif"
    bad.write_bytes(b"\x00garbage" * 100)
    before = listing(tmp_path)
    rc = main([str(a), str(bad), "-o", str(tmp_path / "o.gpkg"), *FAST])
    assert_one_line_error(capsys, rc, bad, "not a readable raster")
    assert listing(tmp_path) == before


def test_no_crs(tmp_path, scene_pair, geotiff_writer, capsys):
    a, _ = scene_pair()
    b = geotiff_writer(tmp_path / "nocrs.tif", np.ones((3, 50, 50), np.uint8), crs=None)
    before = listing(tmp_path)
    rc = main([str(a), str(b), "-o", str(tmp_path / "o.gpkg"), *FAST])
    assert_one_line_error(capsys, rc, b, "no CRS")
    assert listing(tmp_path) == before


def test_no_overlap(tmp_path, scene_pair, geotiff_writer, capsys):
    a, _ = scene_pair()
    b = geotiff_writer(tmp_path / "far.tif", np.ones((3, 50, 50), np.uint8), origin=(600000.0, 5100000.0))
    before = listing(tmp_path)
    rc = main([str(a), str(b), "-o", str(tmp_path / "o.gpkg"), *FAST])
    assert_one_line_error(capsys, rc, b, "do not overlap")
    assert listing(tmp_path) == before


def test_band_count_mismatch(tmp_path, scene_pair, geotiff_writer, capsys):
    a, _ = scene_pair()
    b = geotiff_writer(tmp_path / "four.tif", np.ones((4, 96, 120), np.uint8))
    before = listing(tmp_path)
    rc = main([str(a), str(b), "-o", str(tmp_path / "o.gpkg"), *FAST])
    assert_one_line_error(capsys, rc, b, "band-count mismatch", "--bands")
    assert listing(tmp_path) == before


def test_all_nodata_overlap(tmp_path, scene_pair, geotiff_writer, capsys):
    a, _ = scene_pair()
    b = geotiff_writer(tmp_path / "empty.tif", np.zeros((3, 96, 120), np.uint8), nodata=0)
    before = listing(tmp_path)
    rc = main([str(a), str(b), "-o", str(tmp_path / "o.gpkg"), *FAST])
    assert_one_line_error(capsys, rc, b, "no valid pixels in common")
    assert listing(tmp_path) == before


def test_bad_config_key(tmp_path, scene_pair, capsys):
    a, b = scene_pair()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tile: 64\ntilesize: 3\n")
    rc = main([str(a), str(b), "-o", str(tmp_path / "o.gpkg"), "--config", str(cfg), "-q"])
    assert_one_line_error(capsys, rc, cfg, "tilesize")


def test_default_model_is_the_mining_task_alias():
    from maskcd.cli.map import build_parser, resolve_options
    from maskcd.models.registry import task_aliases

    opts = resolve_options(build_parser().parse_args(["a.tif", "b.tif", "-o", "o.gpkg"]))
    assert opts.model == "mining"
    assert task_aliases()["mining"].hub_id == "HZDR-FWGEL/UCD-MNCD256-ChangeFFT"
    assert opts.overlap == 0.25 and opts.blend == "cosine"


def test_full_run_then_exists_then_overwrite(tmp_path, scene_pair, capsys):
    from maskcd.vectorization import read_run_metadata

    a, b = scene_pair()
    out = tmp_path / "out" / "changes.gpkg"
    out.parent.mkdir()
    cfg = tmp_path / "c.yaml"
    # a random-weight model: a threshold of 0.001 makes every valid pixel change, so exactly one polygon is certain
    cfg.write_text("threshold: 0.001\nbatch_size: 3\n")
    rc = main([str(a), str(b), "-o", str(out), "--config", str(cfg), "--min-area", "4", *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith("maskcd-map: 11,520 px (0.012 km²") and "polygons" in summary and "km² changed" in summary
    assert "wall" in summary
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "changes.gpkg", "changes_change_mask.tif", "changes_change_prob.tif"]
    with rasterio.open(out.parent / "changes_change_mask.tif") as ds:
        assert (ds.width, ds.height) == (120, 96) and ds.crs.to_epsg() == 32633
    meta = read_run_metadata(out)
    flat = json.dumps(meta)
    assert "shift_estimate" in flat and '"threshold": 0.001' in flat and '"batch_size": 3' in flat
    assert meta["dates"] == {"before": "2021-06-15", "after": "2023-07-02"}
    # the pair is co-registered (only the block changed): windows were matched, no shift is found or applied
    assert meta["shift_estimate"]["n_windows"] >= 1 and meta["arguments"]["tile"] == 64
    assert abs(meta["shift_estimate"]["dy_px"]) < 0.5 and abs(meta["shift_estimate"]["dx_px"]) < 0.5
    assert meta["coregistration"]["mode"] == "global" and meta["coregistration"]["applied"] is False
    import geopandas as gpd

    gdf = gpd.read_file(out, layer="changes")
    assert gdf.crs.to_epsg() == 32633
    assert len(gdf) == 1 and gdf["n_pixels"].tolist() == [96 * 120]
    assert gdf["area_m2"].iloc[0] == pytest.approx(96 * 120) and gdf.area.iloc[0] == pytest.approx(96 * 120)
    assert set(gdf["before_date"]) == {"2021-06-15"} and set(gdf["model_name"]) == {"maskcd-tiny"}
    assert gdf.geometry.is_valid.all() and (gdf.geom_type == "MultiPolygon").all()
    # exists without --overwrite: one line, nothing changed
    mtime = out.stat().st_mtime_ns
    rc = main([str(a), str(b), "-o", str(out), *FAST])
    assert_one_line_error(capsys, rc, "exists", "--overwrite")
    assert out.stat().st_mtime_ns == mtime
    rc = main([str(a), str(b), "-o", str(out), "--overwrite", *FAST])
    assert rc == 0
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "changes.gpkg", "changes_change_mask.tif", "changes_change_prob.tif"]
