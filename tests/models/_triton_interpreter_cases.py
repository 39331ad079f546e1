"""The fused Triton selective scan on CPU tensors under Triton's interpreter.

Run by ``test_selective_scan_triton.py`` as ``TRITON_INTERPRET=1 python _triton_interpreter_cases.py``: the variable
must be set before Triton decorates the kernel, i.e. before ``maskcd.models.selective_scan_triton`` is imported, so
these checks run in a process of their own. Each case compares the kernel with the naive float64 recurrence of
``test_selective_scan.py``; the script prints one line per case and exits non-zero on the first mismatch.
"""

from __future__ import annotations

import os
import sys

import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("run with TRITON_INTERPRET=1 (Triton's interpreter runs the kernel on CPU tensors)")

from test_selective_scan import assert_scaled_close, naive_scan, scan_inputs  # noqa: E402

from maskcd.models.selective_scan import selective_scan  # noqa: E402
from maskcd.models.selective_scan_triton import selective_scan_triton  # noqa: E402


def case(name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == torch.float32 and ours.shape == ref.shape, (name, ours.dtype, tuple(ours.shape))
    assert torch.isfinite(ours).all(), name
    assert_scaled_close(ours, ref)
    print(f"ok {name}: max |diff| {(ours.double() - ref.double()).abs().max().item():.2e}")


def main() -> None:
    for batch, groups, per_group, n_state, length, block in [
        (2, 4, 3, 1, 9, 16),  # shorter than one tile
        (1, 4, 2, 1, 300, 32),  # ten tiles, the last one partial: the state crosses tiles
        (2, 4, 2, 4, 77, 16),  # general d_state
        (1, 2, 2, 3, 40, None),  # odd d_state (padded to 4 states), default tile
    ]:
        t = scan_inputs(0, batch, groups, per_group, n_state, length)
        case(f"shape {(batch, groups, per_group, n_state, length)} tile {block}",
             selective_scan_triton(**t, block_length=block), naive_scan(**t))

    t = scan_inputs(8, 2, 4, 3, 1, 70)
    t["delta"][:, 2, 5:9] = 100.0  # exp(δ) overflows float32: softplus(δ) = δ
    t["delta"][:, 7, 40] = 30.0  # above the threshold
    t["delta"][:, 1, 10:20] = -40.0  # 1 + exp(δ) rounds to 1: log1p(z) = z
    case("huge and tiny steps", selective_scan_triton(**t, block_length=16), naive_scan(**t))

    t = scan_inputs(1, 1, 4, 2, 1, 50)
    kw = dict(u=t["u"], delta=t["delta"] * 0.05, A=t["A"], B=t["B"], C=t["C"], delta_softplus=False)
    case("no bias, D or softplus; steps of both signs", selective_scan_triton(**kw, block_length=16), naive_scan(**kw))

    t = scan_inputs(3, 2, 2, 2, 2, 33)
    low = {k: (v.to(torch.bfloat16) if k in ("u", "delta", "B", "C") else v) for k, v in t.items()}
    case("bfloat16 inputs, float32 output", selective_scan_triton(**low, block_length=16), naive_scan(**low))

    t = scan_inputs(4, 2, 4, 2, 1, 96)
    with torch.no_grad():
        case("selective_scan(backend='triton')", selective_scan(**t, backend="triton"),
             selective_scan(**t, backend="torch").double())
    tracked = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    try:
        selective_scan(**tracked, backend="triton")
    except ValueError as exc:
        assert "no backward" in str(exc), exc
        print("ok backend='triton' under autograd refuses: no backward")
    else:
        raise AssertionError("the triton backend accepted tensors that need gradients")

    empty = scan_inputs(5, 1, 2, 2, 1, 0)
    assert selective_scan_triton(**empty).shape == (1, 4, 0)
    try:
        selective_scan_triton(**t, block_length=24)
    except ValueError as exc:
        assert "power of two" in str(exc), exc
        print("ok empty sequence; block_length 24 refused")
    else:
        raise AssertionError("block_length 24 accepted")
    print("all cases passed")


if __name__ == "__main__":
    main()
