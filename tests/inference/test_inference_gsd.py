"""``--gsd``: a 0.3 m pair mapped with a 1 m model runs at 1 m, and polygons land where the shapes are (issue 13)."""

from __future__ import annotations

import pytest
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.transform import from_origin

from maskcd.inference import MapOptions, map_scene
from maskcd.io import align_pair
from maskcd.io.align import resolve_gsd
from maskcd.models.base import InferenceSpec
from maskcd.vectorization import read_run_metadata

SPEC_1M = InferenceSpec(input_bands=("red", "green", "blue"), value_scale=255.0, image_mean=(0.0, 0.0, 0.0),
                        image_std=(1.0, 1.0, 1.0), tile_size=64, gsd=1.0)
X0, Y0, RES, SIZE = 500000.0, 5100000.0, 0.3, 600  # a 180 m square at 0.3 m


def _shapes():
    """Shapes at known map coordinates, not aligned with either pixel grid."""
    return [
        shapely.box(X0 + 17.35, Y0 - 61.8, X0 + 49.05, Y0 - 40.15),
        shapely.Point(X0 + 120.4, Y0 - 50.7).buffer(13.3, quad_segs=32),
        shapely.Polygon([(X0 + 30.2, Y0 - 150.6), (X0 + 80.9, Y0 - 160.3), (X0 + 60.1, Y0 - 110.45)]),
    ]


@pytest.fixture
def pair_03m(tmp_path, geotiff_writer, image_maker, rng):
    transform = from_origin(X0, Y0, RES, RES)
    base = image_maker(rng, SIZE, SIZE, sigma=6.0) // 2 + 40  # dim, smooth background
    inside = rasterize([(s, 1) for s in _shapes()], out_shape=(SIZE, SIZE), transform=transform).astype(bool)
    after = base.copy()
    after[:, inside] = 240
    before_path = geotiff_writer(tmp_path / "b_03m.tif", base, transform=transform)
    after_path = geotiff_writer(tmp_path / "a_03m.tif", after, transform=transform)
    return before_path, after_path


def test_resolve_gsd():
    assert resolve_gsd("native", 0.3, 1.0) is None
    assert resolve_gsd("model", 0.3, 1.0) == 1.0
    assert resolve_gsd("model", 0.8, 1.0) is None  # within 1.5x: the input grid is kept
    assert resolve_gsd("model", 0.3, None) is None
    assert resolve_gsd(2.5, 0.3, 1.0) == 2.5 and resolve_gsd("2.5", 0.3, None) == 2.5


def test_03m_pair_with_a_1m_model_maps_at_1m_and_polygons_land_on_the_shapes(tmp_path, pair_03m, pixel_model):
    pixel_model.spec = SPEC_1M
    pixel_model.gain = 2.0  # p ≈ 1 inside a shape: a mixed 1 m pixel is change when about half of it is covered
    before, after = pair_03m
    opts = MapOptions(model="pixel-diff-1m", device="cpu", workers=0, batch_size=8, overwrite=True,
                      coregister="off", simplify=0.0)
    assert opts.gsd == "model"  # the default
    res = map_scene(before, after, tmp_path / "gsd.gpkg", opts, model=pixel_model, progress=False)
    with rasterio.open(res.mask_path) as ds:
        assert ds.res == (1.0, 1.0) and (ds.width, ds.height) == (180, 180)
        assert (ds.transform.c, ds.transform.f) == (X0, Y0)
    meta = read_run_metadata(res.gpkg, layer="changes")
    assert meta["grid"]["res"] == [1.0, 1.0] and meta["grid"]["input_res"] == pytest.approx(RES)
    assert meta["grid"]["resampling"] == "average" and meta["grid"]["width"] == 180

    import geopandas as gpd

    polys = gpd.read_file(res.gpkg, layer="changes").geometry
    assert len(polys) == 3
    for shape in _shapes():
        match = [p for p in polys if p.intersects(shape)]
        assert len(match) == 1
        dist = shapely.hausdorff_distance(match[0], shape, densify=0.05)
        print(f"shape area {shape.area:.0f} m², polygon area {match[0].area:.0f} m², Hausdorff distance {dist:.2f} m")
        assert dist <= 1.0  # within one model pixel

    # native keeps the 0.3 m grid
    native = align_pair(before, after, SPEC_1M, gsd="native")
    assert native.grid.res == pytest.approx((RES, RES)) and not native.warp_before
