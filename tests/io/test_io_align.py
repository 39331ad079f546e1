"""Stage 1: input checks, band selection, WarpedVRT reads (never boundless), validity and the shift estimate."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
import rasterio.vrt
from rasterio.enums import ColorInterp
from scipy import ndimage

from maskcd.errors import InputError
from maskcd.io import align_pair, estimate_shift, phase_correlation
from maskcd.models.base import InferenceSpec

SPEC = InferenceSpec()
ORIGIN = (500000.0, 5100000.0)


def img(rng, h=96, w=96, bands=3, sigma=2.5):
    x = np.stack([ndimage.gaussian_filter(rng.random((h, w)), sigma) for _ in range(bands)])
    return (10 + 230 * (x - x.min()) / np.ptp(x)).astype(np.uint8)


def one_line_naming(err, path):
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg


def test_missing_file(tmp_path, geotiff_writer, rng):
    a = geotiff_writer(tmp_path / "a.tif", img(rng))
    with pytest.raises(InputError, match="does not exist") as err:
        align_pair(a, tmp_path / "nope.tif", SPEC)
    one_line_naming(err, tmp_path / "nope.tif")


def test_not_a_raster(tmp_path, geotiff_writer, rng):
    a = geotiff_writer(tmp_path / "a.tif", img(rng))
    bad = tmp_path / "b.tif"
    bad.write_text("this is not a GeoTIFF\n")
    with pytest.raises(InputError, match="not a readable raster") as err:
        align_pair(a, bad, SPEC)
    one_line_naming(err, bad)


def test_truncated_geotiff(tmp_path, geotiff_writer, rng):
    a = geotiff_writer(tmp_path / "a.tif", img(rng, 300, 300))
    with rasterio.open(a) as ds:
        assert ds.block_shapes[0][0] < 300  # strips: the cut removes the last blocks
    data = a.read_bytes()
    bad = tmp_path / "cut.tif"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError) as err:
        align_pair(bad, a, SPEC)
    one_line_naming(err, bad)


def test_missing_crs(tmp_path, geotiff_writer, rng):
    a = geotiff_writer(tmp_path / "a.tif", img(rng))
    b = geotiff_writer(tmp_path / "b.tif", img(rng), crs=None)
    with pytest.raises(InputError, match="has no CRS") as err:
        align_pair(a, b, SPEC)
    one_line_naming(err, b)


def test_no_overlap(tmp_path, geotiff_writer, rng):
    a = geotiff_writer(tmp_path / "a.tif", img(rng))
    b = geotiff_writer(tmp_path / "b.tif", img(rng), origin=(ORIGIN[0] + 5000, ORIGIN[1]))
    with pytest.raises(InputError, match="do not overlap") as err:
        align_pair(a, b, SPEC)
    one_line_naming(err, b)


def test_band_count_mismatch(tmp_path, geotiff_writer, rng):
    a = geotiff_writer(tmp_path / "a.tif", img(rng, bands=4))
    b = geotiff_writer(tmp_path / "b.tif", img(rng, bands=3))
    with pytest.raises(InputError, match="band-count mismatch.*--bands") as err:
        align_pair(a, b, SPEC)
    one_line_naming(err, b)
    assert align_pair(a, b, SPEC, bands=[1, 2, 3]).bands == (1, 2, 3)
    with pytest.raises(InputError, match="has only 3 band"):
        align_pair(a, b, SPEC, bands=[2, 3, 4])
    with pytest.raises(InputError, match="expects 3"):
        align_pair(a, b, SPEC, bands=[1, 2])


def test_too_few_bands_for_the_model(tmp_path, geotiff_writer, rng):
    a = geotiff_writer(tmp_path / "a.tif", img(rng, bands=1))
    with pytest.raises(InputError, match="needs 3"):
        align_pair(a, a, SPEC)


def test_bands_matched_by_colour_interpretation(tmp_path, geotiff_writer, rng):
    a = geotiff_writer(tmp_path / "a.tif", img(rng, bands=4))
    with rasterio.open(a, "r+") as ds:
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    assert align_pair(a, a, SPEC).bands == (3, 2, 1)


def test_dates_from_tags_and_names(tmp_path, geotiff_writer, rng):
    a = geotiff_writer(tmp_path / "a.tif", img(rng), tags={"TIFFTAG_DATETIME": "2021:06:15 10:30:00"})
    b = geotiff_writer(tmp_path / "scene_20230702.tif", img(rng))
    pair = align_pair(a, b, SPEC)
    assert (pair.before_date, pair.after_date) == ("2021-06-15", "2023-07-02")


def test_warped_reads_never_boundless_and_uncovered_is_nodata(tmp_path, geotiff_writer, rng, monkeypatch):
    """The after image covers only the right part of the before grid, on a 0.5-px offset grid: the VRT is built on
    the full reference grid, reads never pass boundless=True, and the uncovered part comes back invalid."""
    a = geotiff_writer(tmp_path / "a.tif", img(rng, 100, 100))
    b = geotiff_writer(tmp_path / "b.tif", img(rng, 100, 100), origin=(ORIGIN[0] + 40.5, ORIGIN[1] - 0.5))
    calls = []
    orig_read, orig_masks = rasterio.vrt.WarpedVRT.read, rasterio.vrt.WarpedVRT.read_masks

    def spy(name, fn):
        def wrapped(self, *args, **kw):
            calls.append((name, kw.get("boundless")))
            return fn(self, *args, **kw)
        return wrapped

    monkeypatch.setattr(rasterio.vrt.WarpedVRT, "read", spy("read", orig_read))
    monkeypatch.setattr(rasterio.vrt.WarpedVRT, "read_masks", spy("read_masks", orig_masks))
    pair = align_pair(a, b, SPEC)
    with pair.reader() as rd:
        for r in range(0, 100, 50):
            for c in range(0, 100, 50):
                _, bb, valid = rd.read(r, c, 50, 50)
                if c == 0:
                    assert not valid[:, :40].any() and valid[1:, 41:].all()
                    assert (bb[:, ~valid] == 0).all()
    assert calls and all(not bl for _, bl in calls)
    assert "read" in {n for n, _ in calls}
    with pytest.raises(ValueError, match="boundless"):
        with rasterio.open(b) as src, rasterio.vrt.WarpedVRT(src) as vrt:
            orig_read(vrt, 1, window=((0, 10), (0, 10)), boundless=True)


def test_alpha_band_validity(tmp_path, rng):
    """Validity from an alpha band (no nodata value): alpha 0 pixels are invalid after warping."""
    data = img(rng, 64, 64)
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :20] = 0
    path = tmp_path / "alpha.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint8", crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(*ORIGIN, 1, 1), photometric="RGB", alpha="YES") as ds:
        ds.write(np.concatenate([data, alpha[None]]))
    pair = align_pair(path, path, SPEC, bands=[1, 2, 3])
    with pair.reader() as rd:
        _, _, valid = rd.read(0, 0, 64, 64)
    assert not valid[:, :20].any() and valid[:, 21:].all()


def test_phase_correlation_recovers_subpixel_shift(rng):
    a = ndimage.gaussian_filter(rng.random((128, 128)), 2)
    b = ndimage.shift(a, (1.5, -2.25), mode="wrap", order=3)
    dy, dx, peak = phase_correlation(a, b)
    assert abs(dy - 1.5) < 0.2 and abs(dx + 2.25) < 0.2 and peak > 0.2


def test_shift_above_one_pixel_is_recorded_and_warned(tmp_path, geotiff_writer, rng, caplog):
    base = img(rng, 300, 300, sigma=2.0)
    a = geotiff_writer(tmp_path / "a.tif", base[:, 10:266, 10:266])
    b = geotiff_writer(tmp_path / "b.tif", base[:, 7:263, 12:268])  # content moved 3 px down, 2 px left
    pair = align_pair(a, b, SPEC)
    with caplog.at_level(logging.INFO):
        est = estimate_shift(pair, size=128)
    assert est.n_windows >= 1
    assert abs(est.dy - 3) < 0.3 and abs(est.dx + 2) < 0.3
    assert any(r.levelno == logging.WARNING and "above 1 px" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        est0 = estimate_shift(align_pair(a, a, SPEC), size=128)
    assert est0.magnitude < 0.1 and not any(r.levelno == logging.WARNING for r in caplog.records)
