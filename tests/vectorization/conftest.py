"""Fixtures for the vectorisation tests: small seeded change masks written as UTM GeoTIFFs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage


def blobby_mask(rng: np.random.Generator, shape=(120, 150), fraction=0.12, sigma=3.0) -> np.ndarray:
    """{0, 1} uint8 mask of smooth random blobs (thresholded Gaussian-filtered noise), about ``fraction`` change."""
    z = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (z > np.quantile(z, 1 - fraction)).astype(np.uint8)


def prob_for(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 probability raster (0-254, 255 nodata) consistent with ``mask``: high on change, low elsewhere."""
    prob = np.where(mask == 1, rng.integers(128, 255, mask.shape), rng.integers(0, 127, mask.shape)).astype(np.uint8)
    prob[mask == 255] = 255
    return prob


@pytest.fixture
def blobby():
    return blobby_mask


@pytest.fixture
def scene(tmp_path, rng, geotiff_writer):
    """Write ``(mask, prob)`` GeoTIFFs (UTM 33N, 0.5 m pixels, nodata 255) and return their paths."""

    def write(mask: np.ndarray, prob: np.ndarray | None = None, *, res: float = 0.5, crs: str = "EPSG:32633",
              origin=(500000.0, 5100000.0), name: str = "scene"):
        mpath = geotiff_writer(tmp_path / f"{name}_mask.tif", mask.astype(np.uint8), nodata=255, res=res, crs=crs,
                               origin=origin)
        if prob is None:
            prob = prob_for(mask, rng)
        ppath = geotiff_writer(tmp_path / f"{name}_prob.tif", prob.astype(np.uint8), nodata=255, res=res, crs=crs,
                               origin=origin)
        return mpath, ppath

    return write
