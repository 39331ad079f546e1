"""``maskcd-batch`` takes the real-imagery options and reports co-registration per site (issue 13)."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import rasterio
from scipy import ndimage

from maskcd.batch.catalog import read_catalog
from maskcd.batch.manifest import model_fingerprint, site_key
from maskcd.batch.runner import write_merged
from maskcd.batch.worker import process_site
from maskcd.cli.batch import build_parser, options_from_args
from maskcd.inference.options import MapOptions

NAIP = ("geotiff_bitemporal", "naip_northdakota_m_4709963_se_14", "m_4709963_se_14_1_20200831.tif")


def test_batch_cli_takes_the_real_imagery_options(tmp_path):
    args = build_parser().parse_args([str(tmp_path / "cat.csv"), "-o", str(tmp_path / "out"), "--coregister", "local",
                                      "--gsd", "2.5", "--scale", "percentile", "--match-histogram"])
    opts = options_from_args(args)
    assert (opts.coregister, opts.gsd, opts.scale, opts.match_histogram) == ("local", 2.5, "percentile", True)
    defaults = options_from_args(build_parser().parse_args([str(tmp_path / "c.csv"), "-o", str(tmp_path / "o")]))
    assert (defaults.coregister, defaults.gsd, defaults.scale, defaults.match_histogram) == ("global", "model", "auto",
                                                                                            False)


def test_site_report_and_sites_layer_carry_the_coregistration(tmp_path, shared_data, tiny_model_dir):
    src = shared_data(*NAIP)
    with rasterio.open(src) as ds:
        win = ((200, 392), (300, 492))
        img = ds.read([1, 2, 3], window=win).astype(np.float64)
        profile = ds.profile
        profile.update(count=3, width=192, height=192, transform=ds.window_transform(win), nodata=None)
    shifted = np.stack([np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(b), (1.3, -0.8))).real for b in img])
    paths = {}
    for name, data in (("before", img), ("after", shifted)):
        paths[name] = tmp_path / f"{name}.tif"
        with rasterio.open(paths[name], "w", **profile) as out:
            out.write(np.clip(np.round(data), 1, 255).astype(np.uint8))
    (tmp_path / "cat.csv").write_text(f"site_id,before,after\nnaip,{paths['before']},{paths['after']}\n")
    job = read_catalog(tmp_path / "cat.csv")[0]
    opts = MapOptions(model=tiny_model_dir, device="cpu", workers=0, tile=96, batch_size=2,
                      coregister="global").to_dict()
    report = process_site(job, str(tmp_path / "out"), opts, site_key(job, opts, model_fingerprint(tiny_model_dir)))
    assert report.status == "mapped", report.traceback
    co = report.pairs[0].coregistration
    print(co)
    assert co["applied"] and abs(co["dy_px"] - 1.3) <= 0.1 and abs(co["dx_px"] + 0.8) <= 0.1
    on_disk = json.loads((tmp_path / "out" / "naip" / "report.json").read_text())
    assert on_disk["coreg_applied"] is True and on_disk["coreg_mode"] == "global"
    assert abs(on_disk["coreg_dy_px"] - 1.3) <= 0.1 and on_disk["coreg_reliability"] >= 0.5

    merged = write_merged(tmp_path / "out", [job], [report], MapOptions(model=tiny_model_dir),
                          model_fingerprint(tiny_model_dir))
    sites = pyogrio.read_dataframe(merged, layer="sites")
    assert {"coreg_mode", "coreg_applied", "coreg_dx_px", "coreg_dy_px", "coreg_reliability"} <= set(sites.columns)
    assert abs(float(sites["coreg_dx_px"].iloc[0]) + 0.8) <= 0.1 and bool(sites["coreg_applied"].iloc[0])
