"""Radiometric scaling of the two dates into the model's value range (``--scale``, ``--match-histogram``).

A model normalises raw values as ``(x / value_scale - mean) / std`` (its :class:`~maskcd.contract.InferenceSpec`),
which fits 8-bit imagery with ``value_scale = 255``. 12/16-bit or float reflectance imagery must first be brought into
``[0, value_scale]``:

* ``auto`` (default): a date whose bands are 8-bit passes as it is; 16-bit and float dates are scaled by per-band
  percentiles (2–98 %); a model whose ``value_scale`` exceeds 255 (trained on raw high-bit-depth values) gets every
  date as it is.
* ``percentile``: per band and date, the 2nd percentile maps to 0 and the 98th to ``value_scale`` (clipped).
* ``minmax``: the same with the minimum and maximum.
* ``none``: values as they are (divided by ``value_scale`` by the model's normalisation).

The statistics come from one decimated read (at most :data:`SAMPLE_SIZE` px a side, nearest) of the overlap of the two
dates (pixels valid in both), each date separately, so two sensors can be compared. ``--match-histogram`` maps the
after image's per-band quantiles onto the before image's first (then the before image's scaling applies to both).
A band that is constant or empty over the overlap is an :class:`~maskcd.errors.InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling

from maskcd.errors import ConfigError, InputError

MODES = ("auto", "none", "percentile", "minmax")
PERCENTILES = (2.0, 98.0)
SAMPLE_SIZE = 1024
N_QUANTILES = 257


@dataclass(frozen=True)
class DateScaling:
    """Per-band linear scaling of one date: ``low`` maps to 0 and ``high`` to the target (clipped); ``None`` = as is."""

    method: str
    dtype: str
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        out = {"method": self.method, "dtype": self.dtype}
        if self.low is not None:
            out.update(low=[float(v) for v in self.low], high=[float(v) for v in self.high])
        return out


@dataclass(frozen=True)
class Radiometry:
    """How raw window values are brought into ``[0, target]`` (see the module docstring)."""

    mode: str
    target: float
    before: DateScaling
    after: DateScaling
    match_quantiles: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...] | None = None
    n_samples: int = 0

    @property
    def is_identity(self) -> bool:
        return self.before.low is None and self.after.low is None and self.match_quantiles is None

    def apply(self, a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scale raw ``(C, h, w)`` float32 windows in place (invalid pixels stay 0)."""
        if self.match_quantiles is not None:
            for i, (qa, qb) in enumerate(self.match_quantiles):
                b[i] = np.interp(b[i], qa, qb).astype(np.float32)
        for img, sc in ((a, self.before), (b, self.after if self.match_quantiles is None else self.before)):
            if sc.low is None:
                continue
            low = np.asarray(sc.low, np.float32)[:, None, None]
            span = (np.asarray(sc.high, np.float32) - np.asarray(sc.low, np.float32))[:, None, None]
            np.subtract(img, low, out=img)
            np.multiply(img, np.float32(self.target) / span, out=img)
            np.clip(img, 0.0, self.target, out=img)
        a[:, ~valid] = 0.0
        b[:, ~valid] = 0.0
        return a, b

    def to_metadata(self) -> dict:
        return {
            "mode": self.mode, "target_range": [0.0, float(self.target)], "percentiles": list(PERCENTILES),
            "before": self.before.to_dict(), "after": self.after.to_dict(),
            "histogram_matched": self.match_quantiles is not None, "sample_pixels": self.n_samples,
        }


def _dtype(path: str, bands) -> str:
    with rasterio.open(path) as ds:
        return ds.dtypes[bands[0] - 1]


def compute_radiometry(pair, mode: str = "auto", *, match_histogram: bool = False,
                       percentiles: tuple[float, float] = PERCENTILES) -> Radiometry:
    """Per-band, per-date scaling of an aligned pair into the model's value range (one decimated read).

    Raises:
        InputError: A band is constant or has no valid pixel over the overlap.
        ConfigError: Unknown mode.
    """
    if mode not in MODES:
        raise ConfigError(f"--scale must be one of {', '.join(MODES)}, got {mode!r}")
    spec = pair.spec
    target = float(spec.value_scale)
    dtypes = {"before": _dtype(pair.before, pair.bands), "after": _dtype(pair.after, pair.bands)}
    methods = {}
    for role, dt in dtypes.items():
        if mode == "none" or (mode == "auto" and (np.dtype(dt) == np.uint8 or target > 255)):
            methods[role] = "none"
        else:
            methods[role] = "minmax" if mode == "minmax" else "percentile"
    if all(m == "none" for m in methods.values()) and not match_histogram:
        return Radiometry(mode, target, DateScaling("none", dtypes["before"]), DateScaling("none", dtypes["after"]))

    g = pair.grid
    factor = max(1, int(np.ceil(max(g.width, g.height) / SAMPLE_SIZE)))
    coarse = g.scaled(factor)
    with pair.reader(coarse, Resampling.nearest, coregistered=False, scaled=False) as rd:
        a, b, valid = rd.read(0, 0, coarse.height, coarse.width)
    n = int(valid.sum())
    lo_p, hi_p = (0.0, 100.0) if mode == "minmax" else percentiles
    scalings = {}
    samples = {}
    for role, img, path in (("before", a, pair.before), ("after", b, pair.after)):
        vals = img[:, valid]
        samples[role] = vals
        for i, band in enumerate(pair.bands):
            if vals.shape[1] == 0:
                raise InputError(
                    f"{role} image {path}: no pixel is valid in both dates over their overlap, so band {band} has no "
                    f"values to scale: check the nodata values or pass images of the same place")
            lo, hi = np.percentile(vals[i], [lo_p, hi_p])
            if not hi - lo > 1e-12 * max(1.0, abs(hi)):
                raise InputError(
                    f"band {band} of the {role} image {path} is constant ({lo:g}) over the overlap of the two dates: "
                    f"drop it with --bands or pass --scale none")
        if methods[role] == "none":
            scalings[role] = DateScaling("none", dtypes[role])
        else:
            lo, hi = np.percentile(vals, [lo_p, hi_p], axis=1)
            scalings[role] = DateScaling(methods[role], dtypes[role], tuple(map(float, lo)), tuple(map(float, hi)))
    match = None
    if match_histogram:
        qs = np.linspace(0, 100, N_QUANTILES)
        qa = np.percentile(samples["after"], qs, axis=1).T
        qb = np.percentile(samples["before"], qs, axis=1).T
        # np.interp needs increasing x: collapse ties
        match = tuple((tuple(map(float, x)), tuple(map(float, y))) for x, y in (_strict(xa, yb) for xa, yb in zip(qa, qb)))
    return Radiometry(mode, target, scalings["before"], scalings["after"], match, n)


def _strict(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated ``x`` quantiles (constant stretches) so that ``np.interp(…, x, y)`` is well defined."""
    keep = np.concatenate([[True], np.diff(x) > 0])
    return x[keep], y[keep]
