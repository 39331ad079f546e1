"""Selective scan (the S6 recurrence of Mamba/VMamba) in plain PyTorch: parallel over the sequence, no custom kernels.

For every batch element, channel ``d`` and state index ``n`` the scan computes::

    Δ_t = softplus(δ_t + bias_d)                   (optional bias and softplus; softplus is the identity above 20)
    h_t = exp(Δ_t A_{d,n}) h_{t-1} + Δ_t B_{t,n} u_t,   h_{-1} = 0
    y_t = Σ_n C_{t,n} h_{t,n} + D_d u_t

with ``A < 0``. ``B`` and ``C`` are shared by the ``KC / K`` channels of each of ``K`` groups (VMamba's four scan
directions), the layout of VMamba's ``selective_scan`` kernels: ``u``, ``δ`` ``(batch, K*C, L)``, ``A`` ``(K*C, N)``,
``B``, ``C`` ``(batch, K, N, L)``, ``D``, ``bias`` ``(K*C,)``. The output is float32 like VMamba's "oflex" kernel.

The recurrence ``h_t = a_t h_{t-1} + b_t`` with ``a_t = exp(Δ_t A)`` is first-order and linear, so it is solved in
parallel (:func:`linear_recurrence`):

* the sequence is cut into chunks of ``chunk_size`` steps; inside a chunk the log-decays are summed cumulatively,
  ``S_t = Σ_{s≤t} log a_s``, and ``h_t = exp(S_t) Σ_{s≤t} exp(-S_s) b_s`` (two cumulative sums, no loop);
* ``exp(-S_s)`` overflows once a chunk decays by more than ``e^60``; when any chunk of the tensor does, the chunks
  are instead solved by an associative doubling scan (Hillis–Steele, ``log2(chunk_size)`` steps) whose factors are all
  ``exp(≤ 0)``, so nothing can overflow;
* the state carried from one chunk to the next obeys the same recurrence over the chunk totals, which is solved by the
  same function (recursively), and is then added back with one multiply-add. Cumulative log sums never span more than
  one chunk, so long sequences lose no precision.

Backward (a :class:`torch.autograd.Function`) solves the adjoint recurrence ``λ_t = g_t + a_{t+1} λ_{t+1}`` with the
same parallel scan run backwards, so training stores only the decays and states, not every intermediate step.
Everything is ordinary tensor arithmetic: the same code runs on CPU and CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["linear_recurrence", "selective_scan"]

DEFAULT_CHUNK = 64
_SAFE_LOG_RANGE = 60.0  # exp(±60) is far inside float32's range (±88)


def _doubling_scan(log_a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of ``(log a, b)`` pairs along the last dim (Hillis–Steele); returns (cumulative log a, h)."""
    log_a, h = log_a.clone(), b.clone()
    n = h.shape[-1]
    offset = 1
    while offset < n:
        # combine(earlier=(la1, h1), later=(la2, h2)) = (la1 + la2, exp(la2) h1 + h2); right sides evaluate first
        h[..., offset:] = h[..., offset:] + torch.exp(log_a[..., offset:]) * h[..., :-offset]
        log_a[..., offset:] = log_a[..., offset:] + log_a[..., :-offset]
        offset *= 2
    return log_a, h


def _scan(log_a: torch.Tensor, b: torch.Tensor, chunk: int, nonpositive: bool = False, inplace: bool = False):
    """``h_t = exp(log_a_t) h_{t-1} + b_t`` along the last dim, ``h_{-1} = 0`` (no autograd).

    ``nonpositive`` promises ``log_a <= 0`` (then a chunk's decay range is its last cumulative sum); ``inplace`` lets
    the scan overwrite ``b`` (the inference path, where ``b`` is a temporary).
    """
    length = b.shape[-1]
    if length == 0:
        return b.clone()
    size = max(2, min(chunk, length))
    n_chunks = -(-length // size)
    pad = n_chunks * size - length
    if pad:  # identity elements: decay 1 (log 0), input 0
        log_a = F.pad(log_a, (0, pad))
        b = F.pad(b, (0, pad))
    lead = b.shape[:-1]
    log_a = log_a.reshape(*lead, n_chunks, size)
    b = b.reshape(*lead, n_chunks, size)
    cum = torch.cumsum(log_a, dim=-1)  # chunk-local cumulative log decay S_t
    if nonpositive:
        unsafe = cum[..., -1] < -_SAFE_LOG_RANGE
    else:
        lo, hi = torch.aminmax(cum, dim=-1)
        unsafe = (lo < -_SAFE_LOG_RANGE) | (hi > _SAFE_LOG_RANGE)
    fallback = None
    if bool(unsafe.any()):  # chunks decaying by more than e^60: the doubling scan, for those chunks only
        fallback = _doubling_scan(log_a[unsafe], b[unsafe])[1]
    totals = cum[..., -1].clone() if n_chunks > 1 else None
    decay = cum.exp_()
    h = b.div_(decay) if inplace else b / decay  # exp(-S_s) b_s
    h.cumsum_(-1).mul_(decay)  # exp(S_t) Σ_{s≤t} exp(-S_s) b_s
    if fallback is not None:
        h[unsafe] = fallback
    if n_chunks > 1:
        # state at the end of each chunk: the same recurrence over chunk totals, solved recursively
        ends = _scan(totals, h[..., -1].clone(), chunk, nonpositive, inplace=True)
        carry = F.pad(ends[..., :-1], (1, 0)).unsqueeze(-1)
        h.addcmul_(decay, carry)
    h = h.reshape(*lead, n_chunks * size)
    return h[..., :length] if pad else h


class _LinearRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_a: torch.Tensor, b: torch.Tensor, chunk: int, nonpositive: bool) -> torch.Tensor:
        h = _scan(log_a, b, chunk, nonpositive)
        ctx.save_for_backward(log_a, h)
        ctx.chunk, ctx.nonpositive = chunk, nonpositive
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        log_a, h = ctx.saved_tensors
        # adjoint: λ_t = g_t + a_{t+1} λ_{t+1}, i.e. the same recurrence run backwards with decays shifted by one
        next_log_a = F.pad(log_a[..., 1:], (0, 1))
        lam = _scan(next_log_a.flip(-1), grad_h.flip(-1), ctx.chunk, ctx.nonpositive).flip(-1)
        grad_log_a = None
        if ctx.needs_input_grad[0]:
            h_prev = F.pad(h[..., :-1], (1, 0))
            grad_log_a = lam * torch.exp(log_a) * h_prev  # ∂h_t/∂log a_t = a_t h_{t-1}
        return grad_log_a, lam, None, None


def linear_recurrence(
    log_a: torch.Tensor, b: torch.Tensor, chunk_size: int = DEFAULT_CHUNK, nonpositive: bool = False
) -> torch.Tensor:
    """Solve ``h_t = exp(log_a_t) h_{t-1} + b_t`` (``h_{-1} = 0``) along the last dim, in parallel, differentiably.

    Args:
        log_a: Log-decays, same shape as ``b``; ``≤ 0`` is the stable (VMamba) case, any finite values work.
        b: Inputs of the recurrence.
        chunk_size: Steps per chunk (a power of two keeps the doubling fallback exact in ``log2`` steps).
        nonpositive: The caller guarantees ``log_a <= 0`` (skips a range reduction).
    """
    if log_a.shape != b.shape:
        raise ValueError(f"log_a {tuple(log_a.shape)} and b {tuple(b.shape)} must have the same shape")
    return _LinearRecurrence.apply(log_a.contiguous(), b.contiguous(), int(chunk_size), bool(nonpositive))


def _scan_rows(u, delta, A, B, C, D, bias, delta_softplus, chunk, nonpositive):
    """The selective scan for ``u``, ``delta`` ``(batch, G, c, L)``, ``A`` ``(G, c, N)``, ``B``, ``C``
    ``(batch, G, N, L)``."""
    if bias is not None:
        delta = delta + bias.unsqueeze(-1)
    if delta_softplus:
        delta = F.softplus(delta)
    n_state = A.shape[-1]
    if n_state == 1:  # no state axis: A (G, c, 1) and B, C (batch, G, 1, L) broadcast to (batch, G, c, L)
        log_a = delta * A
        drive = delta * u
        if not torch.is_grad_enabled():  # inference: overwrite temporaries instead of allocating
            h = _scan(log_a, drive.mul_(B), chunk, nonpositive, inplace=True)
            h = h.mul_(C) if h.is_contiguous() else h * C
            return h.addcmul_(u, D[..., None]) if D is not None else h
        h = linear_recurrence(log_a, drive * B, chunk, nonpositive)
        y = h * C
    else:
        log_a = delta.unsqueeze(-2) * A[..., None]  # (batch, G, c, N, L)
        drive = (delta * u).unsqueeze(-2) * B.unsqueeze(2)
        h = linear_recurrence(log_a, drive, chunk, nonpositive)
        y = torch.einsum("bgcnl,bgnl->bgcl", h, C)
    if D is not None:
        y = torch.addcmul(y, u, D[..., None])
    return y


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
    block_elements: int = 1 << 17,
) -> torch.Tensor:
    """VMamba's selective scan (module docstring) → ``y`` float32 ``(batch, K*C, L)``.

    Args:
        u: Inputs ``(batch, K*C, L)``.
        delta: Step sizes before bias/softplus ``(batch, K*C, L)``.
        A: State matrix ``(K*C, N)`` (negative).
        B: Input projections ``(batch, K, N, L)``, shared within each of the ``K`` channel groups.
        C: Output projections ``(batch, K, N, L)``.
        D: Skip weights ``(K*C,)`` or None.
        delta_bias: Added to ``delta`` before the softplus, ``(K*C,)`` or None.
        delta_softplus: Apply ``softplus`` (threshold 20, as the CUDA kernels) to the biased ``delta``.
        chunk_size: Chunk length of the parallel scan.
        block_elements: Without autograd on CPU, channels are processed in blocks of about this many elements so
            the intermediates stay in cache (a loop over channel blocks, never over the sequence); with autograd or
            on a GPU the whole tensor is processed at once.
    """
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    if channels % groups or delta.shape != u.shape or A.shape[0] != channels or C.shape != B.shape:
        raise ValueError(
            f"selective_scan shapes: u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    per_group = channels // groups
    A = A.float().view(groups, per_group, n_state)
    nonpositive = bool(delta_softplus) and bool((A <= 0).all())
    u = u.float().view(batch, groups, per_group, length)
    delta = delta.float().view(batch, groups, per_group, length)
    B = B.float()
    C = C.float()
    D = D.float().view(groups, per_group) if D is not None else None
    bias = delta_bias.float().view(groups, per_group) if delta_bias is not None else None
    parts = (u, delta, A, B, C, D, bias)
    step = max(1, block_elements // max(1, length * n_state))
    tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in parts)
    if tracked or u.device.type != "cpu" or step >= per_group:  # GPUs gain nothing from cache-sized blocks
        y = _scan_rows(*parts, delta_softplus, chunk_size, nonpositive)
    else:
        y = torch.empty_like(u)
        for lo in range(0, per_group, step):
            sl = slice(lo, lo + step)
            y[:, :, sl] = _scan_rows(
                u[:, :, sl], delta[:, :, sl], A[:, sl], B, C,
                D[:, sl] if D is not None else None, bias[:, sl] if bias is not None else None,
                delta_softplus, chunk_size, nonpositive,
            )
    return y.reshape(batch, channels, length)
