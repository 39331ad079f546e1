"""Chunked polygonising: parity with a single pass, 4-connectivity, holes, min-area sieve, nodata, zonal statistics."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from rasterio import features
from scipy import ndimage

from maskcd.errors import InputError
from maskcd.vectorization import RESULT_COLUMNS, vectorize_changes

KW = dict(min_area_m2=0.0, simplify_m=None, attributes={}, n_workers=2)


def _burn(gdf, path) -> np.ndarray:
    """Rasterise (pixel-aligned, unsimplified) polygons back onto the mask grid: the change_id per pixel."""
    with rasterio.open(path) as src:
        shape, transform = (src.height, src.width), src.transform
    if len(gdf) == 0:
        return np.zeros(shape, np.int32)
    return features.rasterize(zip(gdf.geometry, gdf.change_id), out_shape=shape, transform=transform, dtype="int32")


def _reference_shapes(mask: np.ndarray, transform) -> list:
    """Independent single pass: rasterio.features.shapes over the whole mask, 4-connectivity."""
    return [shapely.geometry.shape(g) for g, v in
            features.shapes(mask, mask=mask == 1, connectivity=4, transform=transform) if v == 1]


def _assert_same(a, b):
    assert len(a) == len(b)
    assert list(a.change_id) == list(b.change_id)
    assert all(x.equals_exact(y, 0) for x, y in zip(a.geometry, b.geometry, strict=True))
    assert list(a.n_pixels) == list(b.n_pixels)
    np.testing.assert_allclose(a.area_m2, b.area_m2)
    np.testing.assert_allclose(a.prob_mean, b.prob_mean)
    np.testing.assert_array_equal(a.prob_max, b.prob_max)


def test_chunked_equals_single_pass(scene, rng, blobby):
    mask = blobby(rng)
    mask[:, 70:72] = 255  # a nodata stripe cutting blobs
    mpath, ppath = scene(mask)
    single = vectorize_changes(mpath, ppath, chunk_size=4096, **KW)
    with rasterio.open(mpath) as src:
        ref = _reference_shapes(mask, src.transform)
    assert len(single) == len(ref) > 20
    assert single.area.sum() == pytest.approx(sum(g.area for g in ref))
    assert single.n_pixels.sum() == (mask == 1).sum()
    for size in (7, 13, 32, 50):  # all of them cut blobs; 7 and 13 cut most blobs several times
        chunked = vectorize_changes(mpath, ppath, chunk_size=size, **KW)
        assert chunked.is_valid.all() and set(chunked.geom_type) == {"MultiPolygon"}
        _assert_same(chunked, single)
    # the merge really happened: at chunk size 13 many blobs span several chunks
    b = single.geometry.bounds
    c0, c1 = (b.minx - 500000) / 0.5, (b.maxx - 500000) / 0.5 - 1
    r0, r1 = (5100000 - b.maxy) / 0.5, (5100000 - b.miny) / 0.5 - 1
    assert (((c0 // 13) != (c1 // 13)) | ((r0 // 13) != (r1 // 13))).sum() > 10


def test_processes_scheduler_matches_threads(scene, rng, blobby):
    mpath, ppath = scene(blobby(rng, (64, 64)))
    a = vectorize_changes(mpath, ppath, chunk_size=20, scheduler="threads", **KW)
    b = vectorize_changes(mpath, ppath, chunk_size=20, scheduler="processes", **KW)
    _assert_same(a, b)


def test_diagonal_neighbours_are_separate_polygons_across_chunk_corners(scene):
    mask = np.zeros((8, 8), np.uint8)
    mask[3, 3] = mask[4, 4] = 1  # touch only at the point (4, 4): the corner of four chunks of size 4 or 2
    mask[0, 3] = mask[1, 4] = 1  # straddle the vertical chunk edge x = 4
    mask[3, 6] = mask[4, 7] = 1  # straddle the horizontal chunk edge y = 4
    mask[6, 1] = mask[7, 2] = 1  # inside one chunk
    mpath, ppath = scene(mask)
    for size in (8, 4, 2, 3):
        gdf = vectorize_changes(mpath, ppath, chunk_size=size, **KW)
        assert len(gdf) == 8, size
        assert (gdf.n_pixels == 1).all()
        assert gdf.is_valid.all()


def test_holes_are_kept_and_islands_are_separate(scene):
    mask = np.zeros((40, 40), np.uint8)
    mask[5:30, 5:30] = 1
    mask[10:25, 10:25] = 0  # hole of 15x15
    mask[15:19, 15:19] = 1  # island inside the hole
    mpath, ppath = scene(mask)
    single = vectorize_changes(mpath, ppath, chunk_size=4096, **KW)
    for size in (4096, 16, 9):  # 16 and 9 cut the ring and the island
        gdf = vectorize_changes(mpath, ppath, chunk_size=size, **KW)
        _assert_same(gdf, single)
        assert len(gdf) == 2
        ring = gdf.loc[gdf.n_pixels.idxmax()]
        poly = ring.geometry.geoms[0]
        assert len(poly.interiors) == 1
        assert ring.n_pixels == 25 * 25 - 15 * 15
        assert ring.area_m2 == pytest.approx(ring.n_pixels * 0.25)
        assert gdf.n_pixels.min() == 16


def test_min_area_sieve_is_chunk_size_independent(scene, rng, blobby):
    mask = blobby(rng, (100, 100), fraction=0.15, sigma=1.5)
    mpath, ppath = scene(mask)
    min_area = 10.0  # m²: 40 pixels of 0.5 m
    min_px = 40
    lab, n = ndimage.label(mask == 1)
    sizes = np.bincount(lab.ravel())
    expected = np.isin(lab, np.nonzero(sizes >= min_px)[0]) & (lab > 0)
    assert 0 < expected.sum() < (mask == 1).sum()  # some blobs removed, some kept
    results = [vectorize_changes(mpath, ppath, min_area_m2=min_area, simplify_m=None, attributes={}, chunk_size=s)
               for s in (4096, 11, 30)]
    for gdf in results:
        _assert_same(gdf, results[0])
        np.testing.assert_array_equal(_burn(gdf, mpath) > 0, expected)
        assert (gdf.area_m2 >= min_area).all()
    # a blob larger than the threshold but smaller within every chunk survives (chunk size 11 < sqrt(40) * 2)
    big_cut = results[0][(results[0].n_pixels >= min_px) & (results[0].n_pixels < 121)]
    assert len(big_cut) > 0
    # rasterio's sieve keeps the same blobs; it also fills background holes smaller than the threshold
    sieved = features.sieve(mask, size=min_px, connectivity=4) == 1
    assert not (expected & ~sieved).any()
    extra = sieved & ~expected
    blab, _ = ndimage.label(mask == 0)
    bsizes = np.bincount(blab.ravel())
    assert (bsizes[blab[extra]] < min_px).all()


def test_nodata_never_becomes_change(scene, rng, blobby):
    mask = blobby(rng, (60, 80), fraction=0.3)
    mask[:, 20:25] = 255
    mask[40:43, :] = 255
    mpath, ppath = scene(mask)
    gdf = vectorize_changes(mpath, ppath, chunk_size=16, **KW)
    burnt = _burn(gdf, mpath)
    assert not (burnt[mask == 255] > 0).any()
    np.testing.assert_array_equal(burnt > 0, mask == 1)
    # all nodata: no polygon, but the full schema
    mpath2, ppath2 = scene(np.full((30, 30), 255, np.uint8), name="empty")
    empty = vectorize_changes(mpath2, ppath2, min_area_m2=0, simplify_m=1.0, attributes={"run_id": "r1"}, chunk_size=8)
    assert len(empty) == 0
    assert list(empty.columns) == [*RESULT_COLUMNS, "run_id", "geometry"]
    assert empty.crs.to_epsg() == 32633


def test_zonal_statistics_are_exact_and_chunk_independent(scene):
    mask = np.zeros((20, 30), np.uint8)
    prob = np.full((20, 30), 10, np.uint8)
    mask[2:6, 2:28] = 1  # blob A, cut by chunk edges
    prob[2:6, 2:28] = np.tile(np.arange(26, dtype=np.uint8) * 9 + 20, (4, 1))
    prob[3, 5] = 255  # probability nodata inside a change blob: not counted in the mean
    mask[10:14, 10:12] = 1  # blob B
    prob[10:14, 10:12] = 254
    mpath, ppath = scene(mask, prob)
    va = prob[2:6, 2:28].astype(float)
    valid = va != 255
    for size in (4096, 7, 5):
        gdf = vectorize_changes(mpath, ppath, chunk_size=size, **KW)
        a, b = gdf.iloc[0], gdf.iloc[1]
        assert (a.change_id, b.change_id) == (1, 2)  # north to south
        assert a.n_pixels == 4 * 26
        assert a.prob_mean == pytest.approx(va[valid].mean() / 254)
        assert a.prob_max == pytest.approx(va[valid].max() / 254)
        assert (b.prob_mean, b.prob_max) == (1.0, 1.0)
    nop = vectorize_changes(mpath, None, chunk_size=7, **KW)
    assert nop.prob_mean.isna().all() and len(nop) == 2


def test_attributes_simplify_and_validity(scene, rng, blobby):
    mask = blobby(rng, (90, 90), fraction=0.35, sigma=2.0)
    mpath, ppath = scene(mask)
    attrs = {"before_date": "2009-07-01", "after_date": "2020-08-15", "site_id": "nd-1", "model_name": "maskcd-tiny",
             "model_sha": "abc123", "run_id": "r-1", "year": 2020}
    results = [vectorize_changes(mpath, ppath, min_area_m2=2.0, simplify_m=0.75, attributes=attrs, chunk_size=s)
               for s in (4096, 17)]
    gdf = results[0]
    _assert_same(results[1], gdf)
    assert list(gdf.columns) == [*RESULT_COLUMNS, *attrs, "geometry"]
    assert (gdf.site_id == "nd-1").all() and gdf.year.dtype == np.int64
    assert gdf.is_valid.all() and set(gdf.geom_type) == {"MultiPolygon"}
    assert (gdf.change_id == np.arange(1, len(gdf) + 1)).all()
    # simplified: fewer vertices than the pixel outline, area close to the pixel area, no overlaps between polygons
    raw = vectorize_changes(mpath, ppath, min_area_m2=2.0, simplify_m=None, attributes={}, chunk_size=4096)
    assert shapely.get_num_coordinates(gdf.geometry.values).sum() < 0.7 * shapely.get_num_coordinates(
        raw.geometry.values).sum()
    assert gdf.area_m2.sum() == pytest.approx(raw.n_pixels.sum() * 0.25, rel=0.05)
    assert shapely.union_all(gdf.geometry.values).area == pytest.approx(gdf.area.sum(), rel=1e-9)
    assert gdf.area_m2.to_numpy() == pytest.approx(gdf.area.to_numpy())
    assert gdf.perimeter_m.to_numpy() == pytest.approx(gdf.length.to_numpy())


def test_tiled_file_chunks_are_block_aligned(tmp_path, rng, blobby):
    mask = blobby(rng, (96, 96))
    path = tmp_path / "tiled.tif"
    profile = dict(driver="GTiff", width=96, height=96, count=1, dtype="uint8", nodata=255, tiled=True,
                   blockxsize=16, blockysize=16, crs="EPSG:32633",
                   transform=rasterio.transform.from_origin(500000, 5100000, 1, 1))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask, 1)
    a = vectorize_changes(path, None, chunk_size=20, **KW)  # rounded to 16
    b = vectorize_changes(path, None, chunk_size=4096, **KW)
    _assert_same(a, b)


def test_geographic_crs_measures_in_metres(scene, rng, blobby):
    mask = blobby(rng, (50, 50), fraction=0.2)
    # 1e-5 degree pixels near 47° N (about 0.76 m x 1.11 m)
    mpath, ppath = scene(mask, res=1e-5, crs="EPSG:4326", origin=(-100.0, 47.0))
    gdf = vectorize_changes(mpath, ppath, chunk_size=16, **KW)
    px_area = 0.7598 * 1.1119  # m² at 47° N for 1e-5°
    assert gdf.area_m2.sum() == pytest.approx(gdf.n_pixels.sum() * px_area, rel=0.01)
    big = gdf.area_m2.max()
    kept = vectorize_changes(mpath, ppath, min_area_m2=big * 0.999, simplify_m=None, attributes={}, chunk_size=16)
    assert len(kept) >= 1 and (kept.area_m2 >= big * 0.999).all() and len(kept) < len(gdf)


def test_bad_inputs_name_the_file(tmp_path, scene, rng, geotiff_writer):
    with pytest.raises(InputError, match="missing.tif"):
        vectorize_changes(tmp_path / "missing.tif", None, **KW)
    notraster = tmp_path / "notes.tif"
    notraster.write_text("not a raster")
    with pytest.raises(InputError, match="notes.tif"):
        vectorize_changes(notraster, None, **KW)
    nocrs = geotiff_writer(tmp_path / "nocrs.tif", np.zeros((8, 8), np.uint8), crs=None)
    with pytest.raises(InputError, match="no CRS"):
        vectorize_changes(nocrs, None, **KW)
    mpath, _ = scene(np.zeros((10, 10), np.uint8))
    _, other = scene(np.zeros((12, 10), np.uint8), name="other")
    with pytest.raises(InputError, match="differs"):
        vectorize_changes(mpath, other, **KW)


def test_streaming_holds_only_the_polygons_near_the_chunk_row_border(scene, rng, blobby):
    """iter_changes yields the rows of vectorize_changes in order, in batches, never holding most of them at once."""
    import pandas as pd

    from maskcd.vectorization import iter_changes

    mask = blobby(rng, (400, 60), fraction=0.2, sigma=1.0)  # tall: 20 chunk rows of many small blobs
    mpath, ppath = scene(mask)
    kw = dict(min_area_m2=0.5, simplify_m=0.5, attributes={"run_id": "r"})
    whole = vectorize_changes(mpath, ppath, chunk_size=4096, **kw)
    stats: dict = {}
    batches = list(iter_changes(mpath, ppath, chunk_size=20, n_workers=1, batch_rows=10, stats=stats, **kw))
    assert len(whole) > 250 and len(batches) > 10
    _assert_same(pd.concat(batches, ignore_index=True), whole)
    # what waits for a merge or its turn is about a chunk row's worth, not the raster's polygons
    assert 0 < stats["peak_polygons_held"] < len(whole) / 5
    assert stats["chunks"]["n"] == 20 * 3


def test_next_chunk_row_computes_while_the_driver_holds_a_batch_and_stops_with_it(scene, rng, blobby, monkeypatch):
    """While the consumer holds a yielded batch (writing it), the next step's chunk tasks already run; closing the
    generator early leaves no chunk thread behind; the rows are those of a single pass."""
    import threading
    import time

    import pandas as pd

    from maskcd.vectorization import iter_changes
    from maskcd.vectorization import polygonize as mod

    seen: list[tuple[int, int]] = []
    real = mod.polygonize_chunk

    def recording(mask_path, prob_path, index, *args):
        seen.append(index)
        return real(mask_path, prob_path, index, *args)

    monkeypatch.setattr(mod, "polygonize_chunk", recording)
    mask = blobby(rng, (400, 60), fraction=0.2, sigma=1.0)
    mpath, ppath = scene(mask)
    kw = dict(min_area_m2=0.5, simplify_m=0.5, attributes={})
    # 3 chunk columns, 2 workers: steps of 2 chunk rows (6 tasks), 10 steps
    gen = iter_changes(mpath, ppath, chunk_size=20, n_workers=2, scheduler="threads", batch_rows=1, **kw)
    first = next(gen)
    assert len(first) == 1 and first.change_id.iloc[0] == 1
    deadline = time.monotonic() + 60
    while not any(r >= 2 for r, _ in seen) and time.monotonic() < deadline:  # the consumer is idle here
        time.sleep(0.05)
    assert any(r >= 2 for r, _ in seen), "step 1 did not start while the first batch was held"
    assert not any(r >= 4 for r, _ in seen)  # only one step ahead
    gen.close()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("maskcd-chunks")]
    whole = vectorize_changes(mpath, ppath, chunk_size=4096, **kw)
    stats: dict = {}
    rest = list(iter_changes(mpath, ppath, chunk_size=20, n_workers=2, scheduler="threads", batch_rows=7,
                             stats=stats, **kw))
    _assert_same(pd.concat(rest, ignore_index=True), whole)
    assert stats["chunks"]["steps"] == 10 and stats["chunks"]["steps_run_ahead"] == 9
    # dense steps (here: any polygon at all) are merged before the next one starts, with the same rows
    monkeypatch.setattr(mod, "AHEAD_MAX_POLYGONS", 0)
    dense = list(iter_changes(mpath, ppath, chunk_size=20, n_workers=2, scheduler="threads", batch_rows=7,
                              stats=stats, **kw))
    _assert_same(pd.concat(dense, ignore_index=True), whole)
    assert stats["chunks"]["steps_run_ahead"] == 0


def test_simplification_is_chunk_size_independent_with_close_neighbours(scene, rng, blobby):
    """Coverage simplification per bounding-box cluster equals simplifying all at once, for any chunk size."""
    mask = blobby(rng, (110, 130), fraction=0.45, sigma=0.8)  # dense: many near and corner-touching neighbours
    mpath, ppath = scene(mask)
    kw = dict(min_area_m2=0.0, simplify_m=1.0, attributes={})
    results = [vectorize_changes(mpath, ppath, chunk_size=s, **kw) for s in (4096, 9, 16, 37)]
    whole = results[0]
    assert len(whole) > 100
    for r in results[1:]:
        _assert_same(r, whole)
    # the reference: one coverage simplification of every (unsimplified, normalised) blob at once
    raw = vectorize_changes(mpath, ppath, chunk_size=4096, **{**kw, "simplify_m": None})
    with rasterio.open(mpath) as src:
        t = src.transform
    px = shapely.transform(raw.geometry.values, lambda xy: np.column_stack([(xy[:, 0] - t.c) / t.a,
                                                                           (xy[:, 1] - t.f) / -t.e]))
    parts = shapely.normalize(shapely.get_geometry(px, 0))
    ref = shapely.coverage_simplify(parts, 1.0 / 0.5)
    got = shapely.transform(whole.geometry.values, lambda xy: np.column_stack([(xy[:, 0] - t.c) / t.a,
                                                                              (xy[:, 1] - t.f) / -t.e]))
    assert all(shapely.equals_exact(a, b, 1e-9) for a, b in zip(shapely.get_geometry(got, 0), ref, strict=True))


def test_simplifying_in_small_groups_of_clusters_changes_nothing(scene, rng, blobby, monkeypatch):
    """The coverage simplification runs on groups of whole clusters (bounded memory); group size does not matter."""
    from maskcd.vectorization import polygonize

    mask = blobby(rng, (110, 130), fraction=0.45, sigma=0.8)  # dense: large clusters of close neighbours
    mpath, ppath = scene(mask)
    kw = dict(min_area_m2=0.0, simplify_m=1.0, attributes={})
    monkeypatch.setattr(polygonize, "SIMPLIFY_GROUP", 10**9)  # one call over every polygon of the raster
    whole = vectorize_changes(mpath, ppath, chunk_size=4096, **kw)
    monkeypatch.setattr(polygonize, "SIMPLIFY_GROUP", 2)
    for size in (4096, 37):
        _assert_same(vectorize_changes(mpath, ppath, chunk_size=size, **kw), whole)
    assert len(whole) > 100


def test_first_pixel_of_each_label_with_and_without_raster_numbering():
    from maskcd.vectorization.polygonize import _first_occurrence

    ordered = np.array([1, 1, 2, 1, 3, 2, 3, 4], np.int32)  # numbered as a raster scan meets them
    np.testing.assert_array_equal(_first_occurrence(ordered, 4), [0, 2, 4, 7])
    shuffled = np.array([2, 2, 1, 3, 1, 2], np.int32)  # any other numbering takes the general path
    np.testing.assert_array_equal(_first_occurrence(shuffled, 3), [2, 0, 3])
