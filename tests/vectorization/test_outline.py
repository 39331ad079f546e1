"""trace_outlines: the polygons GDAL's polygoniser gives, vertex for vertex, for any 4-connected components."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio import features
from scipy import ndimage

from maskcd.vectorization import outline
from maskcd.vectorization.outline import label_components, label_runs, trace_outlines


def _gdal(labels: np.ndarray, ids, r0: int, c0: int) -> list:
    """rasterio.features.shapes (GDALPolygonize, 4-connectivity) of each label in ``ids``, (col, -row) space."""
    t = Affine(1.0, 0.0, float(c0), 0.0, -1.0, -float(r0))
    out: dict[int, list] = {}
    for gj, v in features.shapes(labels.astype(np.int32), mask=labels > 0, connectivity=4, transform=t):
        out.setdefault(int(v), []).append(shapely.geometry.shape(gj))
    assert all(len(out[k]) == 1 for k in ids)  # one polygon per 4-connected component
    return [out[k][0] for k in ids]


def _ours(change: np.ndarray, ids=None, r0: int = 0, c0: int = 0):
    labels, n = ndimage.label(change)
    ids = np.arange(1, n + 1) if ids is None else np.asarray(ids)
    keep = np.zeros(n + 1, bool)
    keep[ids] = True
    flat = np.flatnonzero(change)
    lab = labels.ravel()[flat]
    sel = keep[lab]
    polys, numbers = trace_outlines(change, flat[sel], lab[sel], r0, c0)
    np.testing.assert_array_equal(numbers, ids)
    return labels, ids, polys


def _assert_same_as_gdal(change, ids=None, r0=0, c0=0):
    labels, ids, polys = _ours(change, ids, r0, c0)
    ref = _gdal(labels, ids, r0, c0)
    assert len(polys) == len(ref)
    for k, a, b in zip(ids, polys, ref):
        assert a.is_valid, (k, shapely.is_valid_reason(a))
        assert shapely.normalize(a).equals_exact(shapely.normalize(b), 0), k
    return polys


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_match_gdal_vertex_for_vertex(seed):
    """Dense random masks are full of corner contacts, pinches, holes and islands; a random subset is traced."""
    rng = np.random.default_rng(seed)
    n_polys = 0
    for _ in range(25):
        h, w = rng.integers(1, 45, 2)
        change = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        n = ndimage.label(change)[1]
        if n == 0:
            continue
        ids = np.sort(rng.choice(np.arange(1, n + 1), size=rng.integers(1, n + 1), replace=False))
        n_polys += len(_assert_same_as_gdal(change, ids, *rng.integers(0, 10**6, 2)))
    assert n_polys > 100


def test_pinch_inside_one_component_keeps_the_rings_apart():
    """Two holes meeting at a corner, and a hole meeting the shell at a corner: no self-touching ring."""
    change = np.ones((6, 6), bool)
    change[2, 3] = change[3, 2] = False  # two one-pixel holes touching at the vertex (3, 3)
    change[0, 0] = False  # a notch touching ...
    change[1, 1] = False  # ... a hole at the vertex (1, 1)
    [poly] = _assert_same_as_gdal(change)
    assert poly.area == change.sum()
    assert len(poly.interiors) == 3
    assert all(r.is_simple for r in [poly.exterior, *poly.interiors])


def test_components_touching_at_a_corner_stay_separate():
    change = np.zeros((4, 4), bool)
    change[0, 0] = change[1, 1] = change[2, 2] = change[1, 3] = True
    polys = _assert_same_as_gdal(change)
    assert len(polys) == 4
    assert all(p.area == 1 and len(p.exterior.coords) == 5 for p in polys)


def test_ring_island_and_offset():
    change = np.zeros((12, 12), bool)
    change[1:11, 1:11] = True
    change[3:9, 3:9] = False
    change[5:7, 5:7] = True  # island in the hole: a component of its own
    ring, island = _assert_same_as_gdal(change, r0=100, c0=200)
    assert ring.area == 100 - 36 and len(ring.interiors) == 1 and len(ring.exterior.coords) == 5
    assert island.bounds == (205.0, -107.0, 207.0, -105.0)


def test_nothing_to_trace():
    polys, numbers = trace_outlines(np.zeros((3, 3), bool), np.zeros(0, np.int32), np.zeros(0, np.int32))
    assert len(polys) == 0 and len(numbers) == 0


@pytest.mark.parametrize("seed", range(3))
def test_run_labelling_numbers_components_as_scipy_does(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(60):
        h, w = rng.integers(1, 60, 2)
        change = rng.random((h, w)) < rng.uniform(0.02, 0.98)
        if rng.random() < 0.5:
            change = ndimage.binary_opening(change)  # blobs as well as salt and pepper
        labels, n = ndimage.label(change)
        flat = np.flatnonzero(change)
        numbers, m = label_runs(flat, w)
        assert m == n
        np.testing.assert_array_equal(numbers, labels.ravel()[flat])


def test_label_components_picks_the_cheaper_way_and_both_agree(monkeypatch):
    rng = np.random.default_rng(5)
    sparse = np.zeros((256, 256), bool)
    sparse[10:40, 20:90] = sparse[100:101, :] = sparse[200:250, 5:6] = True
    noise = rng.random((256, 256)) < 0.5
    calls = []
    monkeypatch.setattr(outline, "label_runs", lambda *a: calls.append("runs") or label_runs(*a))
    for change, way in ((sparse, "runs"), (noise, "scipy")):
        flat = np.flatnonzero(change).astype(np.int32)
        calls.clear()
        numbers, n = label_components(change, flat)
        assert calls == ([way] if way == "runs" else [])
        labels, n_ref = ndimage.label(change)
        assert n == n_ref
        np.testing.assert_array_equal(numbers, labels.ravel()[flat])
    assert label_components(np.zeros((4, 4), bool), np.zeros(0, np.int32))[1] == 0
