"""Whole-scene evaluation with a simple sliding window (used by the demo training script and its tests).

This is an *evaluation* helper for co-registered rasters on one grid (e.g. the synthetic demo pairs); the production
large-scene path with warping, streaming and vector output is ``maskcd.inference`` / ``maskcd-map``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from maskcd.errors import InputError
from maskcd.evaluation.metrics import ChangeMetrics


def _windows(length: int, tile: int, stride: int) -> list[int]:
    """Window starts covering ``[0, length)`` with the last window flush with the end (length ≥ tile)."""
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _weight(tile: int) -> np.ndarray:
    """Separable triangular blending weight, never zero (edges still count where only one window covers them)."""
    ramp = 1.0 - np.abs(np.linspace(-1, 1, tile)) * 0.9
    return np.outer(ramp, ramp).astype(np.float32)


@torch.no_grad()
def predict_scene(model, before: np.ndarray, after: np.ndarray, tile: int | None = None, overlap: float = 0.25,
                  batch_size: int = 8, device: str | torch.device = "cpu") -> np.ndarray:
    """Change probability of a whole ``(C, H, W)`` raw pair with overlapping tiles blended by a triangular weight.

    Args:
        model: A maskcd model (its :class:`InferenceSpec` normalises the raw values).
        before, after: Raw ``(C, H, W)`` arrays on the same grid.
        tile: Window size (default: the model's ``tile_size``).
        overlap: Fraction of the window shared with the neighbour.
        batch_size: Windows per forward pass.

    Returns:
        ``(H, W)`` float32 probabilities in [0, 1].
    """
    if before.shape != after.shape:
        raise InputError(f"before {before.shape} and after {after.shape} differ in shape: put them on one grid")
    spec = model.inference_spec
    tile = int(tile or spec.tile_size)
    c, h, w = before.shape
    ph, pw = max(0, tile - h), max(0, tile - w)
    if ph or pw:  # scene smaller than one tile: reflect-pad
        before = np.pad(before, ((0, 0), (0, ph), (0, pw)), mode="reflect")
        after = np.pad(after, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    H, W = before.shape[1:]
    stride = max(1, int(round(tile * (1 - overlap))))
    weight = _weight(tile)
    acc = np.zeros((H, W), np.float32)
    norm = np.zeros((H, W), np.float32)
    boxes = [(y, x) for y in _windows(H, tile, stride) for x in _windows(W, tile, stride)]
    model.eval()
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        a = torch.stack([torch.from_numpy(np.ascontiguousarray(before[:, y : y + tile, x : x + tile])) for y, x in chunk])
        b = torch.stack([torch.from_numpy(np.ascontiguousarray(after[:, y : y + tile, x : x + tile])) for y, x in chunk])
        prob = model(spec.normalize(a).to(device), spec.normalize(b).to(device)).change_prob.float().cpu().numpy()
        for (y, x), p in zip(chunk, prob):
            acc[y : y + tile, x : x + tile] += p * weight
            norm[y : y + tile, x : x + tile] += weight
    return (acc / norm)[:h, :w]


def read_pair(before: str | Path, after: str | Path, truth: str | Path | None = None):
    """Read a pair (and optional truth) that share one grid; raise :class:`InputError` naming the file otherwise."""
    import rasterio

    arrays, ref = [], None
    for path in [p for p in (before, after, truth) if p is not None]:
        try:
            with rasterio.open(path) as src:
                grid = (src.crs, src.transform, src.width, src.height)
                if ref is None:
                    ref = grid
                elif grid != ref:
                    raise InputError(f"{path} is not on the grid of {before}: warp it first (or use maskcd-map)")
                arrays.append(src.read())
        except rasterio.errors.RasterioIOError as err:
            raise InputError(f"cannot read {path}: {err}") from err
    if truth is not None:
        arrays[2] = arrays[2][0]
    return arrays


def evaluate_scene(model, before, after, truth, threshold: float = 0.5, **kwargs) -> tuple[dict, np.ndarray]:
    """Map a whole scene pair (GeoTIFF paths) and score it against a truth raster (1/255 = change, 0 = none).

    Returns the metrics dict (pixel and object level) and the ``(H, W)`` probability map.
    """
    a, b, t = read_pair(before, after, truth)
    prob = predict_scene(model, a, b, **kwargs)
    target = np.where(t == 255, 1, t) if t.max() > 1 else t
    metrics = ChangeMetrics(objects=True)
    metrics.update(torch.from_numpy((prob >= threshold).astype(np.int64)), torch.from_numpy(target.astype(np.int64)))
    return metrics.compute(), prob
