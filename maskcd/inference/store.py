"""On-disk store of per-window probabilities, so predictions never accumulate in RAM.

One flat file of ``n_windows × height × width`` float16 slots (sparse until written); slot ``i`` holds window ``i``'s
change probability with NaN where the input was invalid. Slots are written and read with ``os.pwrite``/``os.pread``
(no memory mapping, so they do not count towards the process's resident memory), from any process: each DataLoader
rank writes its own windows, the stitcher reads them back chunk by chunk.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DTYPE = np.float16


class TileStore:
    """Fixed-size float16 slots in one file.

    Args:
        path: The store file.
        n: Number of slots.
        height: Slot rows.
        width: Slot columns.
    """

    def __init__(self, path: str | os.PathLike, n: int, height: int, width: int):
        self.path = Path(path)
        self.n, self.height, self.width = int(n), int(height), int(width)
        self.slot_bytes = self.height * self.width * np.dtype(DTYPE).itemsize
        self._fd: int | None = None
        self._pid: int | None = None

    def create(self) -> TileStore:
        """Create (or extend) the file to its full size; idempotent, so several ranks may call it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < self.n * self.slot_bytes:
                os.ftruncate(fd, self.n * self.slot_bytes)
        finally:
            os.close(fd)
        return self

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR)
            self._pid = os.getpid()
        return self._fd

    def write(self, i: int, prob: np.ndarray) -> None:
        if prob.shape != (self.height, self.width):
            raise ValueError(f"slot shape is {(self.height, self.width)}, got {prob.shape}")
        data = np.ascontiguousarray(prob, dtype=DTYPE).tobytes()
        os.pwrite(self._handle(), data, int(i) * self.slot_bytes)

    def read(self, i: int) -> np.ndarray:
        buf = os.pread(self._handle(), self.slot_bytes, int(i) * self.slot_bytes)
        return np.frombuffer(buf, dtype=DTYPE).reshape(self.height, self.width)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None
        return state
