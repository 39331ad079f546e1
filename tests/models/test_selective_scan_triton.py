"""The fused Triton selective scan (inference on CUDA) and how ``selective_scan`` chooses it.

The kernel itself runs here under Triton's interpreter on CPU tensors (``_triton_interpreter_cases.py``, in a process
of its own because ``TRITON_INTERPRET`` is read when the kernel is decorated). On a lent GPU the compiled kernel is
compared in ``tests/gpu``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_selective_scan import scan_inputs

import maskcd.models.selective_scan as scan_module
import maskcd.models.selective_scan_triton as triton_module
from maskcd.models.selective_scan import selective_scan

CASES = Path(__file__).with_name("_triton_interpreter_cases.py")


def test_triton_kernel_matches_naive_recurrence_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="error::RuntimeWarning")
    proc = subprocess.run(
        [sys.executable, str(CASES)], cwd=CASES.parent, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all cases passed" in proc.stdout
    assert proc.stdout.count("\nok ") + proc.stdout.startswith("ok ") == 10, proc.stdout


def test_unknown_backend_is_refused():
    t = scan_inputs(0, 1, 2, 2, 1, 8)
    with pytest.raises(ValueError, match="'auto', 'torch' or 'triton'"):
        selective_scan(**t, backend="cuda")


def test_auto_falls_back_once_with_a_warning_until_triton_has_worked(monkeypatch):
    """``auto`` tries Triton on CUDA; a failure before any success (no compiler for the kernel, say) warns once and
    leaves the PyTorch scan in charge. After a success, or with ``backend='triton'``, errors propagate."""
    t = scan_inputs(1, 1, 2, 2, 1, 8)
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"], True)

    def broken(*_args, **_kwargs):
        raise RuntimeError("ptxas rejected the kernel")

    monkeypatch.setattr(triton_module, "selective_scan_triton", broken)
    monkeypatch.setitem(scan_module._TRITON, "usable", True)
    monkeypatch.setitem(scan_module._TRITON, "proven", False)
    with pytest.raises(RuntimeError, match="ptxas"):
        scan_module._triton_scan(*args, strict=True)
    assert scan_module._TRITON["usable"]
    with pytest.warns(RuntimeWarning, match="Triton selective scan failed .*ptxas.*PyTorch scan"):
        assert scan_module._triton_scan(*args, strict=False) is None
    assert not scan_module._TRITON["usable"]

    monkeypatch.setitem(scan_module._TRITON, "usable", True)
    monkeypatch.setitem(scan_module._TRITON, "proven", True)
    with pytest.raises(RuntimeError, match="ptxas"):
        scan_module._triton_scan(*args, strict=False)

    calls = []
    monkeypatch.setattr(triton_module, "selective_scan_triton", lambda *a: calls.append(a) or torch.zeros(1))
    monkeypatch.setitem(scan_module._TRITON, "proven", False)
    assert scan_module._triton_scan(*args, strict=False).shape == (1,)
    assert len(calls) == 1 and scan_module._TRITON["proven"]


def test_auto_keeps_the_pytorch_scan_on_cpu(monkeypatch):
    """CPU tensors never reach the Triton kernel under ``auto`` (it needs a GPU or the interpreter)."""
    monkeypatch.setattr(triton_module, "selective_scan_triton", lambda *a: pytest.fail("Triton called on CPU"))
    t = scan_inputs(2, 1, 2, 2, 1, 40)
    with torch.no_grad():
        torch.testing.assert_close(selective_scan(**t), selective_scan(**t, backend="torch"), rtol=0, atol=0)
