"""The maskcd QGIS plugin in real headless QGIS (Debian's ``python3-qgis``, run as a subprocess of ``/usr/bin/python3``).

One QGIS process (``qgis_harness.py``) loads the plugin and runs every action; the tests read its report. QGIS runs
the ``maskcd-map``/``maskcd-batch`` of this test environment (``MASKCD_BIN_DIR`` = the venv's bin folder), so QGIS's
own Python never imports torch. Skips with the reason when QGIS's Python bindings are not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import rasterio
from rasterio.windows import from_bounds

from tests.conftest import HANG_TIMEOUT_S, shared_path

REPO = Path(__file__).resolve().parents[2]
QGIS_PYTHON = "/usr/bin/python3"
HARNESS = Path(__file__).with_name("qgis_harness.py")
NAIP = ("geotiff_bitemporal", "naip_northdakota_m_4709963_se_14")


@cache
def qgis_missing() -> str | None:
    """Why QGIS cannot be used here, or ``None``."""
    if not Path(QGIS_PYTHON).is_file():
        return f"{QGIS_PYTHON} does not exist (QGIS's Python bindings need Debian's python3-qgis)"
    try:
        proc = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True, timeout=HANG_TIMEOUT_S,
                              env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")})
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{QGIS_PYTHON} cannot import qgis.core ({err})"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"{QGIS_PYTHON} cannot import qgis.core ({last}); apt-get install python3-qgis qgis-providers"
    return None


pytestmark = pytest.mark.skipif(qgis_missing() is not None, reason=str(qgis_missing()))


def crop(src: Path, dst: Path, bounds) -> Path:
    with rasterio.open(src) as ds:
        window = from_bounds(*bounds, ds.transform).round_offsets().round_lengths()
        profile = {**ds.profile, "width": int(window.width), "height": int(window.height),
                   "transform": ds.window_transform(window), "tiled": False}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(dst, "w", **profile) as out:
            out.write(ds.read(window=window))
    return dst


def run_harness(actions: list[dict], tmp: Path, timeout: float = HANG_TIMEOUT_S) -> dict:
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"plugin_dir": str(REPO / "qgis_plugin"), "actions": actions}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(QT_QPA_PLATFORM="offscreen", MASKCD_BIN_DIR=str(Path(sys.executable).parent),
               MASKCD_PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", XDG_RUNTIME_DIR=str(tmp))
    proc = subprocess.run([QGIS_PYTHON, str(HARNESS), str(spec)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=tmp)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"QGIS harness gave no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def qgis_run(tmp_path_factory):
    """One headless QGIS session: list; map two real NAIP crops; map them as a one-site catalog; cancel a run
    mid-way; two one-line failures."""
    tmp = tmp_path_factory.mktemp("qgis")
    folder = shared_path(*NAIP)
    small = (487000.0, 5207000.0, 488280.0, 5208280.0)  # 256 × 256 px of 5 m
    before = crop(folder / "m_4709963_se_14_1_20150926.tif", tmp / "before.tif", small)
    after = crop(folder / "m_4709963_se_14_1_20200831.tif", tmp / "after.tif", small)
    demo = str(REPO / "maskcd" / "weights" / "demo")
    common = {"MODEL": demo, "BANDS": "1,2,3", "THRESHOLD": 0.5, "MIN_AREA": 100.0, "DEVICE": "cpu",
              "EXTRA": "--workers 0 --batch-size 2"}
    (tmp / "map").mkdir()
    catalog = tmp / "sites.csv"
    catalog.write_text("site_id,before,after,before_date,after_date\npothole,before.tif,after.tif,2015-09-26,2020-08-31\n")
    (tmp / "cancel").mkdir()
    actions = [
        {"name": "list", "kind": "list"},
        {"name": "map", "kind": "load", "alg": "maskcd:mapchange", "params": {**common, "BEFORE": str(before), "AFTER": str(after),
                                                  "OUTPUT": str(tmp / "map" / "naip.gpkg")}},
        # the full 934 × 724 px scenes in 128-px windows: cancelled at maskcd-map's first progress update
        {"name": "cancel", "kind": "cancel", "alg": "maskcd:mapchange", "cancel_above": 0,
         "params": {**common, "BEFORE": str(folder / "m_4709963_se_14_1_20090818.tif"),
                    "AFTER": str(folder / "m_4709963_se_14_1_20150926.tif"),
                    "EXTRA": "--workers 0 --batch-size 1 --tile 128 --overlap 0.5",
                    "OUTPUT": str(tmp / "cancel" / "full.gpkg")}},
        {"name": "batch", "kind": "load", "alg": "maskcd:mapcatalog",
         "params": {"CATALOG": str(catalog), "MODEL": demo, "BANDS": "1,2,3", "WORKERS": 1,
                    "EXTRA": "--device cpu --loader-workers 0 --batch-size 2 --min-area 100",
                    "OUTPUT": str(tmp / "batch")}},
        {"name": "fail", "kind": "fail", "alg": "maskcd:mapchange",
         "params": {**common, "MODEL": "no-such-preset", "BEFORE": str(before), "AFTER": str(after),
                    "OUTPUT": str(tmp / "fail.gpkg")}},
        {"name": "batch_fail", "kind": "fail", "alg": "maskcd:mapcatalog",
         "params": {"CATALOG": str(tmp / "before.tif"), "OUTPUT": str(tmp / "batch_out")}},
    ]
    return run_harness(actions, tmp), tmp


def test_provider_loads_and_lists_both_algorithms(qgis_run):
    out, _ = qgis_run
    assert out["qgis"].startswith("3."), out
    listing = out["list"]
    assert "exception" not in listing, listing.get("exception")
    assert listing["algorithms"] == [["maskcd:mapcatalog", "Map site catalog"], ["maskcd:mapchange", "Map change"]]
    assert {"BEFORE", "AFTER", "MODEL", "BANDS", "THRESHOLD", "MIN_AREA", "COREGISTER", "GSD", "OUTPUT"} <= set(
        listing["parameters"])
    assert out["provider_after_unload"] is False
    assert out["torch_imported"] is False  # the tools ran as subprocesses: QGIS's Python never loaded torch


def test_map_change_writes_the_geopackage_and_loads_it_styled(qgis_run):
    out, tmp = qgis_run
    res = out["map"]
    assert "exception" not in res, res.get("exception")
    gpkg = tmp / "map" / "naip.gpkg"
    assert res["results"]["OUTPUT"] == str(gpkg) and gpkg.is_file()
    assert (tmp / "map" / "naip_change_prob.tif").is_file() and (tmp / "map" / "naip_change_mask.tif").is_file()
    # the staging folder is gone (QGIS itself may add an .aux.xml of raster statistics)
    assert sorted(p.name for p in (tmp / "map").iterdir() if not p.name.endswith(".aux.xml")) == [
        "naip.gpkg", "naip_change_mask.tif", "naip_change_prob.tif"]
    assert res["progress_max"] == 100
    tree = res["tree"]
    assert [t["name"] for t in tree] == ["naip changes", "naip change probability"]  # the COG under its changes
    changes, prob = tree
    assert changes["valid"] and changes["type"] == "vector" and "layername=changes" in changes["source"]
    assert changes["renderer"] == "graduatedSymbol"  # the default style stored in the GeoPackage
    import pyogrio

    assert changes["features"] == len(pyogrio.read_dataframe(gpkg, layer="changes"))
    assert prob["valid"] and prob["type"] == "raster" and prob["renderer"] == "singlebandpseudocolor"
    assert any("windows of" in m for m in res["messages"])  # maskcd-map's log reached the Processing log


def test_map_site_catalog_runs_maskcd_batch_and_loads_the_merged_layers(qgis_run):
    out, tmp = qgis_run
    res = out["batch"]
    assert "exception" not in res, res.get("exception")
    assert res["results"]["OUTPUT"] == str(tmp / "batch")
    assert (tmp / "batch" / "pothole" / "changes.gpkg").is_file() and (tmp / "batch" / "catalog.json").is_file()
    tree = res["tree"]
    assert [t["name"] for t in tree] == ["changes (all sites)", "sites"]
    assert tree[0]["renderer"] == "graduatedSymbol" and "catalog.gpkg|layername=changes" in tree[0]["source"]
    assert tree[1]["features"] == 1
    assert res["progress_max"] == 100


def test_cancel_mid_run_ends_the_process_and_leaves_no_output(qgis_run):
    out, tmp = qgis_run
    res = out["cancel"]
    assert "exception" not in res, res.get("exception")
    assert res["canceled_at"] is not None and res["canceled_at"] < 95, res  # cancelled during inference
    assert res["error"].startswith("canceled: maskcd-map (pid "), res["error"]
    pid = int(res["error"].split("pid ")[1].split(")")[0])
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert list((tmp / "cancel").iterdir()) == []  # no GeoPackage, no COG, no staging folder


def test_failures_show_the_tools_one_line_error(qgis_run):
    out, tmp = qgis_run
    err = out["fail"]["error"]
    assert err.startswith("maskcd-map: ") and "no-such-preset" in err and "\n" not in err, err
    assert not (tmp / "fail.gpkg").exists() and not list(tmp.glob(".maskcd-qgis-*"))
    err = out["batch_fail"]["error"]
    assert err.startswith("maskcd-batch: ") and "before.tif" in err and "\n" not in err, err
