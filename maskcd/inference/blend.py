"""Edge-aware blending weights for overlapping window probabilities (pipeline stage 4).

Probabilities (never labels) are blended: the mosaic is ``Σ w·p / Σ w`` in float32, thresholded once afterwards.
The weight of a window is separable, flat 1.0 in its core and a raised-cosine ramp inside the overlap band, with no
taper on sides that touch the scene (or AOI) border, and floored at :data:`WEIGHT_FLOOR` so pixels covered once never
divide by ~0.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from maskcd.errors import ConfigError

WEIGHT_FLOOR = 1e-3
BLEND_MODES = ("cosine", "mean", "crop")


def _ramp_1d(n: int, overlap: int, taper_start: bool, taper_end: bool, mode: str) -> np.ndarray:
    w = np.ones(n, dtype=np.float64)
    ov = min(overlap, n // 2)
    if ov <= 0 or mode == "mean":
        return w
    if mode == "cosine":
        # raised cosine from ~0 to ~1 over the overlap band (pixel centres)
        ramp = 0.5 * (1.0 - np.cos(np.pi * (np.arange(ov) + 0.5) / ov))
    elif mode == "crop":
        # keep the core: the outer half of the overlap band defers to the neighbour ("clipping")
        ramp = np.where(np.arange(ov) < ov // 2, 0.0, 1.0)
    else:
        raise ConfigError(f"unknown blend mode {mode!r}; valid: {', '.join(BLEND_MODES)}")
    if taper_start:
        w[:ov] = ramp
    if taper_end:
        w[n - ov :] = ramp[::-1]
    return w


@lru_cache(maxsize=64)
def window_weights(
    height: int, width: int, overlap: int, top: bool, bottom: bool, left: bool, right: bool, mode: str = "cosine"
) -> np.ndarray:
    """``(height, width)`` float32 weights of a window; ``top``… are True where the window touches the border.

    The returned array is shared (cached): do not modify it.
    """
    wy = _ramp_1d(height, overlap, not top, not bottom, mode)
    wx = _ramp_1d(width, overlap, not left, not right, mode)
    w = np.maximum(np.outer(wy, wx), WEIGHT_FLOOR).astype(np.float32)
    w.setflags(write=False)
    return w
