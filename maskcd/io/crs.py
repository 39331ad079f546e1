"""The local UTM zone of a footprint, from PROJ's database (as geopandas' ``estimate_utm_crs`` does)."""

from __future__ import annotations

from pyproj import CRS
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info


def utm_crs_at(lon: float, lat: float) -> CRS | None:
    """The WGS 84 UTM CRS whose zone contains the point ``(lon, lat)``, ``None`` where none does (polar regions)."""
    infos = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    return CRS.from_epsg(infos[0].code) if infos else None
