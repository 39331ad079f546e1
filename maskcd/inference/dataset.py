"""A map-style dataset of windows of an aligned pair, read in DataLoader workers (pipeline stage 3 input)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from maskcd.inference.tiling import TileWindow
from maskcd.io.align import AlignedPair, PairReader


class WindowDataset(Dataset):
    """Item ``i`` = window ``i``: normalised before/after tensors ``(C, T, T)`` and the window's validity.

    Files are opened lazily in the process that reads (each worker its own reader). Windows smaller than the model
    tile (scenes smaller than a tile) are reflect-padded to ``tile`` and cropped back after the forward pass.
    """

    def __init__(self, pair: AlignedPair, windows: list[TileWindow], tile: int):
        self.pair = pair
        self.windows = list(windows)
        self.tile = int(tile)
        self._reader: PairReader | None = None

    def __len__(self) -> int:
        return len(self.windows)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def __getitem__(self, i: int) -> dict:
        if self._reader is None:
            self._reader = self.pair.reader()
        w = self.windows[i]
        a, b, valid = self._reader.read(w.row, w.col, w.height, w.width)
        ph, pw = self.tile - w.height, self.tile - w.width
        if ph > 0 or pw > 0:
            pad = ((0, 0), (0, max(ph, 0)), (0, max(pw, 0)))
            a, b = np.pad(a, pad, mode="reflect"), np.pad(b, pad, mode="reflect")
        spec = self.pair.spec
        return {
            "index": i,
            "image_a": spec.normalize(torch.from_numpy(a)),
            "image_b": spec.normalize(torch.from_numpy(b)),
            "valid": valid,
        }


def collate_windows(items: list[dict]) -> dict:
    """Stack images; keep indices and validity on the host as plain lists (never moved to the device)."""
    return {
        "image_a": torch.stack([it["image_a"] for it in items]),
        "image_b": torch.stack([it["image_b"] for it in items]),
        "index": [it["index"] for it in items],
        "valid": [it["valid"] for it in items],
    }
