"""Whole-scene evaluation: map a GeoTIFF pair with the production pipeline and score the mask against a truth raster.

Used by ``maskcd-map --demo``, the demo training script and its tests. Mapping goes through
:func:`maskcd.inference.map_rasters` (alignment, tiling, blending, COGs), so what is scored is exactly what
``maskcd-map`` produces.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import torch

from maskcd.contract import IGNORE_INDEX, NODATA, uint8_to_prob
from maskcd.errors import InputError
from maskcd.evaluation.metrics import ChangeMetrics
from maskcd.io.open import open_raster


def score_mask(mask_path: str | os.PathLike, truth_path: str | os.PathLike, *, objects: bool = False) -> dict:
    """Change metrics of a mask raster ({0, 1}, 255 = nodata) against a truth raster on the same grid.

    Truth values: 1 = change, 0 = none, 255 = ignored; pixels that are nodata in the mask are ignored too. Pixel counts
    are accumulated block by block (flat memory); ``objects=True`` adds object-level P/R at IoU ≥ 0.5, which needs
    the whole scene in memory.
    """
    metrics = ChangeMetrics(objects=objects)
    with open_raster(mask_path, "change mask") as m, open_raster(truth_path, "truth") as t:
        if (m.width, m.height) != (t.width, t.height) or not m.transform.almost_equals(t.transform):
            raise InputError(f"truth {truth_path} is not on the grid of the mask {mask_path}: warp it onto that grid")
        windows = [None] if objects else [w for _, w in m.block_windows(1)]
        for window in windows:
            pred, true = m.read(1, window=window), t.read(1, window=window)
            target = np.where(pred == NODATA, IGNORE_INDEX, true).astype(np.int64)
            metrics.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target))
    return metrics.compute()


def evaluate_scene(model, before, after, truth, threshold: float = 0.5, overlap: float = 0.25,
                   tile: int | None = None, batch_size: int = 8) -> tuple[dict, np.ndarray]:
    """Map a scene pair (GeoTIFF paths) with ``model`` and score it against ``truth`` (pixel and object level).

    Returns the metrics and the ``(H, W)`` float32 change probability (NaN where nodata).
    """
    from maskcd.inference import MapOptions, map_rasters

    options = MapOptions(model=str(getattr(getattr(model, "config", None), "_name_or_path", "") or "in-memory model"),
                         tile=tile, overlap=overlap, batch_size=batch_size, threshold=threshold, device="cpu",
                         workers=0)
    with tempfile.TemporaryDirectory(prefix="maskcd-eval-") as tmp:
        prob_path, mask_path = Path(tmp) / "prob.tif", Path(tmp) / "mask.tif"
        map_rasters(before, after, prob_path, mask_path, options, model=model, progress=False)
        metrics = score_mask(mask_path, truth, objects=True)
        with rasterio.open(prob_path) as src:
            raw = src.read(1)
    prob = uint8_to_prob(raw)
    return metrics, prob
