"""Stage 6 of ``maskcd-map``: the QGIS-ready GeoPackage.

:func:`write_changes_gpkg` creates a new GeoPackage (:func:`stream_changes_gpkg` does it from batches, holding one
at a time); :func:`add_layer_to_gpkg` adds (or replaces) a layer in an existing
one. Both write through :func:`maskcd.io.atomic.atomic_write` (a temporary file, or copy, in the destination folder
renamed into place), so a failure leaves the old file (or no file) untouched and no temporary file behind;
:class:`ChangesGpkgWriter` writes the path it is given (``maskcd-map`` hands it its own temporary). Every file has:

- the layer(s), written with pyogrio, GeoPackage ``VERSION=1.2`` (QGIS built on GDAL < 3.7 warns on 1.4), with an
  R-tree spatial index (``rtree_<layer>_<geom>`` table);
- ``layer_styles`` (QGIS schema) with one ``useAsDefault = 1`` row per styled layer;
- ``run_metadata``: a non-spatial table of ``layer, key, value`` rows, ``value`` being JSON.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyogrio

from maskcd.errors import InputError, OutputExistsError
from maskcd.io.atomic import atomic_write
from maskcd.vectorization.style import DEFAULT_STYLE, layer_styles_frame, load_qml

GPKG_VERSION = "1.2"
STYLES_TABLE = "layer_styles"
METADATA_TABLE = "run_metadata"
RESERVED_LAYERS = (STYLES_TABLE, METADATA_TABLE)


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}-journal"), Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _metadata_frame(layer: str, metadata: dict) -> pd.DataFrame:
    rows = [(layer, str(k), json.dumps(v, default=str, sort_keys=True, ensure_ascii=False))
            for k, v in metadata.items()]
    return pd.DataFrame(rows, columns=["layer", "key", "value"], dtype=object)


def _write_layer(gdf, path: Path, layer: str, *, create: bool, replace: bool, geometry_type: str | None) -> None:
    if layer in RESERVED_LAYERS:
        raise InputError(f"layer name {layer!r} is reserved for the GeoPackage's own tables; choose another")
    layer_options = {"SPATIAL_INDEX": "YES"}
    if replace:
        layer_options["OVERWRITE"] = "YES"
    if geometry_type is None:
        types = set(gdf.geom_type.dropna().unique()) if len(gdf) else set()
        geometry_type = "MultiPolygon" if types <= {"Polygon", "MultiPolygon"} else None
    pyogrio.write_dataframe(
        gdf, path, layer=layer, driver="GPKG", promote_to_multi=geometry_type == "MultiPolygon" or None,
        geometry_type=geometry_type, dataset_options={"VERSION": GPKG_VERSION} if create else None,
        layer_options=layer_options, append=False,
    )


def _write_table(frame: pd.DataFrame, path: Path, table: str) -> None:
    """Append rows to a non-spatial table (created, GeoPackage ``attributes``, when absent)."""
    exists = table in {name for name, _ in pyogrio.list_layers(path)}
    pyogrio.write_dataframe(frame, path, layer=table, driver="GPKG", append=exists,
                            layer_options=None if exists else {"FID": "id"})


def _delete_rows(path: Path, table: str, column: str, value: str) -> None:
    if table not in {name for name, _ in pyogrio.list_layers(path)}:
        return
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute(f'DELETE FROM "{table}" WHERE "{column}" = ?', (value,))
    finally:
        con.close()


def _style_rows(path: Path, layer: str, style) -> None:
    if style is None or style is False:
        return
    geom_col = pyogrio.read_info(path, layer=layer).get("geometry_name") or "geom"
    _delete_rows(path, STYLES_TABLE, "f_table_name", layer)
    _write_table(layer_styles_frame(layer, load_qml(style), geometry_column=geom_col), path, STYLES_TABLE)


@dataclass
class StreamSummary:
    """What :func:`stream_changes_gpkg` wrote: the path, the feature count, the summed ``area_m2`` (0 when the
    column is absent) and the seconds spent writing (GeoPackage calls only, not producing the batches)."""

    path: Path
    n_features: int = 0
    area_m2: float = 0.0
    write_s: float = 0.0


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: output exists; pass --overwrite to replace it or choose another -o path")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: output folder does not exist; create it first")
    if out.suffix.lower() != ".gpkg":
        raise InputError(f"{out}: the output must be a .gpkg file")


class ChangesGpkgWriter:
    """A new QGIS-ready GeoPackage written batch by batch, holding one batch in memory at a time.

    The first :meth:`append` creates the layer (MultiPolygon, R-tree; an existing file is replaced when
    ``overwrite``); each later one appends with pyogrio in its own transaction. :meth:`close` adds the default style and
    the ``run_metadata`` rows, :meth:`abort` removes what was written (an error inside either method removes it too).
    The writer writes ``out_path`` itself: for an atomic file write to a temporary path and rename it, as
    :func:`stream_changes_gpkg` (through :func:`maskcd.io.atomic.atomic_write`) and ``map_scene`` do.

    Example::

        with atomic_write(out) as tmp:
            writer = ChangesGpkgWriter(tmp, layer="changes")
            for batch in iter_changes(mask, prob, ...):
                writer.append(batch)
            writer.close(metadata)

    Raises (constructor):
        OutputExistsError: The destination exists and ``overwrite`` is False (nothing is written).
        InputError: The destination folder does not exist or is not a ``.gpkg`` path.
    """

    def __init__(self, out_path: str | os.PathLike, *, layer: str = "changes", overwrite: bool = False,
                 style: str | os.PathLike | None = DEFAULT_STYLE):
        self.summary = StreamSummary(Path(out_path))
        _check_destination(self.summary.path, overwrite)
        self.layer, self.overwrite, self.style = layer, overwrite, style
        self._started = False

    @property
    def write_s(self) -> float:
        return self.summary.write_s

    def append(self, gdf) -> None:
        """Write one batch (a GeoDataFrame with a CRS; the first one, even empty, fixes the layer's columns)."""
        t = time.perf_counter()
        try:
            if gdf.crs is None:
                raise InputError(f"{self.summary.path}: the polygons have no CRS; vectorise a mask that carries one")
            path = self.summary.path
            if not self._started:
                _check_destination(path, self.overwrite)
                self._started = True
                _remove(path)  # an existing file (overwrite): the new one starts empty
                _write_layer(gdf, path, self.layer, create=True, replace=False, geometry_type="MultiPolygon")
            elif len(gdf):
                pyogrio.write_dataframe(gdf, path, layer=self.layer, driver="GPKG", promote_to_multi=True,
                                        geometry_type="MultiPolygon", append=True)
        except BaseException:
            self.abort()
            raise
        self.summary.write_s += time.perf_counter() - t
        self.summary.n_features += len(gdf)
        if "area_m2" in gdf and len(gdf):
            self.summary.area_m2 += float(gdf["area_m2"].sum())

    def close(self, metadata: dict) -> StreamSummary:
        """Add the style row and the ``run_metadata`` rows; returns the summary."""
        out, t = self.summary.path, time.perf_counter()
        try:
            if not self._started:
                raise InputError(f"{out}: no polygon batch was written (not even an empty one with the columns)")
            _style_rows(out, self.layer, self.style)
            _write_table(_metadata_frame(self.layer, metadata), out, METADATA_TABLE)
        except BaseException:
            self.abort()
            raise
        self.summary.write_s += time.perf_counter() - t
        return self.summary

    def abort(self) -> None:
        """Remove what this writer wrote (idempotent; a file it has not started is left alone)."""
        if self._started:
            _remove(self.summary.path)


def stream_changes_gpkg(
    batches: Iterable, out_path: str | os.PathLike, *, layer: str = "changes", metadata: dict,
    overwrite: bool = False, style: str | os.PathLike | None = DEFAULT_STYLE,
) -> StreamSummary:
    """Write GeoDataFrame batches (same columns, e.g. from :func:`maskcd.vectorization.iter_changes`) as a new
    QGIS-ready GeoPackage with :class:`ChangesGpkgWriter`: one batch in memory at a time, atomic (a temporary file
    renamed into place by :func:`maskcd.io.atomic.atomic_write`).

    Args:
        batches: Iterable of GeoDataFrames with a CRS; at least one (an empty frame still gives the layer its schema).
        out_path: Destination ``.gpkg``.
        layer: Layer name.
        metadata: Run metadata rows (see :func:`write_changes_gpkg`).
        overwrite: Replace an existing file.
        style: Packaged style name or ``.qml`` path stored as the layer's default QGIS style; None for no style row.

    Returns:
        The :class:`StreamSummary`.

    Raises:
        OutputExistsError: ``out_path`` exists and ``overwrite`` is False (nothing is written).
        InputError: The destination folder does not exist, a batch has no CRS, or there is no batch.
    """
    out = Path(out_path)
    _check_destination(out, overwrite)
    with atomic_write(out, overwrite=overwrite) as tmp:
        writer = ChangesGpkgWriter(tmp, layer=layer, overwrite=True, style=style)
        for gdf in batches:
            writer.append(gdf)
        summary = writer.close(metadata)
    summary.path = out
    return summary


def write_changes_gpkg(
    gdf, out_path: str | os.PathLike, *, layer: str = "changes", metadata: dict, overwrite: bool = False,
    style: str | os.PathLike | None = DEFAULT_STYLE,
) -> Path:
    """Write change polygons as a new QGIS-ready GeoPackage (atomically: temporary file, then rename).

    Args:
        gdf: GeoDataFrame from :func:`maskcd.vectorization.vectorize_changes` (any polygon GeoDataFrame with a CRS);
            an empty frame still gives a valid MultiPolygon layer with its columns.
        out_path: Destination ``.gpkg``.
        layer: Layer name.
        metadata: Run metadata (arguments, versions, inputs with sizes, shift estimate, timings...): one
            ``run_metadata`` row per key, the value as JSON.
        overwrite: Replace an existing file.
        style: Packaged style name or ``.qml`` path stored as the layer's default QGIS style; None for no style row.

    Returns:
        The path written.

    Raises:
        OutputExistsError: ``out_path`` exists and ``overwrite`` is False (nothing is written).
        InputError: The destination folder does not exist or the frame has no CRS.
    """
    out = Path(out_path)
    _check_destination(out, overwrite)
    if gdf.crs is None:
        raise InputError(f"{out}: the polygons have no CRS; vectorise a mask that carries one")
    return stream_changes_gpkg([gdf], out, layer=layer, metadata=metadata, overwrite=overwrite, style=style).path


def add_layer_to_gpkg(
    gpkg_path: str | os.PathLike, gdf, *, layer: str, metadata: dict | None = None,
    style: str | os.PathLike | None = DEFAULT_STYLE, overwrite_layer: bool = False, geometry_type: str | None = None,
    atomic: bool = True,
) -> Path:
    """Add a layer (with its R-tree, default style row and metadata rows) to an existing GeoPackage.

    The file is copied to a temporary name beside it, changed, and renamed over the original, so readers never see a
    half-written file and a failure leaves the original as it was. Used for time-series layers and merged catalogs.

    Args:
        gpkg_path: An existing GeoPackage (e.g. from :func:`write_changes_gpkg`).
        gdf: The layer's GeoDataFrame (polygonal layers are written as MultiPolygon; others keep their type).
        layer: New layer name (not ``layer_styles`` or ``run_metadata``).
        metadata: Optional rows appended to ``run_metadata`` with this layer's name.
        style: Packaged style name or ``.qml`` path to store as the layer's default style (None: no style row).
        overwrite_layer: Replace a layer of that name (and its style and metadata rows).
        geometry_type: Force the OGR geometry type (e.g. ``"MultiPolygon"``, ``"Point"``).
        atomic: ``False`` changes the file in place (for a file that is itself a temporary, e.g. ``map_scene``'s).

    Returns:
        The GeoPackage path.

    Raises:
        InputError: The GeoPackage does not exist.
        OutputExistsError: The layer exists and ``overwrite_layer`` is False.
    """
    import shutil

    path = Path(gpkg_path)
    if not path.is_file():
        raise InputError(f"{path}: GeoPackage does not exist; create it with write_changes_gpkg first")
    if layer in RESERVED_LAYERS:
        raise InputError(f"layer name {layer!r} is reserved for the GeoPackage's own tables; choose another")
    existing = {name for name, _ in pyogrio.list_layers(path)}
    if layer in existing and not overwrite_layer:
        raise OutputExistsError(f"{path}: layer {layer!r} exists; pass overwrite_layer=True or choose another name")

    def change(target: Path) -> None:
        _write_layer(gdf, target, layer, create=False, replace=layer in existing, geometry_type=geometry_type)
        _style_rows(target, layer, style)
        if layer in existing:
            _delete_rows(target, METADATA_TABLE, "layer", layer)
        if metadata:
            _write_table(_metadata_frame(layer, metadata), target, METADATA_TABLE)

    if not atomic:
        change(path)
        return path
    with atomic_write(path, overwrite=True) as tmp:
        shutil.copy2(path, tmp)
        change(tmp)
    return path


def read_run_metadata(gpkg_path: str | os.PathLike, layer: str | None = None) -> dict:
    """The ``run_metadata`` rows as ``{key: value}`` (JSON decoded), optionally only those of one layer."""
    frame = pyogrio.read_dataframe(gpkg_path, layer=METADATA_TABLE, read_geometry=False)
    if layer is not None:
        frame = frame[frame["layer"] == layer]
    return {k: json.loads(v) for k, v in zip(frame["key"], frame["value"], strict=True)}


__all__ = ["write_changes_gpkg", "stream_changes_gpkg", "ChangesGpkgWriter", "StreamSummary", "add_layer_to_gpkg", "read_run_metadata", "GPKG_VERSION"]
