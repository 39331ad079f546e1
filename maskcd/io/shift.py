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
        peak: Median normalised correlation peak height (1 = perfect match, ~0 = no match).
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


def estimate_shift(pair: AlignedPair, *, size: int = 256, max_windows: int = 6, grid_n: int = 4) -> ShiftEstimate:
    """Estimate the global shift on up to ``max_windows`` textured ``size²`` windows with ≥ 90 % valid data, taken
    from a ``grid_n × grid_n`` spread of candidate positions over the scene; the median over windows is returned.

    A shift above one pixel is logged as a warning: misregistration creates false change along edges.
    """
    g = pair.grid
    size = int(min(size, g.height, g.width))
    if size < 16:
        return ShiftEstimate(0.0, 0.0, 0, 0.0)
    rows = np.unique(np.linspace(0, g.height - size, num=max(1, min(grid_n, g.height // size)), dtype=int))
    cols = np.unique(np.linspace(0, g.width - size, num=max(1, min(grid_n, g.width // size)), dtype=int))
    # centre-out order, so that a few windows already represent the scene
    cands = sorted(((r, c) for r in rows for c in cols),
                   key=lambda rc: (rc[0] + size / 2 - g.height / 2) ** 2 + (rc[1] + size / 2 - g.width / 2) ** 2)
    shifts = []
    with pair.reader() as rd:
        for r, c in cands:
            if len(shifts) >= max_windows:
                break
            a, b, valid = rd.read(int(r), int(c), size, size)
            if valid.mean() < 0.9:
                continue
            ga, gb = a.mean(axis=0), b.mean(axis=0)
            if ga[valid].std() < 1e-6 or gb[valid].std() < 1e-6:
                continue
            ga[~valid] = ga[valid].mean()
            gb[~valid] = gb[valid].mean()
            shifts.append(phase_correlation(ga, gb))
    if not shifts:
        logger.info("shift estimate: no textured window with ≥90%% valid data")
        return ShiftEstimate(0.0, 0.0, 0, 0.0)
    arr = np.array(shifts)
    est = ShiftEstimate(float(np.median(arr[:, 0])), float(np.median(arr[:, 1])), len(shifts), float(np.median(arr[:, 2])))
    level = logging.WARNING if est.magnitude > WARN_PX else logging.INFO
    logger.log(
        level,
        "global shift after vs before: dy=%.2f dx=%.2f px (%d windows, peak %.2f)%s",
        est.dy, est.dx, est.n_windows, est.peak,
        "; above 1 px: misregistration causes false change along edges, co-register the images" if level == logging.WARNING else "",
    )
    return est
