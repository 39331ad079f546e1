"""Reading and aligning the before/after images (pipeline stage 1)."""

from maskcd.io.align import AlignedPair, Grid, PairReader, align_pair, select_bands
from maskcd.io.open import acquisition_date, open_raster
from maskcd.io.shift import ShiftEstimate, estimate_shift, phase_correlation

__all__ = [
    "AlignedPair",
    "Grid",
    "PairReader",
    "ShiftEstimate",
    "acquisition_date",
    "align_pair",
    "estimate_shift",
    "open_raster",
    "phase_correlation",
    "select_bands",
]
