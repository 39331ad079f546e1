"""Site and pair reports are dataclasses: report.json round trip, failed reports, the sites-layer row."""

from __future__ import annotations

import json

import pytest

from maskcd.batch.report import PairReport, SiteReport, coreg_summary
from maskcd.batch.summary import read_report, write_report


def _mapped() -> SiteReport:
    pairs = [
        PairReport("changes_a", before="a.tif", after="b.tif", before_date="2020-01-01", after_date="2021-01-01",
                   n_polygons=3, changed_km2=0.5, valid_km2=2.0, n_pixels=1_000_000, shift_px=[0.1, -0.2],
                   coregistration={"mode": "global", "applied": False, "dx_px": -0.2, "dy_px": 0.1,
                                   "reliability": 0.9}, run_id="r1", seconds=2.0),
        PairReport("changes_b", n_polygons=1, changed_km2=0.25, valid_km2=2.5, n_pixels=1_000_000,
                   shift_px=[1.5, 0.0], coregistration={"mode": "global", "applied": True, "dx_px": 0.0,
                                                       "dy_px": 1.5, "reliability": 0.6, "rmse_px": 0.3},
                   seconds=3.0),
    ]
    return SiteReport("s1", "mapped", n_pairs=2, layers=["changes_a", "changes_b"], n_polygons=4,
                      changed_km2=0.75, valid_km2=2.5, n_pixels=2_000_000, max_shift_px=1.5,
                      **coreg_summary(pairs), pairs=pairs, footprint_wkt="POINT (1 2)", footprint_crs="EPSG:32633",
                      timings={"total": 5.5}, seconds=5.5)


def test_report_json_round_trip(tmp_path):
    report = _mapped()
    write_report(report, tmp_path / "report.json")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["site_id"] == "s1" and data["pairs"][1]["layer"] == "changes_b"
    assert "error" not in data and "traceback" not in data
    back = read_report(tmp_path)
    assert back == report and isinstance(back.pairs[0], PairReport)
    skipped = read_report(tmp_path, status="skipped")
    assert skipped.status == "skipped" and skipped.has_outputs and not skipped.failed


def test_coreg_summary_takes_the_largest_shift_and_the_lowest_reliability():
    report = _mapped()
    assert (report.coreg_dy_px, report.coreg_applied, report.coreg_reliability, report.coreg_rmse_px) == (
        1.5, True, 0.6, 0.3)
    assert coreg_summary([PairReport("x")]) == {}


def test_failed_report_and_sites_row():
    failed = SiteReport.failure("bad", "InputError: x.tif is not a raster", traceback="Traceback ...", seconds=0.5)
    assert failed.failed and not failed.has_outputs
    assert failed.to_dict() == {"site_id": "bad", "status": "failed", "error": "InputError: x.tif is not a raster",
                                "traceback": "Traceback ...", "seconds": 0.5}
    row = failed.sites_row()
    assert row["status"] == "failed" and row["error"].startswith("InputError") and row["n_pairs"] == 0
    mapped = SiteReport.from_dict({**_mapped().to_dict(), "status": "skipped"}).sites_row()
    assert mapped["status"] == "mapped" and mapped["coreg_dy_px"] == 1.5 and mapped["error"] is None


def test_mp_per_s_and_bad_status():
    assert _mapped().mp_per_s == pytest.approx(2.0 / 5.0)
    assert SiteReport("x", "mapped").mp_per_s is None
    with pytest.raises(ValueError, match="status must be one of"):
        SiteReport("x", "done")


def test_a_report_that_is_not_one_is_unreadable(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"n_pairs": 1}))
    with pytest.raises(ValueError, match="not a site report"):
        read_report(tmp_path)
