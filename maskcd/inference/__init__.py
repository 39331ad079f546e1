"""Large-scene inference: windows → batched model → blended probability and mask COGs (``maskcd-map``)."""

from maskcd.inference.options import MapOptions, MapResult
from maskcd.inference.pipeline import RasterRun, map_rasters, map_scene, output_paths

__all__ = ["MapOptions", "MapResult", "RasterRun", "map_rasters", "map_scene", "output_paths"]
