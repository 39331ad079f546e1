"""The oracles built from the original code (``../shared/tools``), for the model tests (imported by name)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SHARED_TOOLS = Path(os.environ.get("MASKCD_SHARED_TOOLS", Path(__file__).resolve().parents[3] / "shared" / "tools"))


def shared_tool(name: str):
    """Import ``../shared/tools/<name>.py`` once, or skip the test with the reason."""
    path = SHARED_TOOLS / f"{name}.py"
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared is not beside the checkout)")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look the module up while it executes
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]
