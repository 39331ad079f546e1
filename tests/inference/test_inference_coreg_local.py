"""``--coregister local``: tie points, robust polynomial field, per-window correction (issue 13)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from maskcd.io import align_pair
from maskcd.io.coreg import TiePoint, estimate, fit_field, match_window, to_gray
from maskcd.models.base import InferenceSpec

from tests.conftest import HANG_TIMEOUT_S

NAIP = ("geotiff_bitemporal", "naip_northdakota_m_4709963_se_14")
SPEC = InferenceSpec(input_bands=("red", "green", "blue"), tile_size=64)
SIZE = 512


def true_field(rows, cols):
    """A smooth displacement field: dx grows 0 -> 4 px from west to east, dy bends 0 -> 1.5 px to the south."""
    u, v = cols / (SIZE - 1), rows / (SIZE - 1)
    return 1.5 * v * v, 4.0 * u


def write_pair(src_path, folder: Path):
    with rasterio.open(src_path) as src:
        win = ((100, 100 + SIZE), (200, 200 + SIZE))
        img = src.read(window=win).astype(np.float64)
        profile = src.profile
        transform = src.window_transform(win)
    profile.update(width=SIZE, height=SIZE, transform=transform, nodata=None)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    dy, dx = true_field(rows, cols)
    # after(q) = before(q - d(q)): the content at p lies at p + d in the after image (geotransform kept)
    warped = np.stack([ndimage.map_coordinates(b, [rows - dy, cols - dx], order=3, mode="reflect") for b in img])
    for name, data in (("before.tif", img), ("after.tif", warped)):
        with rasterio.open(folder / name, "w", **profile) as out:
            out.write(np.clip(np.round(data), 1, 255).astype(np.uint8))
    return folder / "before.tif", folder / "after.tif"


def test_local_field_leaves_under_a_third_of_a_pixel_on_held_out_check_points(tmp_path, shared_data):
    before, after = write_pair(shared_data(*NAIP) / "m_4709963_se_14_1_20200831.tif", tmp_path)
    pair = align_pair(before, after, SPEC, bands=[1, 2, 3])
    co = estimate(pair, "local")
    print(co.to_metadata())
    assert co.applied and co.mode == "local" and co.n_tie_points >= 16
    assert co.rmse_px <= 0.3

    from dataclasses import replace

    fixed = replace(pair, coreg=co)
    # check points: centres between the tie points, never used in the fit
    size = 96
    checks = [(r, c) for r in (60, 180, 300, 380) for c in (40, 170, 290, 400)]
    res_fixed, res_raw, field_err = [], [], []
    with fixed.reader() as rd, pair.reader() as raw:
        for r, c in checks:
            a, b, valid = rd.read(r, c, size, size)
            _, b0, _ = raw.read(r, c, size, size)
            m = match_window(to_gray(a), to_gray(b))
            m0 = match_window(to_gray(a), to_gray(b0))
            assert valid.mean() > 0.95 and m.significant
            res_fixed.append((m.dy, m.dx))
            res_raw.append((m0.dy, m0.dx))
            cy, cx = r + size / 2 - 0.5, c + size / 2 - 0.5
            fy, fx = co.field(np.array([cy]), np.array([cx]))
            ty, tx = true_field(cy + fy[0], cx + fx[0])
            field_err.append((fy[0] - ty, fx[0] - tx))
    rmse = float(np.sqrt(np.mean(np.sum(np.square(res_fixed), axis=1))))
    rmse_raw = float(np.sqrt(np.mean(np.sum(np.square(res_raw), axis=1))))
    rmse_field = float(np.sqrt(np.mean(np.sum(np.square(field_err), axis=1))))
    print(f"{len(checks)} held-out check points: residual misregistration RMSE {rmse:.3f} px after the local "
          f"correction (uncorrected {rmse_raw:.2f} px); fitted field vs truth RMSE {rmse_field:.3f} px")
    assert rmse <= 0.3 and rmse_field <= 0.3
    assert rmse_raw > 1.5


def test_fit_field_rejects_outliers_with_median_mad_and_residuals():
    rng = np.random.default_rng(3)
    tps = []
    for r in np.linspace(50, 950, 7):
        for c in np.linspace(50, 950, 7):
            dy, dx = 0.5 + 0.001 * r, 2.0 - 0.002 * c
            tps.append(TiePoint(r, c, dy + rng.normal(0, 0.05), dx + rng.normal(0, 0.05), 30.0, 1.0))
    tps[3] = TiePoint(tps[3].row, tps[3].col, 25.0, -40.0, 12.0, 0.6)  # a meaningless peak
    tps[10] = TiePoint(tps[10].row, tps[10].col, tps[10].dy + 1.2, tps[10].dx, 15.0, 0.8)  # a moderate outlier
    tps[20] = TiePoint(tps[20].row, tps[20].col, 0.0, 0.0, 4.0, 0.0)  # not significant
    co = fit_field(tps, (1000, 1000))
    used = [tp.used for tp in co.tie_points]
    assert not used[3] and not used[10] and not used[20] and sum(used) == len(tps) - 3
    assert co.applied and co.rmse_px < 0.15
    fy, fx = co.field(np.array([500.0]), np.array([250.0]))
    assert abs(fy[0] - 1.0) < 0.05 and abs(fx[0] - 1.5) < 0.05


QGIS_OPEN = Path(__file__).resolve().parents[2].parent / "shared" / "tools" / "qgis_open.py"


def _qgis_reason() -> str | None:
    if not QGIS_OPEN.is_file():
        return f"{QGIS_OPEN} is absent"
    if not Path("/usr/bin/python3").is_file():
        return "/usr/bin/python3 is absent"
    probe = subprocess.run(["/usr/bin/python3", "-c", "import qgis.core"], capture_output=True, text=True,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    if probe.returncode != 0:
        return f"QGIS Python bindings unavailable to /usr/bin/python3: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def test_tie_point_layer_opens_styled_in_qgis(tmp_path, shared_data, pixel_model):
    from maskcd.inference import MapOptions, map_scene
    from maskcd.vectorization import read_run_metadata

    before, after = write_pair(shared_data(*NAIP) / "m_4709963_se_14_1_20200831.tif", tmp_path)
    opts = MapOptions(model="pixel-diff", bands=[1, 2, 3], device="cpu", workers=0, batch_size=8, overwrite=True,
                      coregister="local")
    res = map_scene(before, after, tmp_path / "local.gpkg", opts, model=pixel_model, progress=False)
    meta = read_run_metadata(res.gpkg, layer="changes")["coregistration"]
    assert meta["mode"] == "local" and meta["applied"] and meta["n_tie_points"] >= 16
    import pyogrio

    pts = pyogrio.read_dataframe(res.gpkg, layer="coreg_tie_points")
    assert len(pts) == meta["n_tie_points"] and set(pts.geom_type) == {"Point"}
    assert {"dx_px", "dy_px", "reliability", "used"} <= set(pts.columns) and pts["used"].sum() == meta["n_used"]
    reason = _qgis_reason()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(["/usr/bin/python3", str(QGIS_OPEN), str(res.gpkg), "coreg_tie_points"],
                          capture_output=True, text=True, timeout=HANG_TIMEOUT_S,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    print(proc.stdout, proc.stderr[-500:])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "renderer RuleRenderer" in proc.stdout and f"{len(pts)} features" in proc.stdout
