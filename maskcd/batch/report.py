"""Site and pair reports of ``maskcd-batch``: what a worker returns for a site, ``report.json``, the ``sites`` layer.

:class:`SiteReport` (one per catalog site, with a :class:`PairReport` per mapped pair) is what
:func:`maskcd.batch.worker.process_site` returns and :class:`maskcd.batch.runner.BatchResult` lists; ``to_dict()``
gives the ``report.json`` contents and :meth:`SiteReport.from_dict` reads them back when a finished site is
skipped. :meth:`SiteReport.sites_row` is its row of the ``sites`` layer of ``catalog.gpkg``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("mapped", "skipped", "failed")


def _known(cls, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class PairReport:
    """One mapped pair of a site (a layer of the site's GeoPackage and its two COGs).

    Args:
        layer: Layer name in the site's ``changes.gpkg``.
        before, after: Input image paths.
        before_date, after_date: ISO dates from the catalog (``None`` when it gives none).
        n_polygons, changed_km2, valid_km2, n_pixels: Totals of the pair's ``map_scene`` run.
        shift_px: Estimated ``(dy, dx)`` shift of the after image, pixels.
        coregistration: ``map_scene``'s co-registration figures (without their stage time).
        run_id: The ``map_scene`` run id (also in the polygons' ``run_id`` column).
        seconds: Wall time of the pair's ``map_scene`` call.
        timings: ``map_scene``'s stage timings.
    """

    layer: str
    before: str | None = None
    after: str | None = None
    before_date: str | None = None
    after_date: str | None = None
    n_polygons: int = 0
    changed_km2: float = 0.0
    valid_km2: float = 0.0
    n_pixels: int = 0
    shift_px: list[float] = field(default_factory=lambda: [0.0, 0.0])
    coregistration: dict = field(default_factory=dict)
    run_id: str | None = None
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PairReport:
        return cls(**_known(cls, data))


@dataclass
class SiteReport:
    """What happened to one catalog site (``report.json`` of a mapped site; a failed one carries ``error``).

    Args:
        site_id: The site.
        status: ``mapped`` (in this run), ``skipped`` (up to date, outputs kept) or ``failed``.
        error: One line, ``"<ErrorType>: <message>"`` (failed sites).
        traceback: The worker's traceback (failed sites; not written to report.json, which failed sites lack).
        n_pairs, layers, first_date, last_date: The site's pairs, their layers and date span.
        n_polygons, changed_km2, n_pixels: Sums over the pairs; ``valid_km2`` and ``max_shift_px`` their maximum.
        coreg_*: Site-level co-registration figures (see :func:`coreg_summary`).
        pairs: One :class:`PairReport` per pair, in time order.
        footprint_wkt, footprint_crs: Valid-data outline of the last pair's mask, WKT in that CRS.
        model, device, model_cached, worker_pid: How and where the site ran.
        timings: Stage timings on the worker; ``seconds`` its wall time.
    """

    site_id: str
    status: str
    error: str | None = None
    traceback: str | None = None
    n_pairs: int = 0
    layers: list[str] = field(default_factory=list)
    first_date: str | None = None
    last_date: str | None = None
    n_polygons: int = 0
    changed_km2: float = 0.0
    valid_km2: float = 0.0
    n_pixels: int = 0
    max_shift_px: float = 0.0
    coreg_mode: str | None = None
    coreg_applied: bool | None = None
    coreg_dx_px: float | None = None
    coreg_dy_px: float | None = None
    coreg_reliability: float | None = None
    coreg_rmse_px: float | None = None
    pairs: list[PairReport] = field(default_factory=list)
    footprint_wkt: str | None = None
    footprint_crs: str | None = None
    model: str | None = None
    device: str | None = None
    model_cached: bool | None = None
    worker_pid: int | None = None
    timings: dict = field(default_factory=dict)
    seconds: float | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"site {self.site_id}: status must be one of {STATUSES}, not {self.status!r}")
        self.pairs = [p if isinstance(p, PairReport) else PairReport.from_dict(p) for p in self.pairs]

    @classmethod
    def failure(cls, site_id: str, error: str, *, traceback: str | None = None,
                seconds: float | None = None) -> SiteReport:
        """A failed site."""
        return cls(site_id=site_id, status="failed", error=error, traceback=traceback, seconds=seconds)

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def has_outputs(self) -> bool:
        """Whether the site's folder holds finished outputs (mapped now or earlier)."""
        return self.status in ("mapped", "skipped")

    @property
    def mp_per_s(self) -> float | None:
        """Megapixels of the reference grid per second of ``map_scene`` over all pairs (``None`` when unknown)."""
        seconds = sum(p.seconds for p in self.pairs)
        return self.n_pixels / 1e6 / seconds if seconds > 0 and self.n_pixels else None

    def to_dict(self) -> dict:
        """The ``report.json`` contents; a failed site gives ``site_id, status, error, traceback, seconds``."""
        if self.failed:
            keys = ("site_id", "status", "error", "traceback", "seconds")
            return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        data = dataclasses.asdict(self)
        for key in ("error", "traceback"):
            data.pop(key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides) -> SiteReport:
        """A report from ``report.json`` contents (unknown keys are ignored), with ``overrides`` applied."""
        return cls(**{**_known(cls, data), **overrides})

    def sites_row(self) -> dict:
        """The site's attributes in the ``sites`` layer: the state of its outputs (a resumed site is as mapped as
        a fresh one), totals and co-registration figures."""
        return {
            "site_id": self.site_id, "status": "failed" if self.failed else "mapped",
            "n_pairs": self.n_pairs, "first_date": self.first_date, "last_date": self.last_date,
            "n_polygons": self.n_polygons, "changed_km2": self.changed_km2, "valid_km2": self.valid_km2,
            "max_shift_px": self.max_shift_px, "coreg_mode": self.coreg_mode, "coreg_applied": self.coreg_applied,
            "coreg_dx_px": self.coreg_dx_px, "coreg_dy_px": self.coreg_dy_px,
            "coreg_reliability": self.coreg_reliability, "error": self.error,
        }


def coreg_summary(pairs: list[PairReport]) -> dict:
    """Site-level co-registration figures (``coreg_*`` of :class:`SiteReport`): those of the pair with the largest
    estimated shift, whether any pair was corrected, and the lowest reliability."""
    cos = [p.coregistration for p in pairs if p.coregistration]
    if not cos:
        return {}
    worst = max(cos, key=lambda c: abs(c.get("dx_px") or 0.0) + abs(c.get("dy_px") or 0.0))
    rel = [c["reliability"] for c in cos if c.get("reliability") is not None]
    return {
        "coreg_mode": worst.get("mode"), "coreg_applied": any(bool(c.get("applied")) for c in cos),
        "coreg_dx_px": worst.get("dx_px"), "coreg_dy_px": worst.get("dy_px"),
        "coreg_reliability": min(rel) if rel else None, "coreg_rmse_px": worst.get("rmse_px"),
    }


__all__ = ["PairReport", "STATUSES", "SiteReport", "coreg_summary"]
