"""Scene catalogs read with TorchGeo: dates on different grids aligned, AOI-restricted sampling, polygon labels."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch

from maskcd.data.scenes import ChipSpec, SceneChipDataset, SceneSite, SiteData, read_catalog, write_catalog
from maskcd.errors import InputError
from maskcd.models.base import InferenceSpec


@pytest.fixture
def site_files(tmp_path, geotiff_writer, rng):
    content = rng.integers(0, 255, (3, 84, 84), dtype=np.uint8)
    # before: the central 64x64 of the content; after: all 84x84 on a grid whose origin is 10 px further north-west
    before = geotiff_writer(tmp_path / "before.tif", content[:, 10:74, 10:74], origin=(500000.0, 5100000.0))
    after = geotiff_writer(tmp_path / "after.tif", content, origin=(499990.0, 5100010.0))
    label = np.zeros((64, 64), np.uint8)
    label[:, 32:] = 1
    label[0:4, :] = 255
    truth = geotiff_writer(tmp_path / "truth.tif", label, origin=(500000.0, 5100000.0))
    return {"before": before, "after": after, "label": truth, "content": content}


def test_dates_on_offset_grids_are_read_aligned(site_files):
    site = SiteData(SceneSite("s", site_files["before"], site_files["after"], label=site_files["label"]))
    assert site.roi.bounds == (500000.0, 5099936.0, 500064.0, 5100000.0)
    queries = site.grid_queries(32, 32)
    assert len(queries) == 4
    for q in queries:
        sample = site.read(q)
        a, b = sample["image_a"].numpy(), sample["image_b"].numpy()
        np.testing.assert_array_equal(a, b)  # same ground, same pixels, although the files' grids differ
        col = int(round(q[0].start - 500000.0))
        assert set(np.unique(sample["label"].numpy())) <= {0, 1, 255}
        assert (sample["label"].numpy()[4:, :] == (1 if col >= 32 else 0)).all()


def test_random_chips_stay_in_the_aoi_and_are_seeded(site_files, tmp_path):
    aoi = shapely.box(500000.0, 5099936.0, 500030.0, 5100000.0)  # west half
    gpd.GeoDataFrame(geometry=[aoi], crs="EPSG:32633").to_file(tmp_path / "aoi.gpkg")
    catalog = write_catalog(tmp_path / "cat.yaml", [{"name": "s", "before": site_files["before"],
                                                     "after": site_files["after"], "label": site_files["label"],
                                                     "aoi": tmp_path / "aoi.gpkg", "split": "train"}])
    site = SiteData(read_catalog(catalog)[0])
    assert site.roi.equals(aoi)
    spec = InferenceSpec()
    for batch_sampler in (False, True):
        ds = SceneChipDataset([site], spec, ChipSpec(size=16, chips_per_site=12, augment=True,
                                                     batch_sampler=batch_sampler), train=True, seed=5)
        for _, q, _ in ds.items:
            assert aoi.contains(shapely.Point((q[0].start + q[0].stop) / 2, (q[1].start + q[1].stop) / 2))
            assert q[0].stop - q[0].start == pytest.approx(16.0)
        again = SceneChipDataset([site], spec, ChipSpec(size=16, chips_per_site=12, augment=True,
                                                        batch_sampler=batch_sampler), train=True, seed=5)
        assert [i[1][:2] for i in ds.items] == [i[1][:2] for i in again.items]
        torch.testing.assert_close(ds[3]["image_a"], again[3]["image_a"])
        ds.set_epoch(1)
        assert [i[1][:2] for i in ds.items] != [i[1][:2] for i in again.items]


def test_polygon_labels_and_bad_catalogs(site_files, tmp_path):
    square = shapely.box(500010.0, 5099970.0, 500020.0, 5099980.0)
    gpd.GeoDataFrame(geometry=[square], crs="EPSG:32633").to_file(tmp_path / "changes.gpkg")
    site = SiteData(SceneSite("p", site_files["before"], site_files["after"], labels=tmp_path / "changes.gpkg"))
    q = site.grid_queries(64, 64)[0]
    label = site.read(q)["label"].numpy()
    assert label.sum() == 100 and label[20:30, 10:20].all()
    far = site.grid_queries(16, 16)[0]  # a chip away from every polygon: all unchanged
    assert site.read(far)["label"].sum() == 0
    with pytest.raises(InputError, match="exactly one"):
        SceneSite("x", site_files["before"], site_files["after"])
    with pytest.raises(InputError, match="does not exist"):
        SceneSite("x", site_files["before"], tmp_path / "missing.tif", label=site_files["label"])
    (tmp_path / "empty.yaml").write_text("sites: []\n")
    with pytest.raises(InputError, match="no 'sites'"):
        read_catalog(tmp_path / "empty.yaml")
