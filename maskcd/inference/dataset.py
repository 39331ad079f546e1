"""A map-style dataset of windows of an aligned pair, read in DataLoader workers (pipeline stage 3 input)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from maskcd.inference.tiling import TileWindow
from maskcd.io.align import AlignedPair, PairReader


MIN_VALID_FRACTION = 0.05
"""Windows with less valid data (both dates valid, inside the AOI) than this are skipped, not run through the model."""


class WindowDataset(Dataset):
    """Item ``i`` = window ``i`` as ``(i, keep, image_a, image_b, valid)``: raw float32 before/after tensors
    ``(C, T, T)`` (invalid pixels zero-filled; normalise with the model's :class:`~maskcd.models.InferenceSpec` after
    moving them to the device) and the ``(h, w)`` validity.

    Files are opened lazily in the process that reads (each worker its own reader). Windows smaller than the model
    tile (scenes smaller than a tile) are reflect-padded to ``tile`` and cropped back after the forward pass.
    ``keep`` is False when less than ``min_valid`` of the window is valid (and inside the AOI): such windows are
    skipped (no images are returned for them).
    """

    def __init__(self, pair: AlignedPair, windows: list[TileWindow], tile: int, min_valid: float = MIN_VALID_FRACTION):
        self.pair = pair
        self.windows = list(windows)
        self.tile = int(tile)
        self.min_valid = float(min_valid)
        self._reader: PairReader | None = None
        self._aoi = None

    def __len__(self) -> int:
        return len(self.windows)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def __getitem__(self, i: int) -> dict:
        if self._reader is None:
            self._reader = self.pair.reader()
            self._aoi = self.pair.aoi_geometry()
        w = self.windows[i]
        a, b, valid = self._reader.read(w.row, w.col, w.height, w.width)
        counted = valid
        if self._aoi is not None:
            from rasterio.features import geometry_mask

            counted = valid & ~geometry_mask([self._aoi], out_shape=valid.shape,
                                            transform=self.pair.grid.window_transform(w.row, w.col))
        if counted.mean() < self.min_valid:
            return i, False, None, None, valid
        ph, pw = self.tile - w.height, self.tile - w.width
        if ph > 0 or pw > 0:
            pad = ((0, 0), (0, max(ph, 0)), (0, max(pw, 0)))
            a, b = np.pad(a, pad, mode="reflect"), np.pad(b, pad, mode="reflect")
        # raw values: normalisation runs after device placement (on the GPU when there is one)
        return i, True, torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b)), valid


def collate_list(items: list[tuple]) -> list[tuple]:
    """DataLoader ``collate_fn``: keep the items as they are; :func:`collate_windows` stacks them in the main process.

    Stacking inside the workers (``torch.stack`` there) made each worker's private memory grow by about one window per
    item (torch 2.14, fork workers; measured in ``benchmarks/map_pipeline.py``), which broke flat memory on large
    scenes.
    """
    return items


def collate_windows(items: list[tuple]) -> dict:
    """Stack the kept windows' images; indices, validity and skipped indices stay on the host as plain lists."""
    kept = [it for it in items if it[1]]
    return {
        "image_a": torch.stack([it[2] for it in kept]) if kept else None,
        "image_b": torch.stack([it[3] for it in kept]) if kept else None,
        "index": [it[0] for it in kept],
        "valid": [it[4] for it in kept],
        "skipped": [it[0] for it in items if not it[1]],
    }
