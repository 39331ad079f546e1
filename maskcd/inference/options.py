"""Options and result of mapping one scene pair (``maskcd-map``; reused per site by ``maskcd-batch``).

This is the contract between the command-line tools and :func:`maskcd.inference.map_scene`. ``MapOptions`` checks
its values when it is made (and :func:`~maskcd.inference.map_scene` checks them again before a run), so a bad value
is one :class:`~maskcd.errors.ConfigError` line naming the option and what it accepts, wherever it came from.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from maskcd.options import as_int as _int
from maskcd.options import as_number as _number
from maskcd.options import check_value as _check
from maskcd.options import parse_bands

MIN_TILE = 16
"""Smallest window (px) the pipeline maps with; models whose stride does not divide the tile pad it themselves."""
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


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

    Raises:
        ConfigError: A value out of range or of the wrong kind (see :meth:`validate`).
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> MapOptions:
        """Check every value and normalise its form (in place); returns ``self``.

        Band lists may be given as text (``"3,2,1"``), ``gsd`` as text (``"0.5"``), paths as :class:`~pathlib.Path`;
        an overlap of whole pixels becomes an ``int``.

        Raises:
            ConfigError: One line naming the option, the bad value and the allowed values.
        """
        from maskcd.inference.blend import BLEND_MODES
        from maskcd.io.coreg import MODES as COREG_MODES
        from maskcd.io.radiometry import MODES as SCALE_MODES

        if isinstance(self.model, os.PathLike):
            self.model = str(self.model)
        _check(isinstance(self.model, str) and self.model.strip() != "", "model", self.model,
               "a preset name, task alias, model folder or Hub id")
        if self.tile is not None:
            self.tile = _int(self.tile, "tile", f"an integer >= {MIN_TILE} (pixels), or null for the model's tile")
            _check(self.tile >= MIN_TILE, "tile", self.tile, f"an integer >= {MIN_TILE} (pixels)")
        self.overlap = _number(self.overlap, "overlap", "pixels (>= 1) or a fraction of the tile (< 1)")
        _check(self.overlap >= 0, "overlap", self.overlap, "pixels (>= 1) or a fraction of the tile (0 to 0.5)")
        _check(not 0.5 < self.overlap < 1, "overlap", self.overlap, "a fraction of the tile of at most 0.5")
        if self.overlap >= 1 and float(self.overlap).is_integer():
            self.overlap = int(self.overlap)
        if self.tile is not None and self.overlap >= 1:
            _check(self.overlap <= self.tile // 2, "overlap", self.overlap,
                   f"at most half the tile {self.tile} ({self.tile // 2} px)")
        self.batch_size = _int(self.batch_size, "batch_size", "an integer >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(isinstance(self.device, str) and DEVICE_PATTERN.fullmatch(self.device) is not None, "device",
               self.device, "auto, cpu, cuda or cuda:N")
        self.threshold = _number(self.threshold, "threshold", "a probability between 0 and 1 (exclusive)")
        _check(0 < self.threshold < 1, "threshold", self.threshold, "a probability between 0 and 1 (exclusive)")
        self.min_area = _number(self.min_area, "min_area", "an area in m² >= 0")
        _check(self.min_area >= 0, "min_area", self.min_area, "an area in m² >= 0")
        if self.simplify is not None:
            self.simplify = _number(self.simplify, "simplify", "a tolerance in metres >= 0, or null for one pixel")
            _check(self.simplify >= 0, "simplify", self.simplify, "a tolerance in metres >= 0, or null for one pixel")
        for name in ("aoi", "prob_out", "mask_out"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, str(value))
            _check(value is None or isinstance(getattr(self, name), str), name, value, "a file path or null")
        self.bands = parse_bands(self.bands)
        self.workers = _int(self.workers, "workers", "an integer >= 0")
        _check(self.workers >= 0, "workers", self.workers, "an integer >= 0")
        for name in ("overwrite", "match_histogram"):
            _check(isinstance(getattr(self, name), bool), name, getattr(self, name), "true or false")
        _check(self.blend in BLEND_MODES, "blend", self.blend, " | ".join(BLEND_MODES))
        _check(isinstance(self.layer, str) and self.layer.strip() != "", "layer", self.layer, "a non-empty name")
        _check(self.coregister in COREG_MODES, "coregister", self.coregister, " | ".join(COREG_MODES))
        _check(self.scale in SCALE_MODES, "scale", self.scale, " | ".join(SCALE_MODES))
        self.gsd = _gsd(self.gsd)
        return self

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict:
        return asdict(self)


def _gsd(value) -> str | float:
    allowed = "model, native or a positive pixel size in metres"
    if isinstance(value, str) and value.strip().lower() in ("model", "native"):
        return value.strip().lower()
    value = _number(value, "gsd", allowed)
    _check(value > 0 and value != float("inf"), "gsd", value, allowed)
    return float(value)


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
