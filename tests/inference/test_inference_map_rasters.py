"""Stages 1–4 (align, tile, infer, stitch) on small seeded GeoTIFFs: the pitfall list of design/pipeline.md §4.8."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject

from maskcd.errors import InputError
from maskcd.inference import MapOptions, map_rasters

ORIGIN = (500000.0, 5100000.0)


def opts(**kw) -> MapOptions:
    base = dict(model="test", tile=64, overlap=16, batch_size=4, workers=0, device="cpu")
    base.update(kw)
    return MapOptions(**base)


def run(tmp_path, before, after, model, name="out", **kw):
    prob, mask = tmp_path / f"{name}_prob.tif", tmp_path / f"{name}_mask.tif"
    rr = map_rasters(before, after, prob, mask, opts(**kw), model=model, progress=False)
    return rr, prob, mask


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile, ds


@pytest.mark.parametrize("overlap", [0, 7, 16, 0.5])
def test_constant_predictions_give_a_constant_mosaic(tmp_path, geotiff_writer, rng, constant_model, image_maker, overlap):
    img = image_maker(rng, 150, 181)
    a = geotiff_writer(tmp_path / "a.tif", img)
    b = geotiff_writer(tmp_path / "b.tif", img)
    model = constant_model(0.6)
    rr, prob, mask = run(tmp_path, a, b, model, overlap=overlap, blend="cosine")
    p, prof, _ = read(prob)
    m, _, _ = read(mask)
    assert p.shape == (150, 181)
    assert (p == round(0.6 * 254)).all(), f"seams: values {np.unique(p)}"
    assert (m == 1).all()
    assert model.calls == len(rr.windows)
    assert rr.stats.valid_pixels == 150 * 181 and rr.stats.changed_pixels == 150 * 181
    assert (rr.stats.overlap_pixels > 0) == (rr.overlap > 0 or 150 % 48 != 0)
    assert rr.stats.overlap_consistency in (None, 1.0)


@pytest.mark.parametrize("blend", ["cosine", "mean", "crop"])
def test_pixelwise_model_mosaic_equals_direct_prediction(tmp_path, geotiff_writer, rng, pixel_model, image_maker, blend):
    """A pixel-wise model's mosaic is independent of tiling: any seam or misplaced window shows up as a difference."""
    a_img = image_maker(rng, 133, 170)
    b_img = a_img.copy()
    b_img[:, 40:90, 50:120] = 255 - b_img[:, 40:90, 50:120]
    a = geotiff_writer(tmp_path / "a.tif", a_img)
    b = geotiff_writer(tmp_path / "b.tif", b_img)
    rr, prob, _ = run(tmp_path, a, b, pixel_model, overlap=20, blend=blend, workers=2)
    p, _, _ = read(prob)
    ref = np.rint(pixel_model.reference(a_img, b_img) * 254)
    assert np.abs(p.astype(float) - ref).max() <= 1.0  # float16 store + uint8 rounding
    assert rr.stats.overlap_consistency == 1.0  # a pixel-wise model agrees with itself in every overlap


def test_overlap_consistency_detects_disagreeing_windows(tmp_path, geotiff_writer, rng, constant_model, image_maker):
    class Alternating(constant_model):
        """Window-dependent output: every other batch of one window predicts change everywhere."""

        def forward(self, image_a, image_b, labels=None):
            out = super().forward(image_a, image_b)
            out.change_prob[:] = float(self.calls % 2)
            return out

    img = image_maker(rng, 100, 100)
    a = geotiff_writer(tmp_path / "a.tif", img)
    rr, _, _ = run(tmp_path, a, a, Alternating(0.0), batch_size=1, overlap=16)
    assert rr.stats.overlap_pixels > 0 and rr.stats.overlap_consistency < 1.0


def test_scene_smaller_than_a_tile_is_padded_and_mapped(tmp_path, geotiff_writer, rng, pixel_model, image_maker):
    a_img = image_maker(rng, 37, 50)
    b_img = a_img.copy()
    b_img[:, 10:20, 10:30] = 0
    a = geotiff_writer(tmp_path / "a.tif", a_img)
    b = geotiff_writer(tmp_path / "b.tif", b_img)
    rr, prob, mask = run(tmp_path, a, b, pixel_model, tile=64)
    p, prof, _ = read(prob)
    assert p.shape == (37, 50) and len(rr.windows) == 1
    assert np.abs(p.astype(float) - np.rint(pixel_model.reference(a_img, b_img) * 254)).max() <= 1.0
    m, _, _ = read(mask)
    assert m[12, 15] == 1 and m[30, 40] == 0


def test_sizes_not_multiple_of_stride_cover_last_row_and_column(tmp_path, geotiff_writer, rng, constant_model, image_maker):
    img = image_maker(rng, 131, 197)  # stride 48 with tile 64: neither size is 64 + k*48
    a = geotiff_writer(tmp_path / "a.tif", img)
    rr, prob, _ = run(tmp_path, a, a, constant_model(0.25))
    p, _, _ = read(prob)
    assert (p[-1, :] == round(0.25 * 254)).all() and (p[:, -1] == round(0.25 * 254)).all()
    assert (p != 255).all()


def test_nodata_stripes_give_no_change_and_are_nodata(tmp_path, geotiff_writer, rng, pixel_model, image_maker):
    img = image_maker(rng, 160, 160)
    a_img, b_img = img.copy(), img.copy()
    a_img[:, 50:60, :] = 0  # nodata stripe in before
    b_img[:, :, 100:112] = 0  # nodata stripe in after (a zero-filled model input would scream "change" here)
    a = geotiff_writer(tmp_path / "a.tif", a_img, nodata=0)
    b = geotiff_writer(tmp_path / "b.tif", b_img, nodata=0)
    rr, prob, mask = run(tmp_path, a, b, pixel_model)
    p, pprof, _ = read(prob)
    m, mprof, _ = read(mask)
    assert pprof["nodata"] == 255 and mprof["nodata"] == 255
    assert (p[50:60] == 255).all() and (p[:, 100:112] == 255).all()
    assert (m[50:60] == 255).all() and (m[:, 100:112] == 255).all()
    assert (m[m != 255] == 0).all(), "identical valid data must give no change"
    assert rr.stats.changed_pixels == 0
    assert rr.stats.valid_pixels == int((m != 255).sum()) == 160 * 160 - 10 * 160 - 12 * 150


def test_float_nan_inputs_are_nodata_not_zeros(tmp_path, geotiff_writer, rng, pixel_model, image_maker):
    img = image_maker(rng, 96, 96).astype(np.float32)
    a_img, b_img = img.copy(), img.copy()
    b_img[:, 20:30, 20:70] = np.nan
    a = geotiff_writer(tmp_path / "a.tif", a_img)
    b = geotiff_writer(tmp_path / "b.tif", b_img)
    _, prob, mask = run(tmp_path, a, b, pixel_model)
    p, _, _ = read(prob)
    m, _, _ = read(mask)
    assert (p[20:30, 20:70] == 255).all() and (m[20:30, 20:70] == 255).all()
    assert (m[:20] == 0).all() and (p[:20] == 0).all()


def test_all_nodata_overlap_is_an_input_error_and_leaves_nothing(tmp_path, geotiff_writer, rng, constant_model, image_maker):
    img = image_maker(rng, 80, 80)
    a = geotiff_writer(tmp_path / "a.tif", img, nodata=0)
    b = geotiff_writer(tmp_path / "b.tif", np.zeros_like(img), nodata=0)
    before = set(tmp_path.iterdir())
    with pytest.raises(InputError, match="no valid pixels in common") as err:
        run(tmp_path, a, b, constant_model(0.5))
    assert "\n" not in str(err.value) and str(a) in str(err.value)
    assert set(tmp_path.iterdir()) == before


def test_failure_during_inference_leaves_nothing_behind(tmp_path, geotiff_writer, rng, constant_model, image_maker):
    class Boom(constant_model):
        def forward(self, image_a, image_b, labels=None):
            raise RuntimeError("boom")

    img = image_maker(rng, 100, 100)
    a = geotiff_writer(tmp_path / "a.tif", img)
    before = set(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="boom"):
        run(tmp_path, a, a, Boom(0.5))
    assert set(tmp_path.iterdir()) == before


def _reproject_to(img, src_crs, src_transform, dst_crs, path, res=None):
    transform, w, h = calculate_default_transform(src_crs, dst_crs, img.shape[2], img.shape[1],
                                                  *rasterio.transform.array_bounds(img.shape[1], img.shape[2], src_transform),
                                                  resolution=res)
    out = np.zeros((img.shape[0], h, w), np.uint8)
    reproject(img, out, src_transform=src_transform, src_crs=src_crs, dst_transform=transform, dst_crs=dst_crs,
              resampling=Resampling.bilinear, dst_nodata=0, src_nodata=0)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=img.shape[0], dtype="uint8", crs=dst_crs,
                       transform=transform, nodata=0) as ds:
        ds.write(out)
    return path


def test_different_crs_and_pixel_size_give_the_same_grid(tmp_path, geotiff_writer, rng, pixel_model, image_maker):
    """before UTM 33N at 1 m; after in EPSG:3857 at ~1.2 m covering a larger area: same output grid as a UTM after."""
    big = image_maker(rng, 220, 220, sigma=4.0)
    big_t = from_origin(ORIGIN[0] - 30, ORIGIN[1] + 30, 1.0, 1.0)
    before_img = big[:, 30:190, 30:190]
    a = geotiff_writer(tmp_path / "a.tif", before_img, origin=ORIGIN, res=1.0)
    b_utm = geotiff_writer(tmp_path / "b_utm.tif", before_img, origin=ORIGIN, res=1.0)
    b_3857 = _reproject_to(big, "EPSG:32633", big_t, "EPSG:3857", tmp_path / "b_3857.tif", res=1.2 * 1.45)
    with rasterio.open(b_3857) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.res[0] == pytest.approx(1.74)  # ≈1.2 m on the ground at 46°N
    _, p1, _ = run(tmp_path, a, b_utm, pixel_model, name="utm")
    _, p2, _ = run(tmp_path, a, b_3857, pixel_model, name="merc")
    with rasterio.open(p1) as d1, rasterio.open(p2) as d2, rasterio.open(a) as da_:
        assert d1.crs == d2.crs == da_.crs
        assert d1.transform == d2.transform == da_.transform
        assert (d1.width, d1.height) == (d2.width, d2.height) == (160, 160)
        q1, q2 = d1.read(1), d2.read(1)
    # the warped after matches the before closely away from the border: little false change
    inner = q2[5:-5, 5:-5]
    assert (inner != 255).all()
    assert np.median(inner) < 0.1 * 254 and (q1 == 0).all()


def test_geographic_before_is_mapped_on_local_utm(tmp_path, geotiff_writer, rng, constant_model, image_maker, caplog):
    img = image_maker(rng, 90, 120)
    t = from_origin(14.5, 46.05, 1.5e-5, 1e-5)
    a = geotiff_writer(tmp_path / "a.tif", img, crs="EPSG:4326", transform=t)
    with caplog.at_level(logging.WARNING):
        rr, prob, _ = run(tmp_path, a, a, constant_model(0.3))
    assert any("local UTM zone" in r.message for r in caplog.records)
    with rasterio.open(prob) as ds:
        assert ds.crs.to_epsg() == 32633
        assert not ds.crs.is_geographic
        assert (ds.read(1)[ds.height // 2 - 5 : ds.height // 2 + 5] == round(0.3 * 254)).all()


def test_aoi_crops_the_grid_and_masks_outside(tmp_path, geotiff_writer, rng, constant_model, image_maker):
    import geopandas as gpd
    import shapely

    img = image_maker(rng, 200, 200)
    a = geotiff_writer(tmp_path / "a.tif", img)
    tri = shapely.Polygon([(ORIGIN[0] + 20, ORIGIN[1] - 20), (ORIGIN[0] + 120, ORIGIN[1] - 20), (ORIGIN[0] + 20, ORIGIN[1] - 140)])
    gpd.GeoDataFrame(geometry=[tri], crs="EPSG:32633").to_file(tmp_path / "aoi.gpkg")
    _, prob, _ = run(tmp_path, a, a, constant_model(0.5), aoi=str(tmp_path / "aoi.gpkg"))
    with rasterio.open(prob) as ds:
        assert (ds.width, ds.height) == (100, 120)
        assert ds.transform.c == ORIGIN[0] + 20 and ds.transform.f == ORIGIN[1] - 20
        p = ds.read(1)
    assert p[2, 2] == 127 and p[-2, -2] == 255


def test_cogs_validate(tmp_path, geotiff_writer, rng, pixel_model, image_maker):
    """COG layout as GDAL's validate_cloud_optimized_geotiff.py checks it: tiled, overviews, IFDs before data,
    overview data before full-resolution data; plus nodata, dtype and the mask colour table."""
    a_img = image_maker(rng, 300, 260)
    b_img = a_img.copy()
    b_img[:, 100:200, 50:90] = 0
    a = geotiff_writer(tmp_path / "a.tif", a_img)
    b = geotiff_writer(tmp_path / "b.tif", b_img)
    _, prob, mask = run(tmp_path, a, b, pixel_model)
    for path in (prob, mask):
        with open(path, "rb") as f:
            head = f.read(1024)
        assert b"GDAL_STRUCTURAL_METADATA" in head and b"LAYOUT=IFDS_BEFORE_DATA" in head
        assert b"BLOCK_ORDER=ROW_MAJOR" in head
        with rasterio.open(path) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
            assert ds.dtypes[0] == "uint8" and ds.nodata == 255
            ovr = ds.overviews(1)
            assert ovr and ovr[0] == 2
            main_off = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        with rasterio.open(path, overview_level=0) as ov:
            ovr_off = int(ov.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        assert ovr_off < main_off, "overview data must come before the full-resolution data"
    with rasterio.open(mask) as ds:
        cmap = ds.colormap(1)
        assert cmap[1][:3] == (230, 25, 25) and cmap[0][:3] == (0, 0, 0)  # TIFF palettes carry no alpha
        assert set(np.unique(ds.read(1))) <= {0, 1, 255}


def test_reader_error_in_a_dataloader_worker_is_one_line(tmp_path, geotiff_writer, rng, constant_model, image_maker):
    """A file that disappears after the checks fails inside a worker; the error keeps its one-line message."""
    from maskcd.inference.dataset import WindowDataset
    from maskcd.inference.predict import make_accelerator, predict_to_store
    from maskcd.inference.store import TileStore
    from maskcd.inference.tiling import grid_windows
    from maskcd.io import align_pair

    img = image_maker(rng, 80, 80)
    a = geotiff_writer(tmp_path / "a.tif", img)
    b = geotiff_writer(tmp_path / "b.tif", img)
    model = constant_model(0.5)
    pair = align_pair(a, b, model.inference_spec)
    b.unlink()
    wins = grid_windows(80, 80, 64, 48)
    store = TileStore(tmp_path / "s.f16", len(wins), 64, 64).create()
    with pytest.raises(InputError) as err:
        predict_to_store(model, WindowDataset(pair, wins, 64), store, make_accelerator("cpu"), batch_size=2, workers=1)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"after image {b}") and "Traceback" not in msg
