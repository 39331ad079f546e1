"""Stages 5-6 of ``maskcd-map``: change mask -> change polygons -> QGIS-ready GeoPackage.

Public API::

    gdf = vectorize_changes(mask_path, prob_path, *, min_area_m2, simplify_m, attributes,
                            chunk_size=2048, n_workers=2, scheduler="threads")
    write_changes_gpkg(gdf, out_path, *, layer="changes", metadata, overwrite=False, style="changes")
    stream_changes_gpkg(iter_changes(mask_path, prob_path, ...), out_path, *, layer, metadata, overwrite, style)
    add_layer_to_gpkg(gpkg_path, gdf, *, layer, metadata=None, style="changes", overwrite_layer=False)
    read_run_metadata(gpkg_path, layer=None)

- :func:`vectorize_changes` polygonises block-aligned chunks in parallel with Dask (4-connectivity), merges blobs cut by
  chunk borders exactly (union-find on border pixels, then dissolve), removes blobs below ``min_area_m2`` on their whole
  pixel area, coverage-simplifies, and returns MultiPolygons with ``change_id, area_m2, perimeter_m, n_pixels,
  prob_mean, prob_max`` plus the ``attributes`` columns. The result does not depend on ``chunk_size``.
- :func:`iter_changes` yields the same rows in batches, chunk row by chunk row: about one chunk row of polygons is in
  memory at a time. :func:`stream_changes_gpkg` appends such batches to the GeoPackage (one
  transaction each) with the same atomic rename, style and metadata as :func:`write_changes_gpkg`; ``maskcd-map``
  uses the two, so its memory does not grow with the number of polygons.
- :func:`write_changes_gpkg` writes a new GeoPackage (temporary file, then rename; ``OutputExistsError`` if it exists
  without ``overwrite``): the layer with an R-tree, a ``layer_styles`` row (QGIS schema, ``useAsDefault = 1``, style
  ``maskcd/styles/changes.qml``: semi-transparent fill graduated by ``prob_mean``) and a ``run_metadata`` table
  (``layer, key, value`` with JSON values). GeoPackage version 1.2, which QGIS 3.22 / GDAL 3.6 read without warnings.
- :func:`add_layer_to_gpkg` adds more layers to such a file, the same way atomically (copy, change, rename): for
  time-series layers and merged catalogs. Each added layer gets its R-tree, its own default style row (``style=`` a
  packaged name or a ``.qml`` path, None for none) and optional ``run_metadata`` rows tagged with its name;
  ``overwrite_layer=True`` replaces a layer and its style/metadata rows.
"""

from maskcd.vectorization.gpkg import (
    ChangesGpkgWriter,
    StreamSummary,
    add_layer_to_gpkg,
    read_run_metadata,
    stream_changes_gpkg,
    write_changes_gpkg,
)
from maskcd.vectorization.polygonize import RESULT_COLUMNS, iter_changes, vectorize_changes
from maskcd.vectorization.style import layer_styles_frame, load_qml

__all__ = [
    "vectorize_changes", "iter_changes", "write_changes_gpkg", "stream_changes_gpkg", "ChangesGpkgWriter",
    "StreamSummary", "add_layer_to_gpkg", "read_run_metadata", "load_qml",
    "layer_styles_frame", "RESULT_COLUMNS",
]
