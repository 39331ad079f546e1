"""The synthetic mining-site generator: reproducible UTM GeoTIFFs, labelled change vs unlabelled nuisance."""

from __future__ import annotations

import numpy as np
import rasterio

from maskcd.data.synthetic import SyntheticPatchDataset, make_scene_pair, render_pair


def test_scene_pair_geotiffs_are_reproducible_and_georeferenced(tmp_path):
    first = make_scene_pair(tmp_path / "a", seed=7, size=256)
    again = make_scene_pair(tmp_path / "b", seed=7, size=256)
    other = make_scene_pair(tmp_path / "c", seed=8, size=256)
    assert set(first) >= {"before", "after", "truth"}
    arrays = {}
    for key in ("before", "after", "truth"):
        with rasterio.open(first[key]) as src, rasterio.open(again[key]) as same:
            assert src.crs.to_epsg() == 32633 and src.crs.is_projected
            assert src.res == (1.0, 1.0) and src.width == src.height == 256
            assert src.count == (1 if key == "truth" else 3) and src.dtypes[0] == "uint8"
            arrays[key] = src.read()
            np.testing.assert_array_equal(arrays[key], same.read())
            if key != "truth":
                tags = src.tags()
                assert tags["TIFFTAG_DATETIME"][:4] in ("2021", "2023") and "ACQUISITION_DATE" in tags
    with rasterio.open(other["before"]) as src:
        assert not np.array_equal(src.read(), arrays["before"])
    with rasterio.open(first["before"]) as a, rasterio.open(first["after"]) as b:
        assert a.tags()["ACQUISITION_DATE"] < b.tags()["ACQUISITION_DATE"]
    assert set(np.unique(arrays["truth"])) <= {0, 1}
    assert 0.01 < arrays["truth"].mean() < 0.7


def test_labelled_change_is_much_stronger_than_nuisance():
    rng = np.random.default_rng(3)
    before, after, truth = render_pair(rng, 512)
    a, b = before.astype(float), after.astype(float)
    diff = np.abs(a - b).sum(-1)
    assert truth.any() and (~truth.astype(bool)).any()
    # nuisance (illumination, season, shift, noise) alters unchanged pixels: not a copy of the before image
    assert diff[truth == 0].mean() > 5
    # after a per-band linear radiometric fit over ALL pixels (no truth used), changed pixels differ far more
    residual = np.zeros(truth.shape)
    for c in range(3):
        gain, offset = np.polyfit(a[..., c].ravel(), b[..., c].ravel(), 1)
        residual += np.abs(b[..., c] - (gain * a[..., c] + offset))
    assert residual[truth == 1].mean() > 2 * residual[truth == 0].mean()


def test_patch_dataset_items_are_deterministic_and_shaped():
    ds = SyntheticPatchDataset(4, seed=11, patch_size=64, scene_size=128)
    item = ds[2]
    assert item["imageA"].shape == (3, 64, 64) and item["imageA"].dtype.is_floating_point is False
    assert item["label"].shape == (64, 64) and set(item["label"].unique().tolist()) <= {0, 1}
    again = ds[2]
    assert all((item[k] == again[k]).all() for k in item)
    assert not (ds[1]["imageA"] == item["imageA"]).all()
