"""Co-registration of the after image onto the before image (``--coregister {off,global,local}``).

Shifts are in pixels of the reference (mapping) grid and give the after image's *content offset*: what lies at pixel
``p`` of the before image lies at ``p + d`` of the after image as read on the grid, so the corrected after image is
``after(p + d(p))``.

* **Matching** (:func:`match_window`): upsampled phase correlation (:func:`skimage.registration.phase_cross_correlation`
  on Hann-windowed, band-standardised windows) for the integer and coarse sub-pixel shift, then an ECC
  (enhanced-correlation, Lucas–Kanade-type Gauss–Newton) refinement of the translation, invariant to gain and offset
  so that two dates with different radiometry still match, to reach ≤ 0.1 px. The significance of the phase-correlation peak is its height above the correlation
  surface's noise in standard deviations (``z``): unrelated images or noise give ``z`` ≈ 4–6, a real match tens.
* **global** (:func:`estimate_global`): the best-textured windows of a spread of candidates over the overlap are
  matched; the windows that are significant and agree (within :data:`AGREE_PX` of their median) give the shift, and
  ``reliability`` = agreeing windows / windows tried. The shift is applied only when ``reliability`` ≥
  :data:`MIN_RELIABILITY` with at least two agreeing windows and when it is ≥ :data:`MIN_APPLY_PX`.
* **local** (:func:`estimate_local`): a grid of tie points over the overlap (as AROSICS does), each with its shift and
  reliability; outliers are rejected by median/MAD and then by the residuals of a low-order polynomial fit (affine, or
  quadratic with ≥ 12 points); the polynomial is the displacement field.

Applying (:func:`corrected_src_transform`) changes only the after image's *source transform* inside the existing
:class:`~rasterio.vrt.WarpedVRT`: one resampling, no full-scene copy. The local field is applied per read window as
the least-squares affine approximation of the field over that window.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
from affine import Affine

from maskcd.errors import ConfigError

logger = logging.getLogger(__name__)

Z_MIN = 10.0
"""Phase-correlation peak significance (standard deviations above the surface) below which a window is not trusted.
Unrelated images and noise give about 4–6 on 128²–256² windows."""
AGREE_PX = 0.5
"""Windows within this distance (px) of the windows' median shift agree (global mode)."""
MIN_RELIABILITY = 0.5
"""Global mode applies the shift only when at least this fraction of the windows tried agree."""
MIN_APPLY_PX = 0.25
"""Shifts smaller than this are recorded but not applied."""
WARN_PX = 1.0
"""A reliable shift above this is logged as a warning when it is not corrected (``--coregister off`` is not estimated)."""
MODES = ("off", "global", "local")


@dataclass(frozen=True)
class Match:
    """Result of matching one window pair.

    Args:
        dy: Row offset of the after content (px).
        dx: Column offset of the after content (px).
        z: Peak significance (standard deviations of the correlation surface above its mean).
        peak: Peak height of the normalised cross-power correlation (1 = identical, ~0 = unrelated).
        refined: Whether the ECC refinement converged (else ``dy, dx`` are the phase-correlation values).
    """

    dy: float
    dx: float
    z: float
    peak: float
    refined: bool

    @property
    def significant(self) -> bool:
        return self.z >= Z_MIN


@dataclass(frozen=True)
class TiePoint:
    """A matched window: centre ``(row, col)`` in grid pixels, its shift, significance and whether the fit used it."""

    row: float
    col: float
    dy: float
    dx: float
    z: float
    reliability: float
    used: bool = False


@dataclass(frozen=True)
class Coregistration:
    """Outcome of ``--coregister`` (see the module docstring).

    Args:
        mode: ``off``, ``global`` or ``local``.
        dy: Global row offset (local mode: mean over the used tie points).
        dx: Global column offset (same).
        applied: Whether the correction is applied when the after image is read.
        reliability: 0–1 (fraction of windows / tie points that are significant and consistent); ``None`` when off.
        rmse_px: RMS deviation of the used windows / tie points from the applied model (px); ``None`` when none.
        tie_points: Every window or tie point tried.
        grid_shape: ``(height, width)`` of the grid the offsets refer to.
        order: Polynomial order of the local field (0 = translation).
        coef_y: Local field coefficients for ``dy`` in normalised coordinates (see :func:`poly_terms`).
        coef_x: Same for ``dx``.
        seconds: Time spent estimating.
    """

    mode: str = "off"
    dy: float = 0.0
    dx: float = 0.0
    applied: bool = False
    reliability: float | None = None
    rmse_px: float | None = None
    tie_points: tuple[TiePoint, ...] = ()
    grid_shape: tuple[int, int] = (1, 1)
    order: int = 0
    coef_y: tuple[float, ...] = ()
    coef_x: tuple[float, ...] = ()
    seconds: float = 0.0
    note: str = ""

    @property
    def n_tie_points(self) -> int:
        return len(self.tie_points)

    @property
    def is_local(self) -> bool:
        return self.applied and self.mode == "local" and len(self.coef_x) > 0

    def field(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Displacement ``(dy, dx)`` at grid pixel positions (pixel-centre coordinates as floats)."""
        rows, cols = np.asarray(rows, float), np.asarray(cols, float)
        if not self.is_local:
            return np.full(rows.shape, self.dy), np.full(rows.shape, self.dx)
        t = poly_terms(rows, cols, self.grid_shape, self.order)
        return t @ np.asarray(self.coef_y), t @ np.asarray(self.coef_x)

    def window_affine(self, row: int, col: int, height: int, width: int) -> Affine:
        """The grid-pixel map ``p -> p + d(p)`` over a window, as an :class:`Affine` on ``(col, row)`` pixel-corner
        coordinates: exact for a translation, the least-squares affine fit of the field over the window otherwise."""
        if not self.is_local:
            return Affine.translation(self.dx, self.dy)
        rr, cc = np.meshgrid(np.linspace(row, row + height, 5), np.linspace(col, col + width, 5), indexing="ij")
        rr, cc = rr.ravel(), cc.ravel()
        dy, dx = self.field(rr - 0.5, cc - 0.5)  # corner coordinates -> pixel-centre field
        design = np.column_stack([cc, rr, np.ones_like(cc)])
        (a, b, c), *_ = np.linalg.lstsq(design, cc + dx, rcond=None)
        (d, e, f), *_ = np.linalg.lstsq(design, rr + dy, rcond=None)
        return Affine(a, b, c, d, e, f)

    def to_metadata(self) -> dict:
        """The ``run_metadata`` ``coregistration`` value."""
        out = {
            "mode": self.mode, "dx_px": round(self.dx, 4), "dy_px": round(self.dy, 4), "applied": bool(self.applied),
            "reliability": None if self.reliability is None else round(self.reliability, 4),
            "n_tie_points": self.n_tie_points,
            "rmse_px": None if self.rmse_px is None else round(self.rmse_px, 4),
            "n_used": sum(tp.used for tp in self.tie_points),
            "seconds": round(self.seconds, 3),
        }
        if self.mode == "local" and self.coef_x:
            out["field"] = {"order": self.order, "coef_dy": [round(v, 6) for v in self.coef_y],
                            "coef_dx": [round(v, 6) for v in self.coef_x], "normalised_by": list(self.grid_shape)}
        if self.note:
            out["note"] = self.note
        return out


def poly_terms(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """Design matrix of a 2-D polynomial (orders 0–2) in coordinates normalised to [-1, 1] over ``shape``."""
    h, w = shape
    v = (np.asarray(rows, float) - (h - 1) / 2) / max(h / 2, 1)
    u = (np.asarray(cols, float) - (w - 1) / 2) / max(w / 2, 1)
    terms = [np.ones_like(u)]
    if order >= 1:
        terms += [u, v]
    if order >= 2:
        terms += [u * u, u * v, v * v]
    return np.stack(terms, axis=-1)


# --------------------------------------------------------------------------------------------------- matching


def to_gray(img: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W)`` float64: mean of the per-band standardised bands (invalid pixels set to 0)."""
    img = np.asarray(img, np.float64)
    if img.ndim == 2:
        img = img[None]
    mask = np.ones(img.shape[1:], bool) if valid is None else valid
    out = np.zeros(img.shape[1:])
    n = 0
    for band in img:
        vals = band[mask]
        if vals.size < 2:
            continue
        sd = vals.std()
        if sd <= 1e-9:
            continue
        out += (band - vals.mean()) / sd
        n += 1
    if n:
        out /= n
    out[~mask] = 0.0
    return out


def texture(gray: np.ndarray) -> float:
    """Mean gradient magnitude of a standardised image (flat or saturated windows score ~0)."""
    gy, gx = np.gradient(gray)
    return float(np.mean(np.hypot(gy, gx)))


def _phase(a: np.ndarray, b: np.ndarray, upsample: int = 4) -> tuple[float, float, float, float]:
    """Phase correlation of two same-size windows: ``(dy, dx, z, peak)`` (content offset of ``b`` against ``a``)."""
    from skimage.registration import phase_cross_correlation

    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa = np.fft.fft2((a - a.mean()) * win)
    fb = np.fft.fft2((b - b.mean()) * win)
    cross = fb * np.conj(fa)
    cross /= np.abs(cross) + 1e-12
    corr = np.fft.ifft2(cross).real
    peak = float(corr.max())
    z = float((peak - corr.mean()) / (corr.std() + 1e-12))
    shift, _, _ = phase_cross_correlation(fa, fb, space="fourier", upsample_factor=upsample, normalization="phase")
    # skimage returns the shift that registers b onto a: the content offset of b is its negative
    return float(-shift[0]), float(-shift[1]), z, peak


def refine_shift(a: np.ndarray, b: np.ndarray, dy: float, dx: float, *, iters: int = 40,
                 sigma: float = 1.0) -> tuple[float, float, bool]:
    """Sub-pixel refinement of the translation ``d`` that maximises the enhanced correlation coefficient between
    ``a(p)`` and ``b(p + d)`` (ECC, Evangelidis & Psarakis 2008: a Gauss–Newton / Lucas–Kanade scheme that is
    invariant to gain and offset, so two dates with different radiometry still match) over the window interior.

    Returns ``(dy, dx, converged)``; ``converged`` is False when the iteration diverged (more than 1.5 px from the
    start), did not settle, or the system is singular, and then the start is returned.
    """
    from scipy import ndimage

    a = ndimage.gaussian_filter(a, sigma)
    b = ndimage.gaussian_filter(b, sigma)
    h, w = a.shape
    margin = int(math.ceil(max(abs(dy), abs(dx)))) + 4
    if h - 2 * margin < 16 or w - 2 * margin < 16:
        return dy, dx, False
    # every second pixel of the interior: the 2×2 system stays well determined at a quarter of the cost
    sl = (slice(margin, h - margin, 2), slice(margin, w - margin, 2))
    rows, cols = np.mgrid[sl].astype(np.float64)
    t = a[sl].ravel() - a[sl].mean()
    norm = np.linalg.norm(t)
    if norm < 1e-9:
        return dy, dx, False
    t /= norm
    spline = ndimage.spline_filter(b, order=3)
    grad_y, grad_x = np.gradient(b)
    y0, x0 = dy, dx
    cy, cx = dy, dx
    step = np.inf
    for _ in range(iters):
        coords = [rows + cy, cols + cx]
        bw = ndimage.map_coordinates(spline, coords, order=3, prefilter=False, mode="nearest").ravel()
        jac = np.column_stack([ndimage.map_coordinates(grad_y, coords, order=1, mode="nearest").ravel(),
                               ndimage.map_coordinates(grad_x, coords, order=1, mode="nearest").ravel()])
        bw -= bw.mean()
        jac -= jac.mean(axis=0)
        hess = jac.T @ jac
        try:
            hinv = np.linalg.inv(hess)
        except np.linalg.LinAlgError:
            return y0, x0, False
        jb, jt = jac.T @ bw, jac.T @ t
        den = t @ bw - jt @ hinv @ jb
        if not den > 0:
            return y0, x0, False
        lam = (bw @ bw - jb @ hinv @ jb) / den
        delta = hinv @ (lam * jt - jb)
        cy += float(delta[0])
        cx += float(delta[1])
        step = math.hypot(*delta)
        if abs(cy - y0) > 1.5 or abs(cx - x0) > 1.5 or not math.isfinite(step):
            return y0, x0, False
        if step < 1e-3:
            break
    if step > 0.02:  # still moving: no stable optimum
        return y0, x0, False
    return float(cy), float(cx), True


def match_window(a: np.ndarray, b: np.ndarray) -> Match:
    """Content offset of the (gray, same-size) window ``b`` against ``a``, its significance, refined to sub-pixel."""
    dy, dx, z, peak = _phase(a, b)
    refined = False
    if z >= Z_MIN:
        dy, dx, refined = refine_shift(a, b, dy, dx)
    return Match(dy, dx, z, peak, refined)


# --------------------------------------------------------------------------------------------------- estimation


def _positions(length: int, size: int, n: int) -> list[int]:
    if length <= size:
        return [0]
    return sorted({int(round(v)) for v in np.linspace(0, length - size, num=max(1, n))})


def _read_gray(reader, r: int, c: int, size: int, min_valid: float = 0.9):
    a, b, valid = reader.read(int(r), int(c), size, size)
    if valid.mean() < min_valid:
        return None
    ga, gb = to_gray(a, valid), to_gray(b, valid)
    return ga, gb, min(texture(ga), texture(gb))


def estimate_global(pair, *, size: int = 256, n_candidates: int = 5, max_windows: int = 9) -> Coregistration:
    """Global shift of the after image (see the module docstring); never raises for unmatched content."""
    import time

    t0 = time.perf_counter()
    g = pair.grid
    size = int(min(size, max(64, min(g.height, g.width) // 2), g.height, g.width))
    if size < 32:
        return Coregistration("global", reliability=0.0, grid_shape=(g.height, g.width), seconds=0.0,
                              note=f"scene smaller than 32 px ({g.width}×{g.height}): not estimated")
    cands = [(r, c) for r in _positions(g.height, size, n_candidates) for c in _positions(g.width, size, n_candidates)]
    windows = []
    with pair.reader(coregistered=False) as rd:
        for r, c in cands:
            got = _read_gray(rd, r, c, size)
            if got is not None and got[2] > 1e-3:
                windows.append((got[2], r, c, got[0], got[1]))
    windows.sort(key=lambda w: -w[0])
    tps = []
    for _, r, c, ga, gb in windows[:max_windows]:
        m = match_window(ga, gb)
        tps.append(TiePoint(r + size / 2 - 0.5, c + size / 2 - 0.5, m.dy, m.dx, m.z,
                            min(1.0, m.z / (2 * Z_MIN)) if m.significant else 0.0))
    return _consensus(tps, (g.height, g.width), time.perf_counter() - t0)


def _consensus(tps: list[TiePoint], shape: tuple[int, int], seconds: float) -> Coregistration:
    if not tps:
        return Coregistration("global", reliability=0.0, grid_shape=shape, seconds=seconds,
                              note="no window with ≥ 90 % valid, textured data")
    sig = [tp for tp in tps if tp.z >= Z_MIN]
    if not sig:
        return Coregistration("global", reliability=0.0, tie_points=tuple(tps), grid_shape=shape, seconds=seconds,
                              note="no significant correlation peak: the dates do not match")
    med = np.median([[tp.dy, tp.dx] for tp in sig], axis=0)
    agree = [tp for tp in sig if math.hypot(tp.dy - med[0], tp.dx - med[1]) <= AGREE_PX]
    used = {id(tp) for tp in agree}
    tps = [replace(tp, used=id(tp) in used) for tp in tps]
    reliability = len(agree) / len(tps)
    if not agree:
        return Coregistration("global", reliability=0.0, tie_points=tuple(tps), grid_shape=shape, seconds=seconds)
    w = np.array([tp.z for tp in agree])
    d = np.array([[tp.dy, tp.dx] for tp in agree])
    dy, dx = (w[:, None] * d).sum(0) / w.sum()
    rmse = float(np.sqrt(np.mean((d[:, 0] - dy) ** 2 + (d[:, 1] - dx) ** 2)))
    reliable = reliability >= MIN_RELIABILITY and len(agree) >= min(2, len(tps))
    applied = reliable and math.hypot(dy, dx) >= MIN_APPLY_PX
    note = "" if reliable else "windows disagree or few are significant: not applied (try --coregister local)"
    return Coregistration("global", float(dy), float(dx), applied, float(reliability), rmse, tuple(tps), shape,
                          seconds=seconds, note=note)


def estimate_local(pair, *, size: int = 128, max_points: int = 10) -> Coregistration:
    """Tie-point grid, robust rejection and a polynomial displacement field (see the module docstring)."""
    import time

    t0 = time.perf_counter()
    g = pair.grid
    shape = (g.height, g.width)
    size = int(min(size, g.height, g.width))
    if size < 32:
        return Coregistration("local", reliability=0.0, grid_shape=shape,
                              note=f"scene smaller than 32 px ({g.width}×{g.height}): not estimated")
    ny = max(2, min(max_points, int(round(2 * g.height / size))))
    nx = max(2, min(max_points, int(round(2 * g.width / size))))
    tps = []
    with pair.reader(coregistered=False) as rd:
        for r in _positions(g.height, size, ny):
            for c in _positions(g.width, size, nx):
                got = _read_gray(rd, r, c, size)
                if got is None or got[2] <= 1e-3:
                    continue
                m = match_window(got[0], got[1])
                rel = min(1.0, m.z / (2 * Z_MIN)) if (m.significant and m.refined) else 0.0
                tps.append(TiePoint(r + size / 2 - 0.5, c + size / 2 - 0.5, m.dy, m.dx, m.z, rel))
    return fit_field(tps, shape, time.perf_counter() - t0)


def fit_field(tps: list[TiePoint], shape: tuple[int, int], seconds: float = 0.0) -> Coregistration:
    """Robust polynomial displacement field from tie points (median/MAD, then iterative residual rejection)."""
    if not tps:
        return Coregistration("local", reliability=0.0, grid_shape=shape, seconds=seconds,
                              note="no tie point with ≥ 90 % valid, textured data")
    cand = np.array([tp.reliability > 0 for tp in tps])
    d = np.array([[tp.dy, tp.dx] for tp in tps])
    rows = np.array([tp.row for tp in tps])
    cols = np.array([tp.col for tp in tps])
    keep = cand.copy()
    if keep.sum() >= 3:
        med = np.median(d[keep], axis=0)
        mad = 1.4826 * np.median(np.abs(d[keep] - med), axis=0)
        lim = np.maximum(4 * mad, 1.0)
        keep &= (np.abs(d - med) <= lim).all(axis=1)
    order, coef = 0, None
    for _ in range(5):
        n = int(keep.sum())
        if n < 3:
            break
        order = 2 if n >= 12 else 1 if n >= 4 else 0
        t = poly_terms(rows[keep], cols[keep], shape, order)
        coef, *_ = np.linalg.lstsq(t, d[keep], rcond=None)
        res = np.hypot(*(poly_terms(rows, cols, shape, order) @ coef - d).T)
        sigma = 1.4826 * np.median(res[keep])
        new = cand & (res <= max(3 * sigma, 0.3))
        if (new == keep).all():
            break
        keep = new
    n_used = int(keep.sum())
    tps = [replace(tp, used=bool(k)) for tp, k in zip(tps, keep, strict=True)]
    reliability = n_used / len(tps)
    if coef is None or n_used < 3:
        return Coregistration("local", reliability=reliability, tie_points=tuple(tps), grid_shape=shape,
                              seconds=seconds, note="fewer than 3 consistent tie points: not applied")
    fitted = poly_terms(rows[keep], cols[keep], shape, order) @ coef
    rmse = float(np.sqrt(np.mean(np.sum((fitted - d[keep]) ** 2, axis=1))))
    mean_dy, mean_dx = d[keep].mean(axis=0)
    # the field's largest displacement over the grid decides whether it is worth applying
    corners = poly_terms(np.array([0, 0, shape[0] - 1, shape[0] - 1, (shape[0] - 1) / 2]),
                         np.array([0, shape[1] - 1, 0, shape[1] - 1, (shape[1] - 1) / 2]), shape, order) @ coef
    big = float(np.hypot(corners[:, 0], corners[:, 1]).max())
    reliable = n_used >= 4 and reliability >= 0.25
    applied = reliable and big >= MIN_APPLY_PX
    note = "" if reliable else "few consistent tie points: not applied"
    return Coregistration("local", float(mean_dy), float(mean_dx), applied, float(reliability), rmse, tuple(tps),
                          shape, order, tuple(float(v) for v in coef[:, 0]), tuple(float(v) for v in coef[:, 1]),
                          seconds=seconds, note=note)


def estimate(pair, mode: str) -> Coregistration:
    """Run ``--coregister MODE`` on an aligned pair and log the outcome (a warning only for a reliable, uncorrected
    shift above :data:`WARN_PX`)."""
    if mode not in MODES:
        raise ConfigError(f"--coregister must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return Coregistration("off", grid_shape=(pair.grid.height, pair.grid.width))
    co = estimate_global(pair) if mode == "global" else estimate_local(pair)
    mag = math.hypot(co.dy, co.dx)
    if co.applied:
        logger.info("co-registration %s: dy=%+.2f dx=%+.2f px applied (reliability %.2f, %d windows, rmse %.2f px)",
                    co.mode, co.dy, co.dx, co.reliability, co.n_tie_points, co.rmse_px or 0.0)
    elif co.reliability and co.reliability >= MIN_RELIABILITY and mag > WARN_PX:
        logger.warning("co-registration %s: shift dy=%+.2f dx=%+.2f px not applied (%s)", co.mode, co.dy, co.dx,
                       co.note or "below the threshold")
    else:
        logger.info("co-registration %s: dy=%+.2f dx=%+.2f px not applied (reliability %s%s)", co.mode, co.dy, co.dx,
                    "n/a" if co.reliability is None else f"{co.reliability:.2f}", f"; {co.note}" if co.note else "")
    return co


# --------------------------------------------------------------------------------------------------- applying


def _local_linear(src_crs, dst_crs, x: float, y: float, step: float) -> Affine:
    """Affine approximation of the coordinate transformation ``dst_crs -> src_crs`` around ``(x, y)``."""
    from rasterio.warp import transform

    xs, ys = transform(dst_crs, src_crs, [x, x + step, x], [y, y, y + step])
    return Affine((xs[1] - xs[0]) / step, (xs[2] - xs[0]) / step, xs[0] - (xs[1] - xs[0]) / step * x - (xs[2] - xs[0]) / step * y,
                  (ys[1] - ys[0]) / step, (ys[2] - ys[0]) / step, ys[0] - (ys[1] - ys[0]) / step * x - (ys[2] - ys[0]) / step * y)


def corrected_src_transform(src_transform: Affine, src_crs, grid_transform: Affine, grid_crs, pixel_map: Affine,
                            centre: tuple[float, float]) -> Affine:
    """The after image's source transform that makes a :class:`~rasterio.vrt.WarpedVRT` onto the grid read
    ``after(pixel_map(p))`` at grid pixel ``p``.

    ``S' = M⁻¹ · S`` with ``M = L · G · A · G⁻¹ · L⁻¹`` (``G`` grid transform, ``A`` the pixel map, ``L`` the local
    affine approximation of grid CRS → source CRS at ``centre``; identity when the CRSs are equal).
    """
    from rasterio.crs import CRS

    g = grid_transform
    m = g * pixel_map * ~g
    if CRS.from_user_input(src_crs) != CRS.from_user_input(grid_crs):
        cx, cy = g * centre
        lin = _local_linear(src_crs, grid_crs, cx, cy, 100 * abs(g.a))
        m = lin * m * ~lin
    return ~m * src_transform


__all__ = [
    "Coregistration", "Match", "TiePoint", "MODES", "corrected_src_transform", "estimate", "estimate_global",
    "estimate_local", "fit_field", "match_window", "poly_terms", "refine_shift", "to_gray",
]

