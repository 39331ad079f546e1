"""Co-registration (issue 13): sub-pixel global shift on real NAIP, reliability on unrelated images and noise."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from maskcd.errors import ConfigError
from maskcd.io import align_pair
from maskcd.io.coreg import MIN_APPLY_PX, estimate, estimate_global, match_window, to_gray
from maskcd.models.base import InferenceSpec

NAIP = ("geotiff_bitemporal", "naip_northdakota_m_4709963_se_14")
SPEC = InferenceSpec(input_bands=("red", "green", "blue"), tile_size=64)


def fourier_shift(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Move the content of ``(C, H, W)`` by ``(dy, dx)`` px (exact for band-limited content; periodic borders)."""
    return np.stack([np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(b), (dy, dx))).real for b in img])


def write_crop(src_path, dst, row: int, col: int, size: int, shift: tuple[float, float] | None = None,
               src_offset: tuple[int, int] | None = None):
    """A ``size²`` crop of a real image; ``shift`` moves its content with the geotransform kept; ``src_offset``
    takes the pixels from elsewhere but keeps the crop's geotransform (an unrelated image of the same place)."""
    r0, c0 = src_offset or (row, col)
    with rasterio.open(src_path) as src:
        data = src.read(window=((r0, r0 + size), (c0, c0 + size))).astype(np.float64)
        profile = src.profile
        transform = src.window_transform(((row, row + size), (col, col + size)))
    if shift is not None:
        data = fourier_shift(data, *shift)
    profile.update(width=size, height=size, transform=transform, nodata=None)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(np.clip(np.round(data), 1, 255).astype(np.uint8))
    return dst


def test_global_recovers_a_known_subpixel_shift_of_real_naip_within_a_tenth_of_a_pixel(tmp_path, shared_data):
    src = shared_data(*NAIP) / "m_4709963_se_14_1_20200831.tif"
    truth = (0.37, -1.62)
    before = write_crop(src, tmp_path / "before.tif", 150, 250, 384)
    after = write_crop(src, tmp_path / "after.tif", 150, 250, 384, shift=truth)
    pair = align_pair(before, after, SPEC, bands=[1, 2, 3])
    co = estimate_global(pair)
    print(f"estimated dy={co.dy:+.4f} dx={co.dx:+.4f} (truth {truth}), reliability {co.reliability:.2f}, "
          f"{co.n_tie_points} windows, rmse {co.rmse_px:.4f} px")
    assert abs(co.dy - truth[0]) <= 0.1 and abs(co.dx - truth[1]) <= 0.1
    assert co.applied and co.reliability >= 0.9 and co.n_tie_points >= 4
    # the correction applied inside the after image's warp leaves no residual shift
    from dataclasses import replace

    fixed = replace(pair, coreg=co)
    with fixed.reader() as rd, pair.reader() as raw:
        a, b, valid = rd.read(96, 96, 192, 192)
        _, b_raw, _ = raw.read(96, 96, 192, 192)
    assert valid.all()
    residual = match_window(to_gray(a), to_gray(b))
    before_fix = match_window(to_gray(a), to_gray(b_raw))
    print(f"residual after correction dy={residual.dy:+.4f} dx={residual.dx:+.4f}; before {before_fix.dy:+.3f} "
          f"{before_fix.dx:+.3f}")
    assert abs(residual.dy) <= 0.1 and abs(residual.dx) <= 0.1
    assert abs(before_fix.dx - truth[1]) <= 0.1


def test_small_shift_is_recorded_but_not_applied(tmp_path, shared_data):
    src = shared_data(*NAIP) / "m_4709963_se_14_1_20200831.tif"
    before = write_crop(src, tmp_path / "before.tif", 150, 250, 256)
    after = write_crop(src, tmp_path / "after.tif", 150, 250, 256, shift=(0.12, -0.08))
    co = estimate(align_pair(before, after, SPEC, bands=[1, 2, 3]), "global")
    assert co.reliability >= 0.9 and np.hypot(co.dy, co.dx) < MIN_APPLY_PX
    assert abs(co.dy - 0.12) <= 0.1 and abs(co.dx + 0.08) <= 0.1
    assert not co.applied


@pytest.mark.parametrize("kind", ["unrelated", "noise"])
def test_unrelated_images_or_noise_are_not_applied_and_not_warned(tmp_path, shared_data, kind, caplog):
    src = shared_data(*NAIP) / "m_4709963_se_14_1_20200831.tif"
    before = write_crop(src, tmp_path / "before.tif", 100, 100, 256)
    if kind == "unrelated":  # another part of the scene under the same geotransform
        after = write_crop(src, tmp_path / "after.tif", 100, 100, 256, src_offset=(420, 640))
    else:
        rng = np.random.default_rng(7)
        with rasterio.open(before) as ds:
            profile = ds.profile
        after = tmp_path / "after.tif"
        with rasterio.open(after, "w", **profile) as out:
            out.write(rng.integers(1, 255, (4, 256, 256), dtype=np.uint8))
    pair = align_pair(before, after, SPEC, bands=[1, 2, 3])
    with caplog.at_level(logging.INFO, logger="maskcd"):
        co = estimate(pair, "global")
    print(kind, co.to_metadata())
    assert not co.applied
    assert co.reliability < 0.5
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.message for r in caplog.records]
    meta = co.to_metadata()
    assert set(meta) >= {"mode", "dx_px", "dy_px", "applied", "reliability", "n_tie_points", "rmse_px"}


def test_off_estimates_nothing(tmp_path, shared_data):
    src = shared_data(*NAIP) / "m_4709963_se_14_1_20200831.tif"
    before = write_crop(src, tmp_path / "before.tif", 100, 100, 128)
    co = estimate(align_pair(before, before, SPEC, bands=[1, 2, 3]), "off")
    assert co.to_metadata()["mode"] == "off" and not co.applied and co.n_tie_points == 0
    with pytest.raises(ConfigError, match="--coregister must be one of"):
        estimate(align_pair(before, before, SPEC, bands=[1, 2, 3]), "sideways")
