"""The QGIS-ready GeoPackage: style row, R-tree, run_metadata, MultiPolygon, version 1.2, atomic writes, more layers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pyogrio
import pytest

from maskcd.errors import InputError, OutputExistsError
from maskcd.vectorization import add_layer_to_gpkg, read_run_metadata, vectorize_changes, write_changes_gpkg
from maskcd.vectorization import gpkg as gpkg_module

from tests.conftest import HANG_TIMEOUT_S

QGIS_PYTHON = "/usr/bin/python3"
QGIS_TOOL = Path(__file__).resolve().parents[3] / "shared" / "tools" / "qgis_open.py"
METADATA = {"arguments": {"threshold": 0.5, "min_area": 2.0}, "versions": {"maskcd": "0.1.0"},
            "inputs": [{"path": "before.tif", "bytes": 123}], "shift_px": [0.4, -1.2], "timings": {"vectorise": 0.1}}


@pytest.fixture
def changes(scene, rng, blobby):
    mpath, ppath = scene(blobby(rng, (80, 80), fraction=0.2))
    return vectorize_changes(mpath, ppath, min_area_m2=1.0, simplify_m=0.5, chunk_size=32,
                             attributes={"before_date": "2009-07-01", "after_date": "2020-08-15", "run_id": "r-1"})


def _sql(path, query, *args):
    con = sqlite3.connect(path)
    try:
        return con.execute(query, args).fetchall()
    finally:
        con.close()


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_geopackage_has_style_rtree_metadata_and_multipolygons(tmp_path, changes):
    out = write_changes_gpkg(changes, tmp_path / "changes.gpkg", metadata=METADATA)
    assert _sql(out, "PRAGMA user_version")[0][0] == 10200  # GeoPackage 1.2
    assert _sql(out, "PRAGMA application_id")[0][0] == 0x47504B47  # 'GPKG'
    assert _sql(out, "SELECT geometry_type_name, srs_id FROM gpkg_geometry_columns WHERE table_name='changes'") == [
        ("MULTIPOLYGON", 32633)]
    assert _sql(out, "SELECT count(*) FROM sqlite_master WHERE name='rtree_changes_geom'")[0][0] == 1
    assert _sql(out, "SELECT count(*) FROM rtree_changes_geom")[0][0] == len(changes)
    rows = _sql(out, "SELECT f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, styleQML, "
                     "styleSLD, useAsDefault, description, owner, ui, update_time FROM layer_styles")
    assert len(rows) == 1
    cat, schema, table, geom_col, name, qml, _, default, *_ = rows[0]
    assert (cat, schema, table, geom_col, default) == ("", "", "changes", "geom", 1)
    assert 'type="graduatedSymbol"' in qml and 'attr="prob_mean"' in qml and 'alpha="0.6"' in qml
    contents = dict(_sql(out, "SELECT table_name, data_type FROM gpkg_contents"))
    assert contents == {"changes": "features", "layer_styles": "attributes", "run_metadata": "attributes"}
    assert read_run_metadata(out) == json.loads(json.dumps(METADATA))
    back = pyogrio.read_dataframe(out, layer="changes")
    assert len(back) == len(changes) and back.crs == changes.crs
    assert list(back.columns) == list(changes.columns)
    assert set(back.geom_type) == {"MultiPolygon"} and back.is_valid.all()
    np.testing.assert_allclose(back.prob_mean, changes.prob_mean)
    assert _files(tmp_path) >= {"changes.gpkg"} and not [f for f in _files(tmp_path) if "tmp" in f]


def test_empty_result_is_a_valid_layer_with_the_schema(tmp_path, changes):
    empty = changes.iloc[:0]
    out = write_changes_gpkg(empty, tmp_path / "none.gpkg", metadata={"n_polygons": 0})
    info = pyogrio.read_info(out, layer="changes")
    assert info["features"] == 0 and info["geometry_type"] == "MultiPolygon"
    assert list(info["fields"]) == [c for c in changes.columns if c != "geometry"]
    assert info["crs"] == "EPSG:32633"
    assert _sql(out, "SELECT useAsDefault FROM layer_styles WHERE f_table_name='changes'") == [(1,)]


def test_existing_output_is_never_overwritten_without_overwrite(tmp_path, changes):
    out = tmp_path / "changes.gpkg"
    out.write_bytes(b"previous run")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_changes_gpkg(changes, out, metadata={})
    assert out.read_bytes() == b"previous run"
    assert _files(tmp_path) == {"changes.gpkg", "scene_mask.tif", "scene_prob.tif"}
    write_changes_gpkg(changes, out, metadata={}, overwrite=True)
    assert pyogrio.read_info(out, layer="changes")["features"] == len(changes)


def test_failure_leaves_nothing_behind_and_the_old_file_untouched(tmp_path, changes, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gpkg_module, "_write_table", broken)
    before = _files(tmp_path)
    with pytest.raises(RuntimeError, match="disk full"):
        write_changes_gpkg(changes, tmp_path / "new.gpkg", metadata={})
    assert _files(tmp_path) == before
    old = tmp_path / "old.gpkg"
    old.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        write_changes_gpkg(changes, old, metadata={}, overwrite=True)
    assert old.read_bytes() == b"old" and _files(tmp_path) == before | {"old.gpkg"}


def test_failed_add_layer_keeps_the_original_geopackage(tmp_path, changes, monkeypatch):
    out = write_changes_gpkg(changes, tmp_path / "catalog.gpkg", metadata={"run": 1})
    original = out.read_bytes()
    before = _files(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("style table locked")

    monkeypatch.setattr(gpkg_module, "_style_rows", broken)
    with pytest.raises(RuntimeError, match="locked"):
        add_layer_to_gpkg(out, changes, layer="changes_2021")
    assert out.read_bytes() == original and _files(tmp_path) == before
    assert "changes_2021" not in dict(pyogrio.list_layers(out))


def test_bad_destinations(tmp_path, changes):
    with pytest.raises(InputError, match="folder does not exist"):
        write_changes_gpkg(changes, tmp_path / "nope" / "c.gpkg", metadata={})
    with pytest.raises(InputError, match=".gpkg"):
        write_changes_gpkg(changes, tmp_path / "c.shp", metadata={})
    with pytest.raises(InputError, match="does not exist"):
        add_layer_to_gpkg(tmp_path / "missing.gpkg", changes, layer="x")


def test_add_layers_to_an_existing_geopackage(tmp_path, changes):
    out = write_changes_gpkg(changes, tmp_path / "catalog.gpkg", metadata={"run": 1})
    series = changes.assign(year=2021)
    add_layer_to_gpkg(out, series, layer="changes_2021", metadata={"after_date": "2021-08-01"})
    layers = dict(pyogrio.list_layers(out))
    assert layers["changes_2021"] == "MultiPolygon" and layers["changes"] == "MultiPolygon"
    assert _sql(out, "SELECT count(*) FROM sqlite_master WHERE name='rtree_changes_2021_geom'")[0][0] == 1
    assert sorted(_sql(out, "SELECT f_table_name, useAsDefault FROM layer_styles")) == [
        ("changes", 1), ("changes_2021", 1)]
    assert read_run_metadata(out, layer="changes_2021") == {"after_date": "2021-08-01"}
    assert read_run_metadata(out, layer="changes") == {"run": 1}
    with pytest.raises(OutputExistsError, match="changes_2021"):
        add_layer_to_gpkg(out, series, layer="changes_2021")
    add_layer_to_gpkg(out, series.iloc[:3], layer="changes_2021", overwrite_layer=True, metadata={"v": 2})
    assert pyogrio.read_info(out, layer="changes_2021")["features"] == 3
    assert _sql(out, "SELECT count(*) FROM layer_styles WHERE f_table_name='changes_2021'")[0][0] == 1
    assert read_run_metadata(out, layer="changes_2021") == {"v": 2}
    assert _sql(out, "PRAGMA user_version")[0][0] == 10200
    with pytest.raises(InputError, match="reserved"):
        add_layer_to_gpkg(out, series, layer="layer_styles")
    assert not [f for f in _files(tmp_path) if "tmp" in f]


def _has_qgis() -> bool:
    try:
        return subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, timeout=HANG_TIMEOUT_S).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_qgis_opens_the_layer_with_the_graduated_style(tmp_path, changes):
    if not QGIS_TOOL.is_file() or not _has_qgis():
        pytest.skip(f"QGIS Python bindings ({QGIS_PYTHON} -c 'import qgis') or {QGIS_TOOL} are not available")
    out = write_changes_gpkg(changes, tmp_path / "changes.gpkg", metadata=METADATA)
    add_layer_to_gpkg(out, changes.iloc[:0], layer="changes_empty")
    for layer, n in (("changes", len(changes)), ("changes_empty", 0)):
        res = subprocess.run([QGIS_PYTHON, str(QGIS_TOOL), str(out), layer], capture_output=True, text=True,
                             timeout=HANG_TIMEOUT_S, env={"QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)})
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"{n} features, crs EPSG:32633" in res.stdout and "renderer graduatedSymbol" in res.stdout
        assert "partially supported" not in res.stderr  # GeoPackage 1.2: no version warning from GDAL 3.6


def test_streamed_batches_make_the_same_geopackage(tmp_path, changes):
    """Batches appended one by one give the same layer, R-tree, style and metadata as one write."""
    from maskcd.vectorization import stream_changes_gpkg

    assert len(changes) > 10
    batches = [changes.iloc[i:i + 4] for i in range(0, len(changes), 4)]
    summary = stream_changes_gpkg(iter(batches), tmp_path / "streamed.gpkg", metadata=METADATA)
    assert summary.n_features == len(changes) and summary.area_m2 == pytest.approx(changes.area_m2.sum())
    out = summary.path
    assert _sql(out, "SELECT count(*) FROM rtree_changes_geom")[0][0] == len(changes)
    assert _sql(out, "SELECT useAsDefault FROM layer_styles WHERE f_table_name='changes'") == [(1,)]
    assert read_run_metadata(out) == json.loads(json.dumps(METADATA))
    back = pyogrio.read_dataframe(out, layer="changes")
    assert list(back.change_id) == list(changes.change_id)
    assert back.geometry.geom_equals_exact(changes.geometry.reset_index(drop=True), 1e-6).all()
    assert not [f for f in _files(tmp_path) if "tmp" in f]


def test_a_failing_stream_leaves_nothing_behind(tmp_path, changes):
    from maskcd.vectorization import stream_changes_gpkg

    def batches():
        yield changes.iloc[:5]
        yield changes.iloc[5:10]
        raise RuntimeError("worker died")

    before = _files(tmp_path)
    with pytest.raises(RuntimeError, match="worker died"):
        stream_changes_gpkg(batches(), tmp_path / "half.gpkg", metadata={})
    assert _files(tmp_path) == before
