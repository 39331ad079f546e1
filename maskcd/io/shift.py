"""Global shift (misregistration) between the dates by phase correlation on valid windows."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from maskcd.io.align import AlignedPair

logger = logging.getLogger(__name__)

WARN_PX = 1.0


@dataclass(frozen=True)
class ShiftEstimate:
    """Shift of the after image relative to the before image on the reference grid.

    Args:
        dy: Rows (positive: after content lies further down / south).
        dx: Columns (positive: after content lies further right / east).
        n_windows: Windows that contributed.
        peak: Median peak significance of the windows (standard deviations of the correlation surface; < 10: no
            reliable match).
    """

    dy: float
    dx: float
    n_windows: int
    peak: float

    @property
    def magnitude(self) -> float:
        return math.hypot(self.dy, self.dx)

    def to_dict(self) -> dict:
        return {"dy_px": self.dy, "dx_px": self.dx, "n_windows": self.n_windows, "peak": self.peak}


def phase_correlation(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Sub-pixel translation ``(dy, dx)`` with ``b(y, x) ≈ a(y - dy, x - dx)``, and the correlation peak height.

    Uses a Hann-windowed normalised cross-power spectrum and a parabolic fit around the integer peak.
    """
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa, fb = np.fft.fft2(a * win), np.fft.fft2(b * win)
    cross = fb * np.conj(fa)
    cross /= np.abs(cross) + 1e-12
    corr = np.fft.ifft2(cross).real
    py, px = np.unravel_index(int(np.argmax(corr)), corr.shape)
    h, w = corr.shape

    def sub(c_m, c_0, c_p):
        den = c_m - 2 * c_0 + c_p
        return 0.0 if abs(den) < 1e-12 else 0.5 * (c_m - c_p) / den

    dy = py + sub(corr[(py - 1) % h, px], corr[py, px], corr[(py + 1) % h, px])
    dx = px + sub(corr[py, (px - 1) % w], corr[py, px], corr[py, (px + 1) % w])
    if dy > h / 2:
        dy -= h
    if dx > w / 2:
        dx -= w
    return float(dy), float(dx), float(corr[py, px])


def estimate_shift(pair: AlignedPair, *, size: int = 256, max_windows: int = 9, grid_n: int = 5) -> ShiftEstimate:
    """Estimate the global shift with :func:`maskcd.io.coreg.estimate_global` (textured windows, upsampled phase
    correlation, Lucas–Kanade refinement, agreement between windows) and return it as a :class:`ShiftEstimate`
    (``peak`` = median peak significance of the windows).

    Only a *reliable* shift above one pixel is logged as a warning (an unreliable estimate, e.g. on unrelated images,
    is not misregistration).
    """
    from maskcd.io.coreg import MIN_RELIABILITY, estimate_global

    co = estimate_global(pair, size=size, n_candidates=grid_n, max_windows=max_windows)
    zs = sorted(tp.z for tp in co.tie_points)
    est = ShiftEstimate(co.dy, co.dx, co.n_tie_points, float(zs[len(zs) // 2]) if zs else 0.0)
    reliable = (co.reliability or 0.0) >= MIN_RELIABILITY
    level = logging.WARNING if reliable and est.magnitude > WARN_PX else logging.INFO
    logger.log(
        level,
        "global shift after vs before: dy=%.2f dx=%.2f px (%d windows, reliability %.2f)%s",
        est.dy, est.dx, est.n_windows, co.reliability or 0.0,
        "; above 1 px: misregistration causes false change along edges, co-register the images "
        "(maskcd-map --coregister global)" if level == logging.WARNING else "",
    )
    return est
