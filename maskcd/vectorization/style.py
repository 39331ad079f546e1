"""QGIS styles stored inside a GeoPackage (the ``layer_styles`` table QGIS reads and writes).

QGIS's OGR provider looks up ``layer_styles`` rows with ``f_table_schema = ''``, ``f_table_name = <layer>`` and
``f_geometry_column = <geometry column>``, and applies the row with ``useAsDefault = 1`` when the layer is opened
(QGIS's OGR provider, github.com/qgis/QGIS ``src/core/providers/ogr/qgsogrprovidermetadata.cpp``). The table
schema here is the one QGIS itself creates (``QgsOgrProviderMetadata::saveStyle``).
"""

from __future__ import annotations

import datetime as _dt
import os
from importlib import resources
from pathlib import Path

import pandas as pd

from maskcd.errors import InputError

LAYER_STYLES_COLUMNS = [
    "f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column", "styleName", "styleQML", "styleSLD",
    "useAsDefault", "description", "owner", "ui", "update_time",
]
DEFAULT_STYLE = "changes"


def load_qml(style: str | os.PathLike = DEFAULT_STYLE) -> str:
    """The QML text of a packaged style (``"changes"``: ``maskcd/styles/changes.qml``) or of a ``.qml`` file path."""
    path = Path(style)
    if path.suffix.lower() == ".qml":
        return path.read_text(encoding="utf-8")
    ref = resources.files("maskcd") / "styles" / f"{style}.qml"
    if not ref.is_file():
        raise InputError(f"unknown style {style!r}: pass a .qml file or one of the packaged styles in maskcd/styles/")
    return ref.read_text(encoding="utf-8")


def layer_styles_frame(
    layer: str, qml: str, *, geometry_column: str = "geom", style_name: str | None = None,
    description: str = "maskcd default style", use_as_default: bool = True,
) -> pd.DataFrame:
    """One ``layer_styles`` row for ``layer`` (QGIS schema), ready to be written as a non-spatial GeoPackage table.

    Args:
        layer: The layer the style belongs to (``f_table_name``).
        qml: The QGIS style document (``styleQML``).
        geometry_column: The layer's geometry column (GDAL's GeoPackage default is ``geom``).
        style_name: Style name shown in QGIS (QGIS limits it to 30 characters); defaults to the layer name.
        description: Free text.
        use_as_default: Whether QGIS applies the style when the layer is opened.
    """
    name = (style_name or layer)[:30]
    now = pd.Timestamp(_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0, tzinfo=None))
    row = {
        "f_table_catalog": "", "f_table_schema": "", "f_table_name": layer, "f_geometry_column": geometry_column,
        "styleName": name, "styleQML": qml, "styleSLD": "", "useAsDefault": bool(use_as_default),
        "description": description, "owner": "maskcd", "ui": "", "update_time": now,
    }
    frame = pd.DataFrame([row], columns=LAYER_STYLES_COLUMNS)
    frame["useAsDefault"] = frame["useAsDefault"].astype(bool)
    return frame
