"""Options and result of mapping one scene pair (``maskcd-map``; reused per site by ``maskcd-batch``).

This is the contract between the command-line tools and :func:`maskcd.inference.map_scene`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class MapOptions:
    """Settings of one ``maskcd-map`` run; ``--config`` YAML files use the same keys.

    Args:
        model: Preset name, task alias (``mining``, ``buildings``, ...), model folder or Hub id.
        tile: Window size in pixels (``None``: the model's native tile size).
        overlap: Overlap between windows in pixels (an int ≥ 1) or as a fraction of the tile (a float < 1).
        batch_size: Windows per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        threshold: Change probability above which a pixel is change.
        min_area: Polygons (and raster blobs) below this area in m² are removed.
        simplify: Simplification tolerance in metres (``None``: about one pixel).
        aoi: Optional polygon file restricting the mapped area.
        bands: 1-based band indices to read from both images (``None``: what the model records, else the first C).
        prob_out: Where to write the probability COG (``None``: next to the GeoPackage).
        mask_out: Where to write the mask COG (``None``: next to the GeoPackage).
        workers: DataLoader workers reading windows ahead.
        overwrite: Replace existing outputs.
        blend: ``cosine`` (default), ``mean`` or ``crop``.
        layer: GeoPackage layer name.
        coregister: ``off``, ``global`` (default: one sub-pixel shift, applied when reliable and ≥ 0.25 px) or
            ``local`` (tie-point grid and a polynomial displacement field); see :mod:`maskcd.io.coreg`.
        gsd: Mapping pixel size: ``model`` (default: the model's training GSD when the input's is more than 1.5×
            away from it), ``native`` (the before image's), or metres.
        scale: Radiometry: ``auto`` (8-bit as is, 16-bit/float per-band 2–98 % percentiles), ``none``,
            ``percentile`` or ``minmax``; see :mod:`maskcd.io.radiometry`.
        match_histogram: Match the after image's histograms to the before image's (per band) before scaling.
    """

    model: str = "mining"
    tile: int | None = None
    overlap: float = 0.25
    batch_size: int = 8
    device: str = "auto"
    threshold: float = 0.5
    min_area: float = 0.0
    simplify: float | None = None
    aoi: str | None = None
    bands: list[int] | None = None
    prob_out: str | None = None
    mask_out: str | None = None
    workers: int = 2
    overwrite: bool = False
    blend: str = "cosine"
    layer: str = "changes"
    coregister: str = "global"
    gsd: str | float = "model"
    scale: str = "auto"
    match_histogram: bool = False

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MapResult:
    """What one run produced and measured.

    Args:
        gpkg: The GeoPackage written.
        prob_path: The probability COG (uint8, 0–254, 255 = nodata).
        mask_path: The mask COG (uint8 {0, 1}, 255 = nodata).
        n_pixels: Pixels of the reference grid.
        valid_km2: Area with valid data in both dates, km².
        n_polygons: Change polygons written.
        changed_km2: Total polygon area, km².
        shift_px: Estimated global shift of after relative to before ``(dy, dx)`` in pixels.
        coregistration: The ``run_metadata`` ``coregistration`` record (mode, dx/dy, applied, reliability...).
        timings: Seconds per stage.
        run_id: Unique id recorded in the GeoPackage.
    """

    gpkg: Path
    prob_path: Path
    mask_path: Path
    n_pixels: int = 0
    valid_km2: float = 0.0
    n_polygons: int = 0
    changed_km2: float = 0.0
    shift_px: tuple[float, float] = (0.0, 0.0)
    coregistration: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    run_id: str = ""
