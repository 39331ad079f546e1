"""Fixtures for the maskcd-map command-line tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage


@pytest.fixture
def scene_pair(tmp_path, geotiff_writer):
    """A seeded 3-band uint8 pair (UTM 33N, 1 m) with a bright block appearing in the after image."""

    def make(h: int = 96, w: int = 120, name: str = "s"):
        rng = np.random.default_rng(7)
        x = np.stack([ndimage.gaussian_filter(rng.random((h, w)), 2.0) for _ in range(3)])
        a = (30 + 180 * (x - x.min()) / np.ptp(x)).astype(np.uint8)
        b = a.copy()
        b[:, 20:50, 30:70] = 250
        pa = geotiff_writer(tmp_path / f"{name}_before.tif", a, tags={"ACQUISITION_DATE": "2021-06-15"})
        pb = geotiff_writer(tmp_path / f"{name}_after.tif", b, tags={"ACQUISITION_DATE": "2023-07-02"})
        return pa, pb

    return make
