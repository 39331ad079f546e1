"""The raster and model-input contract shared by every stage: what the values in our rasters and labels mean.

This module depends on numpy only (torch is imported when :meth:`InferenceSpec.normalize` runs), so that the reading
side (:mod:`maskcd.io`) and the writing side (:mod:`maskcd.inference`, :mod:`maskcd.vectorization`,
:mod:`maskcd.batch`) agree with the models without importing them.

* Output rasters are uint8 with :data:`NODATA` = 255: the probability COG stores ``round(p × PROB_SCALE)`` with
  :data:`PROB_SCALE` = 254 (so 0–254 are probabilities and 255 stays free for nodata; see :func:`prob_to_uint8` and
  :func:`uint8_to_prob`), the mask COG stores 0 = no change, 1 = change.
* Label rasters and tensors use 0 = unchanged, 1 = changed and :data:`IGNORE_INDEX` = 255 for pixels excluded from
  losses and metrics.
* :class:`InferenceSpec` is what a checkpoint needs from raw imagery (bands, value scale, normalisation, tile size,
  ground sample distance); the models store it in their config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

NODATA = 255
"""Nodata value of every uint8 output raster (probability and mask COGs)."""

PROB_SCALE = 254
"""The probability COG stores ``round(p * PROB_SCALE)``: 0–254, leaving :data:`NODATA` free."""

IGNORE_INDEX = 255
"""Label value that is excluded from losses and metrics."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def prob_to_uint8(prob: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] → the probability raster's uint8 values (``round(p × 254)``, NaN → :data:`NODATA`).

    Values outside [0, 1] are clipped.
    """
    p = np.asarray(prob, dtype=np.float32)
    out = np.clip(np.rint(np.nan_to_num(p, nan=0.0) * PROB_SCALE), 0, PROB_SCALE).astype(np.uint8)
    out[np.isnan(p)] = NODATA
    return out


def uint8_to_prob(raw: np.ndarray, nodata: int | None = NODATA) -> np.ndarray:
    """The probability raster's uint8 values → float32 probabilities, NaN where ``raw == nodata``."""
    raw = np.asarray(raw)
    prob = raw.astype(np.float32) / np.float32(PROB_SCALE)
    if nodata is not None:
        prob[raw == nodata] = np.nan
    return prob


@dataclass(frozen=True)
class InferenceSpec:
    """What a checkpoint needs from raw imagery.

    Args:
        input_bands: Names of the input bands in order (their count is the model's input channel count).
        value_scale: Raw values are divided by this to reach [0, 1] before normalisation (255 for 8-bit imagery).
        image_mean: Per-band mean in the [0, 1] scale.
        image_std: Per-band standard deviation in the [0, 1] scale.
        tile_size: Native tile (chip) size in pixels the model was trained on.
        gsd: Ground sample distance in metres of the training imagery, ``None`` when unknown.
    """

    input_bands: tuple[str, ...] = ("red", "green", "blue")
    value_scale: float = 255.0
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    tile_size: int = 256
    gsd: float | None = None

    @property
    def num_bands(self) -> int:
        return len(self.input_bands)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Scale and normalise raw ``(..., C, H, W)`` values (any dtype) to the model's input distribution."""
        import torch

        x = raw.float() / self.value_scale
        mean = torch.as_tensor(self.image_mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.image_std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {
            "input_bands": list(self.input_bands),
            "value_scale": self.value_scale,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "tile_size": self.tile_size,
            "gsd": self.gsd,
        }


__all__ = [
    "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "InferenceSpec", "NODATA", "PROB_SCALE", "prob_to_uint8",
    "uint8_to_prob",
]
