"""Reading and aligning the before/after images (pipeline stage 1)."""

from maskcd.io.align import AlignedPair, Grid, PairReader, align_pair, resolve_gsd, select_bands
from maskcd.io.coreg import Coregistration, TiePoint
from maskcd.io.coreg import estimate as estimate_coregistration
from maskcd.io.open import acquisition_date, open_raster
from maskcd.io.radiometry import Radiometry, compute_radiometry
from maskcd.io.shift import ShiftEstimate, estimate_shift, phase_correlation

__all__ = [
    "AlignedPair",
    "Coregistration",
    "Grid",
    "PairReader",
    "Radiometry",
    "ShiftEstimate",
    "TiePoint",
    "acquisition_date",
    "align_pair",
    "compute_radiometry",
    "estimate_coregistration",
    "estimate_shift",
    "open_raster",
    "phase_correlation",
    "resolve_gsd",
    "select_bands",
]
