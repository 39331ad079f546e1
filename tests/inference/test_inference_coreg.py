"""``map_scene`` with ``--coregister``: the correction restores the change mask of the unshifted pair (issue 13)."""

from __future__ import annotations

import numpy as np
import pyogrio
import rasterio
from scipy import ndimage

from maskcd.inference import MapOptions, map_scene
from maskcd.inference.pipeline import map_rasters
from maskcd.vectorization import read_run_metadata

NAIP = ("geotiff_bitemporal", "naip_northdakota_m_4709963_se_14")


def write_crop(src_path, dst, row: int, col: int, size: int, shift: tuple[float, float] | None = None):
    """A ``size²`` crop of a real image; ``shift`` moves its content (Fourier shift) with the geotransform kept."""
    with rasterio.open(src_path) as src:
        data = src.read(window=((row, row + size), (col, col + size))).astype(np.float64)
        profile = src.profile
        transform = src.window_transform(((row, row + size), (col, col + size)))
    if shift is not None:
        data = np.stack([np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(b), shift)).real for b in data])
    profile.update(width=size, height=size, transform=transform, nodata=None)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(np.clip(np.round(data), 1, 255).astype(np.uint8))
    return dst


def _mask(result) -> np.ndarray:
    with rasterio.open(result.mask_path) as ds:
        return ds.read(1) == 1


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_global_correction_restores_the_mask_of_the_unshifted_pair(tmp_path, shared_data, pixel_model):
    folder = shared_data(*NAIP)
    before = write_crop(folder / "m_4709963_se_14_1_20150926.tif", tmp_path / "b2015.tif", 200, 300, 256)
    after = write_crop(folder / "m_4709963_se_14_1_20200831.tif", tmp_path / "a2020.tif", 200, 300, 256)
    shifted = write_crop(folder / "m_4709963_se_14_1_20200831.tif", tmp_path / "a2020_shifted.tif", 200, 300, 256,
                         shift=(1.4, -1.7))
    pixel_model.gain = 2.0  # fixed pixel-wise model: p = 2·mean|after - before|/255, change above 0.5

    def opts(mode):
        return MapOptions(model="pixel-diff", bands=[1, 2, 3], device="cpu", workers=0, batch_size=4,
                          overwrite=True, coregister=mode)

    def rasters(after_path, mode, name):  # stages 1-4 only (no polygons needed for the masks)
        rr = map_rasters(before, after_path, tmp_path / f"{name}_p.tif", tmp_path / f"{name}_m.tif", opts(mode),
                         model=pixel_model, progress=False)
        with rasterio.open(tmp_path / f"{name}_m.tif") as ds:
            return rr.coreg, ds.read(1) == 1

    co_ref, m_ref = rasters(after, "global", "unshifted")
    co_off, m_off = rasters(shifted, "off", "shifted_off")
    on = map_scene(before, shifted, tmp_path / "shifted_global.gpkg", opts("global"), model=pixel_model,
                   progress=False)
    m_on = _mask(on)
    iou_on, iou_off = _iou(m_ref, m_on), _iou(m_ref, m_off)
    d = (on.coregistration["dy_px"] - co_ref.dy, on.coregistration["dx_px"] - co_ref.dx)
    print(f"change fraction {m_ref.mean():.3f}; shift difference shifted - unshifted = {d[0]:+.3f}, {d[1]:+.3f} px "
          f"(truth +1.4, -1.7); IoU vs the unshifted pair's mask: --coregister global {iou_on:.3f}, off {iou_off:.3f}")
    assert 0.02 < m_ref.mean() < 0.5  # a mask with content, not everything or nothing
    assert abs(d[0] - 1.4) <= 0.1 and abs(d[1] + 1.7) <= 0.1
    assert on.coregistration["applied"] and not co_off.applied and co_off.mode == "off"
    assert iou_on >= 0.9
    assert iou_off <= iou_on - 0.15

    meta = read_run_metadata(on.gpkg, layer="changes")
    co = meta["coregistration"]
    assert co["mode"] == "global" and co["applied"] is True
    assert set(co) >= {"mode", "dx_px", "dy_px", "applied", "reliability", "n_tie_points", "rmse_px"}
    assert co["n_tie_points"] >= 4 and co["reliability"] >= 0.5
    # the tie-point layer belongs to --coregister local; global keeps its windows' summary in run_metadata
    assert "coreg_tie_points" not in {name for name, _ in pyogrio.list_layers(on.gpkg)}
