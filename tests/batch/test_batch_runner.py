"""End-to-end ``maskcd-batch`` on Dask with the real ``map_scene``: broken sites, SIGKILL + resume, 1 vs 2 workers,
time series.

One 2-worker LocalCluster is shared by the module; the 1-worker reference run and the CLI runs start their own
clusters (that is what they test). Scenes are 96 px seeded synthetic mining sites (UTM 33N, 1 m), one tile each.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from PIL import Image

from maskcd.batch.runner import run_batch
from maskcd.batch.worker import loaded_models
from maskcd.cli.batch import main
from maskcd.inference.options import MapOptions

from tests.conftest import HANG_TIMEOUT_S


MAP_KW = dict(tile=96, threshold=0.25, device="cpu", workers=0, batch_size=2)
SITE_FILES = ("changes.gpkg", "change_prob.tif", "change_mask.tif", "quicklook.png", "report.json", "manifest.json")
VOLATILE_REPORT_KEYS = {"timings", "seconds", "worker_pid", "model_cached", "run_id", "status"}
VOLATILE_COLUMNS = {"run_id", "update_time"}


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("maskcd-batch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "maskcd.cli.batch"]


def cli_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def cli_args(catalog: Path, out: Path, model: str) -> list[str]:
    return [str(catalog), "-o", str(out), "--model", model, "--tile", "96", "--threshold", "0.25", "--device", "cpu",
            "--batch-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def cluster():
    """The module's LocalCluster: one worker process for the reference run, scaled to two by ``two_worker_run``."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as local, Client(local) as client:
        yield local, client


@pytest.fixture(scope="module")
def good_catalog(scenes, tmp_path_factory, pairs_catalog):
    folder = tmp_path_factory.mktemp("catalog")
    return pairs_catalog(folder / "sites.csv", [(s, *scenes[s]) for s in ("a", "b", "c")])


@pytest.fixture(scope="module")
def reference(good_catalog, tiny_model_dir, tmp_path_factory, cluster) -> Path:
    """An uninterrupted run on one worker process."""
    local, client = cluster
    assert len(client.scheduler_info()["workers"]) == 1
    out = tmp_path_factory.mktemp("ref") / "out"
    result = run_batch(good_catalog, out, MapOptions(model=tiny_model_dir, **MAP_KW), client=client, progress=False)
    assert result.ok, result.failed
    return out


@pytest.fixture(scope="module")
def cluster2(cluster, reference):
    """The module's cluster with two worker processes (after the one-worker reference run)."""
    local, client = cluster
    local.scale(2)
    client.wait_for_workers(2, timeout=HANG_TIMEOUT_S)
    return client


@pytest.fixture(scope="module")
def two_worker_run(good_catalog, tiny_model_dir, tmp_path_factory, cluster2) -> Path:
    out = tmp_path_factory.mktemp("two") / "out"
    result = run_batch(good_catalog, out, MapOptions(model=tiny_model_dir, **MAP_KW), client=cluster2, progress=False)
    assert result.ok, result.failed
    assert [s.status for s in result.sites] == ["mapped"] * 3
    return out


# --------------------------------------------------------------------------------------------------- comparisons
def _table(path: Path, layer: str):
    frame = pyogrio.read_dataframe(path, layer=layer)
    return frame.drop(columns=[c for c in frame.columns if c in VOLATILE_COLUMNS])


def assert_same_gpkg(a: Path, b: Path) -> None:
    layers_a = pyogrio.list_layers(a).tolist()
    assert layers_a == pyogrio.list_layers(b).tolist()
    for layer, _ in layers_a:
        if layer == "run_metadata":  # timings, run ids
            continue
        ta, tb = _table(a, layer), _table(b, layer)
        assert ta.columns.tolist() == tb.columns.tolist(), layer
        assert len(ta) == len(tb), layer
        if "geometry" in ta.columns:
            assert (ta.geometry.isna() == tb.geometry.isna()).all(), layer
            has = ta.geometry.notna()
            assert ta.geometry[has].geom_equals_exact(tb.geometry[has], tolerance=0).all(), layer
            ta, tb = ta.drop(columns="geometry"), tb.drop(columns="geometry")
        assert ta.fillna(-1).astype(str).equals(tb.fillna(-1).astype(str)), layer


def assert_same_raster(a: Path, b: Path) -> None:
    with rasterio.open(a) as ra, rasterio.open(b) as rb:
        assert (ra.crs, ra.transform, ra.shape, ra.overviews(1)) == (rb.crs, rb.transform, rb.shape, rb.overviews(1))
        np.testing.assert_array_equal(ra.read(), rb.read())


def _stable_report(path: Path) -> dict:
    report = json.loads(path.read_text())
    report = {k: v for k, v in report.items() if k not in VOLATILE_REPORT_KEYS}
    report["pairs"] = [{k: v for k, v in p.items() if k not in VOLATILE_REPORT_KEYS} for p in report["pairs"]]
    return report


def assert_same_outputs(a: Path, b: Path, sites=("a", "b", "c")) -> None:
    for site in sites:
        sa, sb = a / site, b / site
        names = sorted(p.name for p in sa.iterdir())
        assert names == sorted(p.name for p in sb.iterdir()), site
        for name in names:
            if name.endswith(".gpkg"):
                assert_same_gpkg(sa / name, sb / name)
            elif name.endswith(".tif"):
                assert_same_raster(sa / name, sb / name)
            elif name.endswith(".png"):
                np.testing.assert_array_equal(np.asarray(Image.open(sa / name)), np.asarray(Image.open(sb / name)))
            elif name == "report.json":
                assert _stable_report(sa / name) == _stable_report(sb / name), site
            elif name == "manifest.json":
                ma, mb = (json.loads((s / name).read_text()) for s in (sa, sb))
                ma.pop("finished"), mb.pop("finished")
                assert ma == mb, site
    assert_same_gpkg(a / "catalog.gpkg", b / "catalog.gpkg")
    assert (a / "failures.csv").read_text() == (b / "failures.csv").read_text()


# --------------------------------------------------------------------------------------------------------- tests
def test_reference_run_outputs_and_model_loaded_once(reference):
    reports = [json.loads((reference / s / "report.json").read_text()) for s in "abc"]
    for site, report in zip("abc", reports, strict=True):
        assert all((reference / site / f).is_file() for f in SITE_FILES), site
        assert report["n_polygons"] > 0 and report["changed_km2"] > 0
        assert report["n_polygons"] == len(pyogrio.read_dataframe(reference / site / "changes.gpkg", layer="changes"))
        assert len(report["pairs"][0]["shift_px"]) == 2 and report["footprint_crs"] == "EPSG:32633"
        assert {"model_load", "map:changes", "quicklook", "total"} <= set(report["timings"])
        png = Image.open(reference / site / "quicklook.png")
        assert png.size == (3 * 96 + 8, 96 + 14 + 4)
    # one worker process: the model was loaded by the first site only
    assert len({r["worker_pid"] for r in reports}) == 1
    assert sorted(r["model_cached"] for r in reports) == [False, True, True]
    assert (reference / "failures.csv").read_text().strip() == "site_id,error"
    sites = pyogrio.read_dataframe(reference / "catalog.gpkg", layer="sites")
    assert sites["site_id"].tolist() == ["a", "b", "c"] and (sites["status"] == "mapped").all()
    assert sites["n_polygons"].tolist() == [r["n_polygons"] for r in reports]
    merged = pyogrio.read_dataframe(reference / "catalog.gpkg", layer="changes")
    assert len(merged) == sum(r["n_polygons"] for r in reports)
    # polygons fall inside their site's footprint
    for site, footprint in zip(sites["site_id"], sites.geometry, strict=True):
        assert merged[merged["site_id"] == site].geometry.within(footprint.buffer(1e-6)).all()


def test_two_workers_give_the_same_outputs_as_one(reference, two_worker_run, cluster2, tiny_model_dir):
    assert_same_outputs(reference, two_worker_run)
    pids = {json.loads((two_worker_run / s / "report.json").read_text())["worker_pid"] for s in "abc"}
    assert len(pids) == 2  # both workers mapped sites
    loads = cluster2.run(loaded_models)  # {worker address: {"model@device": n}}; both workers have mapped sites
    assert [counts.get(f"{tiny_model_dir}@cpu") for counts in loads.values()] == [1, 1], loads


def test_rerun_skips_finished_sites_and_force_redoes_them(good_catalog, two_worker_run, cluster2, tiny_model_dir):
    gpkg = two_worker_run / "a" / "changes.gpkg"
    before = gpkg.stat().st_mtime_ns
    opts = MapOptions(model=tiny_model_dir, **MAP_KW)
    again = run_batch(good_catalog, two_worker_run, opts, client=cluster2, progress=False)
    assert [s.status for s in again.sites] == ["skipped"] * 3 and gpkg.stat().st_mtime_ns == before
    # a setting that changes results invalidates the manifests; a speed setting does not
    faster = run_batch(good_catalog, two_worker_run, MapOptions(model=tiny_model_dir, **{**MAP_KW, "batch_size": 8}),
                       client=cluster2, progress=False)
    assert [s.status for s in faster.sites] == ["skipped"] * 3
    forced = run_batch(good_catalog, two_worker_run, opts, client=cluster2, force=True, progress=False)
    assert [s.status for s in forced.sites] == ["mapped"] * 3 and gpkg.stat().st_mtime_ns > before


def test_broken_site_is_recorded_and_the_run_goes_on(scenes, tmp_path, cluster2, tiny_model_dir, pairs_catalog,
                                                     capsys):
    broken = tmp_path / "broken_before.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 200)  # a TIFF header and nothing else
    catalog = pairs_catalog(tmp_path / "sites.csv", [("a", *scenes["a"]), ("broken", broken, scenes["b"][1]),
                                                     ("b", *scenes["b"])])
    config = tmp_path / "batch.yaml"
    config.write_text(f"model: {tiny_model_dir}\ntile: 96\nthreshold: 0.25\ndevice: cpu\nbatch_size: 2\n")
    out = tmp_path / "out"
    # the CLI in-process (its own process start is covered by the SIGKILL test), on the module's cluster
    code = main([str(catalog), "-o", str(out), "--config", str(config), "--scheduler", cluster2.scheduler.address,
                 "--no-progress"])
    stdout, stderr = capsys.readouterr()
    assert code == 1, stderr
    assert "1 site(s) failed" in stderr and "site broken failed: InputError" in stderr
    summary = stdout.splitlines()
    assert any(line.startswith("broken") and "failed" in line for line in summary)
    assert any(line.startswith("total") and "2 mapped" in line and "1 failed" in line for line in summary)
    failures = (out / "failures.csv").read_text().splitlines()
    assert failures[0] == "site_id,error" and len(failures) == 2
    assert failures[1].startswith("broken,") and "broken_before.tif" in failures[1]
    assert not (out / "broken" / "manifest.json").exists()
    assert all((out / s / f).is_file() for s in "ab" for f in SITE_FILES)

    merged = out / "catalog.gpkg"
    assert [name for name, _ in pyogrio.list_layers(merged)] == ["changes", "sites", "layer_styles", "run_metadata"]
    changes = pyogrio.read_dataframe(merged, layer="changes")
    assert sorted(changes["site_id"].unique()) == ["a", "b"]
    assert {"site_id", "layer", "before_date", "after_date", "area_m2", "prob_mean"} <= set(changes.columns)
    assert changes.is_valid.all() and set(changes.geom_type) == {"MultiPolygon"}
    assert (changes["before_date"] == "2021-06-15").all() and (changes["after_date"] == "2023-07-02").all()
    sites = pyogrio.read_dataframe(merged, layer="sites")
    assert sites["status"].tolist() == ["mapped", "failed", "mapped"]
    assert sites.geometry.isna().tolist() == [False, True, False]
    con = sqlite3.connect(merged)
    try:
        styles = con.execute("SELECT f_table_name, useAsDefault, styleQML FROM layer_styles").fetchall()
        rtree = con.execute("SELECT count(*) FROM rtree_changes_geom").fetchone()[0]
    finally:
        con.close()
    assert [(name, default) for name, default, _ in styles] == [("changes", 1)]
    assert "prob_mean" in styles[0][2]
    assert rtree == len(changes)
    # same polygons as the per-site GeoPackages
    assert len(changes) == sum(len(pyogrio.read_dataframe(out / s / "changes.gpkg", layer="changes")) for s in "ab")


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(good_catalog, reference, tiny_model_dir, tmp_path,
                                                                   cluster2, capsys):
    out = tmp_path / "out"
    cmd = [*cli_command(), *cli_args(good_catalog, out, tiny_model_dir), "--workers", "1"]
    log = open(tmp_path / "killed-run.log", "w")  # noqa: SIM115 (closed below; kept for a failing test's reader)
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + HANG_TIMEOUT_S
    try:
        while not list(out.glob("*/manifest.json")):
            assert proc.poll() is None, f"the run ended before any site finished: see {tmp_path / 'killed-run.log'}"
            assert time.monotonic() < deadline, f"no site finished within {HANG_TIMEOUT_S:.0f} s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        try:  # the Dask worker processes of the killed run (same session), as an OOM kill of the group would
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.parent.name for p in out.glob("*/manifest.json"))
    assert 1 <= len(done) < 3, f"kill came too late to interrupt anything: {done}"
    assert not (out / "catalog.gpkg").exists()
    stamps = {p: p.stat().st_mtime_ns for s in done for p in (out / s).iterdir()}

    # resume in-process on the module's running cluster: the killed run's own workers died with it
    code = main([*cli_args(good_catalog, out, tiny_model_dir), "--scheduler", cluster2.scheduler.address])
    stderr = capsys.readouterr().err
    assert code == 0, stderr
    for site in "abc":
        expected = "up to date, skipped" if site in done else "to do"
        assert f"site {site}: {expected}" in stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished sites were not redone
    assert not list(out.glob("*/.tmp-*")) and not list(out.glob(".*tmp*"))
    assert_same_outputs(reference, out)


def test_three_date_site_gives_two_layers_in_time_order(scenes, tmp_path, cluster2, tiny_model_dir):
    d0, d1, d2 = scenes["ts"]
    catalog = tmp_path / "series.csv"  # long layout, rows out of time order
    catalog.write_text(f"site_id,date,path\nts,2023-05-01,{d2}\nts,2019-05-01,{d0}\nts,2021-05-01,{d1}\n")
    out = tmp_path / "out"
    result = run_batch(catalog, out, MapOptions(model=tiny_model_dir, **MAP_KW), client=cluster2, progress=False)
    assert result.ok, result.failed
    site = out / "ts"
    layers = ["changes_20190501_20210501", "changes_20210501_20230501"]
    assert [name for name, _ in pyogrio.list_layers(site / "changes.gpkg")][:2] == layers
    report = json.loads((site / "report.json").read_text())
    assert [(p["before_date"], p["after_date"]) for p in report["pairs"]] == [
        ("2019-05-01", "2021-05-01"), ("2021-05-01", "2023-05-01")]
    assert [Path(p["before"]).name for p in report["pairs"]] == [d0.name, d1.name]
    for layer, (b, a) in zip(layers, [("2019-05-01", "2021-05-01"), ("2021-05-01", "2023-05-01")], strict=True):
        gdf = pyogrio.read_dataframe(site / "changes.gpkg", layer=layer)
        assert len(gdf) > 0 and (gdf["before_date"] == b).all() and (gdf["after_date"] == a).all()
        stem = layer.removeprefix("changes")
        assert (site / f"change_prob{stem}.tif").is_file() and (site / f"change_mask{stem}.tif").is_file()
    con = sqlite3.connect(site / "changes.gpkg")
    try:
        styled = [r[0] for r in con.execute("SELECT f_table_name FROM layer_styles ORDER BY id")]
    finally:
        con.close()
    assert styled == layers
    # the two layers differ: the second pair is a different change
    m1, m2 = (rasterio.open(site / f"change_mask{s.removeprefix('changes')}.tif").read(1) for s in layers)
    assert (m1 != m2).any()
    quick = Image.open(site / "quicklook.png")
    assert quick.size[1] == 2 * (96 + 14 + 4)  # one row per pair
    merged = pyogrio.read_dataframe(out / "catalog.gpkg", layer="changes")
    assert merged["layer"].drop_duplicates().tolist() == layers


def test_geopackage_catalog_aoi_restricts_the_site(scenes, tmp_path, cluster2, tiny_model_dir):
    import geopandas as gpd
    from shapely.geometry import box

    before, after = scenes["a"]
    with rasterio.open(before) as src:
        left, bottom, right, top = src.bounds
    half = box(left, bottom, (left + right) / 2, top)  # the western half of the scene, in UTM 33N
    catalog = tmp_path / "sites.gpkg"  # catalog in EPSG:4326: the AOI is reprojected by the mapper
    gpd.GeoDataFrame({"site_id": ["west"], "before": [str(before)], "after": [str(after)],
                      "before_date": ["2021-06-15"], "after_date": ["2023-07-02"]},
                     geometry=[half], crs="EPSG:32633").to_crs("EPSG:4326").to_file(catalog, engine="pyogrio")
    out = tmp_path / "out"
    result = run_batch(catalog, out, MapOptions(model=tiny_model_dir, **MAP_KW), client=cluster2, progress=False)
    assert result.ok, result.failed
    with rasterio.open(out / "west" / "change_mask.tif") as src:
        mask = src.read(1)
    # nodata east of the AOI (±1 px reprojection); the first/last row may be nodata where the co-registered
    # (sub-pixel shifted) after image does not reach
    assert (mask[:, 50:] == 255).all() and (mask[1:-1, :46] != 255).all()
    gdf = pyogrio.read_dataframe(out / "west" / "changes.gpkg", layer="changes")
    assert len(gdf) > 0 and gdf.geometry.within(half.buffer(1.5)).all()
    footprint = pyogrio.read_dataframe(out / "catalog.gpkg", layer="sites").geometry[0]
    assert abs(footprint.area - half.area) / half.area < 0.1
    assert not (out / "west" / "aoi.gpkg").exists()  # the per-site AOI file stays in the temporary folder


def test_real_naip_time_series_with_aoi(shared_data, tmp_path, cluster2, tiny_model_dir):
    """Three real NAIP dates (5 m, EPSG:26914, grids offset by 1–2 m) in a GeoJSON long-layout catalog with an AOI."""
    import geopandas as gpd
    from shapely.geometry import box

    folder = shared_data("geotiff_bitemporal", "naip_northdakota_m_4709963_se_14")
    files = {d: folder / f"m_4709963_se_14_1_{d}.tif" for d in ("20150926", "20090818", "20200831")}
    aoi = box(487000, 5207000, 487640, 5207640)  # 128 × 128 px of 5 m
    catalog = tmp_path / "naip.geojson"
    gpd.GeoDataFrame({"site_id": ["pothole"] * 3, "date": [f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in files],
                      "path": [str(p) for p in files.values()]},
                     geometry=[aoi] * 3, crs="EPSG:26914").to_crs("EPSG:4326").to_file(catalog, engine="pyogrio")
    out = tmp_path / "out"
    opts = MapOptions(model=tiny_model_dir, **{**MAP_KW, "tile": 128, "bands": [1, 2, 3]})
    result = run_batch(catalog, out, opts, client=cluster2, progress=False)
    assert result.ok, result.failed
    report = json.loads((out / "pothole" / "report.json").read_text())
    assert [(p["before_date"], p["after_date"]) for p in report["pairs"]] == [
        ("2009-08-18", "2015-09-26"), ("2015-09-26", "2020-08-31")]
    # each pair is mapped on its before image's grid (the 2009 and 2015 grids differ by 2 m in y)
    with rasterio.open(out / "pothole" / "change_mask_20090818_20150926.tif") as m1, \
            rasterio.open(out / "pothole" / "change_mask_20150926_20200831.tif") as m2:
        assert m1.crs.to_epsg() == m2.crs.to_epsg() == 26914 and m1.res == m2.res == (5.0, 5.0)
        assert (m1.transform.f - m2.transform.f) % 5 == pytest.approx(2.0)
        assert abs(m1.width - 128) <= 2 and abs(m1.height - 128) <= 2
    sites = pyogrio.read_dataframe(out / "catalog.gpkg", layer="sites")
    assert sites.crs.to_epsg() == 26914 and sites.geometry[0].within(aoi.buffer(10))
    merged = pyogrio.read_dataframe(out / "catalog.gpkg", layer="changes")
    assert merged.geometry.within(aoi.buffer(10)).all()
