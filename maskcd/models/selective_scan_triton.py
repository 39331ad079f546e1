"""The selective scan as one fused Triton kernel, for inference on CUDA.

:func:`maskcd.models.selective_scan.selective_scan` is ordinary PyTorch: on a GPU its chunked scan is about a dozen
elementwise kernels and two cumulative sums over the whole tensor, plus a small float64 solve. This kernel reads
``δ``, ``u``, ``B``, ``C`` once and writes ``y`` once. One program owns one (batch, channel) row and walks it in
tiles of ``BLOCK_L`` steps; per tile it forms the decays ``exp(Δ_t A_n)`` and drives ``Δ_t B_{t,n} u_t`` for every
state ``n`` and solves the recurrence with ``tl.associative_scan`` on the pairs ``(a, b)`` under
``(a₁, b₁) ∘ (a₂, b₂) = (a₁ a₂, a₂ b₁ + b₂)``. The state at the end of a tile enters the next one through the
cumulative decays. The scan multiplies only the recurrence's own factors (no ``exp(-S)`` as in the PyTorch scan's
chunks), so nothing can overflow that the recurrence itself does not.

Inference only: training keeps the PyTorch scan and its autograd backward. Triton ships with torch and nothing needs
nvcc. Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is imported) runs the same kernel on CPU
tensors, which is how the tests check it on machines without a GPU. Importing this module imports Triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from maskcd.models.selective_scan import check_scan_shapes

__all__ = ["selective_scan_triton"]

TILE_ELEMENTS = 4096
"""States × steps per tile: ``BLOCK_L = TILE_ELEMENTS / N_P2`` steps (at most the sequence length)."""


@triton.jit
def _combine(a_earlier, b_earlier, a_later, b_later):
    return a_earlier * a_later, b_earlier * a_later + b_later


@triton.jit
def _scan_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr,
    channels, per_group, groups, length, n_state,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    N_P2: tl.constexpr, BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0)  # batch index × channels + channel
    b = row // channels
    ch = row % channels
    g = ch // per_group
    n = tl.arange(0, N_P2)
    n_ok = n < n_state
    # padded states: A = 0 and B = C = 0, so they stay 0 and add nothing
    A = tl.load(A_ptr + ch * n_state + n, mask=n_ok, other=0.0).to(tl.float32)
    row_off = row.to(tl.int64) * length
    bc_off = (b * groups + g).to(tl.int64) * n_state * length
    steps = tl.arange(0, BLOCK_L)
    h = tl.zeros((N_P2,), dtype=tl.float32)
    for start in range(0, length, BLOCK_L):
        t = start + steps
        t_ok = t < length
        u = tl.load(u_ptr + row_off + t, mask=t_ok, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row_off + t, mask=t_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + tl.load(bias_ptr + ch).to(tl.float32)
        if SOFTPLUS:
            # log1p(exp(x)) to a few ulps without a log1p: log(w) · z / (w - 1) with w = 1 + z (Goldberg's trick);
            # where 1 + z rounds to 1, log1p(z) = z. Above the threshold it is x itself.
            z = tl.exp(tl.minimum(dt, 20.0))
            w = 1.0 + z
            tiny = w == 1.0
            soft = tl.where(tiny, z, tl.log(w) * (z / tl.where(tiny, 1.0, w - 1.0)))
            dt = tl.where(dt <= 20.0, soft, dt)
        dt = tl.where(t_ok, dt, 0.0)  # steps past the end: decay 1, drive 0
        tile = n[:, None] * length + t[None, :]
        tile_ok = n_ok[:, None] & t_ok[None, :]
        Bt = tl.load(B_ptr + bc_off + tile, mask=tile_ok, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_off + tile, mask=tile_ok, other=0.0).to(tl.float32)
        decay = tl.exp(dt[None, :] * A[:, None])
        drive = (dt * u)[None, :] * Bt
        cum_decay, hs = tl.associative_scan((decay, drive), 1, _combine)
        hs = hs + cum_decay * h[:, None]  # the state carried in from the previous tile
        y = tl.sum(Ct * hs, 0)
        if HAS_D:
            y = y + tl.load(D_ptr + ch).to(tl.float32) * u
        tl.store(y_ptr + row_off + t, y, mask=t_ok)
        h = tl.sum(tl.where(steps[None, :] == BLOCK_L - 1, hs, 0.0), 1)  # the last step (padded steps keep it)


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    block_length: int | None = None,
) -> torch.Tensor:
    """VMamba's selective scan in one Triton kernel, no autograd → ``y`` float32 ``(batch, K*C, L)``.

    Shapes and meaning as :func:`maskcd.models.selective_scan.selective_scan`. ``block_length`` (a power of two)
    overrides the steps per tile (default: :data:`TILE_ELEMENTS` over the padded state count, at most ``L``).
    """
    check_scan_shapes(u, delta, A, B, C)
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    n_p2 = max(2, triton.next_power_of_2(n_state))  # two rows at least: the well-trodden tile shape
    if block_length is None:
        block_length = max(16, min(triton.next_power_of_2(max(1, length)), TILE_ELEMENTS // n_p2))
    elif block_length < 1 or block_length & (block_length - 1):
        raise ValueError(f"block_length must be a power of two, got {block_length}")
    y = torch.empty(batch, channels, length, device=u.device, dtype=torch.float32)
    if y.numel() == 0:
        return y
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    D, bias = (t.contiguous() if t is not None else None for t in (D, delta_bias))
    _scan_kernel[(batch * channels,)](
        u, delta, A, B, C, D if D is not None else u, bias if bias is not None else u, y,
        channels, channels // groups, groups, length, n_state,
        HAS_D=D is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(delta_softplus),
        N_P2=n_p2, BLOCK_L=block_length,
    )
    return y
