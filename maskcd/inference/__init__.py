"""Large-scene inference: windows → batched model → blended probability and mask COGs (``maskcd-map``).

The names below load on first use (PEP 562), so that light submodules such as :mod:`maskcd.inference.cleanup`
(which the vectorisation's worker processes use) can be imported without torch and the model code.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "MapOptions": "maskcd.inference.options",
    "MapResult": "maskcd.inference.options",
    "RasterRun": "maskcd.inference.pipeline",
    "map_rasters": "maskcd.inference.pipeline",
    "map_scene": "maskcd.inference.pipeline",
    "output_paths": "maskcd.inference.pipeline",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
