"""Window generation (TorchGeo GridGeoSampler wrapped), blend weights, tile store and rank sharding."""

from __future__ import annotations


import numpy as np
import pytest
from torchgeo.samplers.utils import tile_to_chips

from maskcd.errors import ConfigError, InputError
from maskcd.inference.blend import WEIGHT_FLOOR, window_weights
from maskcd.inference.store import TileStore
from maskcd.inference.tiling import grid_windows, resolve_overlap


def coverage(windows, h, w):
    cov = np.zeros((h, w), np.int32)
    for win in windows:
        assert 0 <= win.row and win.row + win.height <= h and 0 <= win.col and win.col + win.width <= w
        assert all(isinstance(v, int) for v in (win.row, win.col, win.height, win.width))
        cov[win.row : win.row + win.height, win.col : win.col + win.width] += 1
    return cov


@pytest.mark.parametrize("h,w,tile,stride", [(724, 934, 256, 192), (257, 513, 64, 48), (1000, 300, 128, 128),
                                             (130, 129, 64, 33), (64, 64, 64, 48)])
def test_windows_cover_every_pixel_inside_the_scene(h, w, tile, stride):
    wins = grid_windows(h, w, tile, stride)
    cov = coverage(wins, h, w)
    assert cov.min() >= 1, "a pixel (last row/column?) is not covered"
    # TorchGeo's chip count per axis, with the overhanging last chip shifted back inside (duplicates merged)
    rows, cols = tile_to_chips((0, 0, w, h), (tile, tile), (stride, stride))
    assert len({x.row for x in wins}) <= rows and len({x.col for x in wins}) <= cols
    assert max(x.row for x in wins) == h - tile and max(x.col for x in wins) == w - tile
    # consecutive starts never further apart than the stride
    starts = sorted({x.col for x in wins})
    assert max(np.diff(starts), default=0) <= stride


@pytest.mark.parametrize("h,w", [(40, 50), (40, 300), (300, 10)])
def test_scene_smaller_than_tile_gets_windows(h, w):
    wins = grid_windows(h, w, 64, 48)
    assert wins, "TorchGeo skips scenes smaller than a chip; the wrapper must not"
    cov = coverage(wins, h, w)
    assert cov.min() >= 1
    assert all(x.height == min(64, h) and x.width == min(64, w) for x in wins)


def test_edge_flags():
    wins = grid_windows(200, 200, 64, 48)
    for x in wins:
        assert x.top == (x.row == 0) and x.left == (x.col == 0)
        assert x.bottom == (x.row + 64 == 200) and x.right == (x.col + 64 == 200)


def test_resolve_overlap():
    assert resolve_overlap(256, 0.25) == 64
    assert resolve_overlap(256, 32) == 32
    assert resolve_overlap(256, 0) == 0
    with pytest.raises(InputError, match="half the tile"):
        resolve_overlap(256, 200)


def test_windows_below_five_percent_valid_are_skipped(tmp_path, geotiff_writer, rng, image_maker):
    from maskcd.inference.dataset import WindowDataset, collate_windows
    from maskcd.io import align_pair
    from maskcd.models.base import InferenceSpec

    img = image_maker(rng, 128, 192)
    img[:, :, 64:] = 0
    img[:, 0:2, 100:107] = 50  # 14 valid px of 4096 in window (0, 64): 0.3 %
    img[:, 64:76, 128:150] = 50  # 264 px = 6.4 % of window (64, 128)
    a = geotiff_writer(tmp_path / "a.tif", img, nodata=0)
    wins = grid_windows(128, 192, 64, 64)
    ds = WindowDataset(align_pair(a, a, InferenceSpec()), wins, 64)
    keep = {(w.row, w.col): ds[i][1] for i, w in enumerate(wins)}
    assert keep == {(0, 0): True, (0, 64): False, (0, 128): False, (64, 0): True, (64, 64): False, (64, 128): True}
    batch = collate_windows([ds[i] for i in range(len(wins))])
    assert batch["image_a"].shape == (3, 3, 64, 64) and len(batch["index"]) == 3 and len(batch["skipped"]) == 3


def test_cosine_weights_floor_edges_and_partition_of_unity():
    w = window_weights(64, 64, 16, False, False, False, False, "cosine")
    assert w.min() >= WEIGHT_FLOOR and w.max() == pytest.approx(1.0)
    assert w[32, 32] == 1.0 and w[0, 32] < 0.01
    edge = window_weights(64, 64, 16, True, False, True, False, "cosine")
    assert edge[0, 0] == 1.0 and edge[0, 63] < 0.01, "no taper on sides touching the scene border"
    # raised cosine: two overlapping ramps sum to 1 across the band
    ramp = window_weights(1, 64, 16, True, True, False, False, "cosine")[0]
    np.testing.assert_allclose(ramp[:16] + ramp[::-1][:16][::-1], 1.0, atol=1e-6)
    with pytest.raises(ConfigError, match="unknown blend mode 'nope'"):
        window_weights(8, 8, 2, False, False, False, False, "nope")


def test_tile_store_roundtrip_keeps_nan(tmp_path):
    store = TileStore(tmp_path / "t.f16", 5, 8, 6).create()
    a = np.linspace(0, 1, 48, dtype=np.float32).reshape(8, 6)
    a[2, 3] = np.nan
    store.write(3, a)
    got = store.read(3)
    assert np.isnan(got[2, 3]) and np.nanmax(np.abs(got - a)) < 1e-3
    assert (store.read(0) == 0).all()
    assert (tmp_path / "t.f16").stat().st_size == 5 * 8 * 6 * 2
    with pytest.raises(ValueError):
        store.write(0, np.zeros((3, 3)))
    store.close()
