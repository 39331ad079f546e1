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
  ``S_t = Σ_{s≤t} log a_s``, and ``h_t = exp(S_t) Σ_{s≤t} exp(-S_s) b_s`` (two cumulative sums, no loop; on CPU
  each is one matrix product with a triangular matrix of ones, :func:`_chunk_cumsum`);
* ``exp(-S_s)`` overflows once a chunk decays by more than ``e^60``; when any chunk of the tensor does, the chunks
  are instead solved by an associative doubling scan (Hillis–Steele, ``log2(chunk_size)`` steps) whose factors are all
  ``exp(≤ 0)``, so nothing can overflow;
* the state carried from one chunk to the next obeys the same recurrence over the chunk totals, which is solved by the
  same function (recursively), and is then added back with one multiply-add. Cumulative log sums never span more than
  one chunk, so long sequences lose no precision.

Without autograd and with ``d_state = 1`` (VMamba v2), :func:`_scan_d1_inference` runs the whole scan as about a dozen
in-place passes over cache-sized channel blocks, with the chunk-end states solved in float64 in one piece.

Backward (a :class:`torch.autograd.Function`) solves the adjoint recurrence ``λ_t = g_t + a_{t+1} λ_{t+1}`` with the
same parallel scan run backwards, so training stores only the decays and states, not every intermediate step.
Everything is ordinary tensor arithmetic: the same code runs on CPU and CUDA. On CUDA, inference defaults to the
fused Triton kernel of :mod:`maskcd.models.selective_scan_triton` (``backend="auto"``); training always runs here.
"""

from __future__ import annotations

import math
import threading
import warnings

import torch
import torch.nn.functional as F

__all__ = ["linear_recurrence", "selective_scan"]

DEFAULT_CHUNK = 32
BLOCK_ELEMENTS_PER_THREAD = 1 << 18
"""CPU channel blocks hold about this many elements per intra-op thread: each thread's share of the dozen passes over
a block stays in its core's cache, and each pass is long enough to split (11 scans of a VMamba-T pass, 2 cores: 2^18,
2^19, 2^20 elements per block took 67, 63, 59 ms on 2 threads; 100, 105, 110 ms on 1)."""
_SAFE_LOG_RANGE = 60.0  # exp(±60) is far inside float32's range (±88)
_SOFTPLUS_THRESHOLD = 20.0  # softplus(x) = x above this (torch's and the CUDA kernels' threshold)
_TRIANGLES: dict[tuple, torch.Tensor] = {}
_SCRATCH = threading.local()


def _upper_ones(size: int, like: torch.Tensor) -> torch.Tensor:
    """The ``size × size`` upper-triangular matrix of ones: ``x @ U`` is the cumulative sum of ``x``'s rows."""
    key = (size, like.dtype, like.device)
    if key not in _TRIANGLES:
        # a normal tensor even when first asked for under torch.inference_mode: the cache outlives that context
        with torch.inference_mode(False):
            _TRIANGLES[key] = torch.ones(size, size, dtype=like.dtype, device=like.device).triu_()
    return _TRIANGLES[key]


def _chunk_cumsum(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Cumulative sum along the last (chunk) dim of a contiguous ``x``.

    On CPU this is one matrix product with :func:`_upper_ones`: a chunk-sized GEMM runs at the speed of a couple of
    elementwise passes, several times faster than ``torch.cumsum`` along a short contiguous dim. It is used only at
    full float32 matmul precision (never TF32/bf16); GPUs keep ``torch.cumsum``.
    """
    size = x.shape[-1]
    if x.device.type != "cpu" or size > 64 or torch.get_float32_matmul_precision() != "highest":
        return torch.cumsum(x, -1, out=out) if out is not None else torch.cumsum(x, -1)
    rows = x.reshape(-1, size)
    if out is None:
        return torch.mm(rows, _upper_ones(size, x)).view(x.shape)
    torch.mm(rows, _upper_ones(size, x), out=out.view(-1, size))
    return out


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
    cum = _chunk_cumsum(log_a)  # chunk-local cumulative log decay S_t
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
    h = _chunk_cumsum(b.div_(decay) if inplace else b / decay)  # Σ_{s≤t} exp(-S_s) b_s
    h.mul_(decay)  # exp(S_t) Σ_{s≤t} exp(-S_s) b_s
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


def _chunk_end_states(log_totals: torch.Tensor, local_ends: torch.Tensor, chunk: int, nonpositive: bool):
    """States at the chunk ends, ``c_k = exp(T_k) c_{k-1} + e_k`` along the last dim (``T``: chunk log-decays).

    This level is ``chunk`` times smaller than the sequence; it is solved in one piece in float64 (exp stays exact
    up to a decay of e^600 over the whole sequence), else by the general chunked scan.
    """
    cum = torch.cumsum(log_totals.double(), -1)
    if nonpositive:
        safe = bool(cum[..., -1].amin() >= -10 * _SAFE_LOG_RANGE)
    else:
        safe = bool(cum.abs().amax() <= 10 * _SAFE_LOG_RANGE)
    if not safe:
        return _scan(log_totals, local_ends, chunk, nonpositive, inplace=True)
    decay = cum.exp_()
    return torch.cumsum(local_ends.double().div_(decay), -1).mul_(decay).float()


def _scan_d1_block(u, delta, A, B, C, D, bias, softplus, size, nonpositive, x, w, s, y):
    """One channel block of :func:`_scan_d1_inference`: ``u``, ``delta`` ``(batch, G, c, P)`` (``P`` whole chunks),
    ``A``, ``D``, ``bias`` ``(G, c, 1)``, ``B``, ``C`` ``(batch, G, 1, P)``; ``x``, ``w``, ``s`` contiguous
    ``(batch, G, c, P)`` work buffers; writes ``y`` ``(batch, G, c, L ≤ P)``."""
    if bias is not None:
        torch.add(delta, bias, out=x)
    else:
        x.copy_(delta)
    if softplus:  # log1p(exp(x)): torch's softplus up to exp's range (beyond, exp = inf shows in the check below)
        x.exp_().log1p_()
    torch.mul(x, u, out=w).mul_(B)  # drive Δ u B
    log_a = x.mul_(A)
    chunked = (*x.shape[:-1], x.shape[-1] // size, size)
    cum = _chunk_cumsum(log_a.view(chunked), out=s.view(chunked))  # chunk-local S_t
    n_chunks = chunked[-2]
    # the chunks' log-decays, gathered once into contiguous memory (a strided column costs a pass over the block)
    totals = cum[..., -1].clone() if n_chunks > 1 or nonpositive else None
    if nonpositive:
        unsafe = bool(totals.amin() < -_SAFE_LOG_RANGE)
    else:
        lo, hi = torch.aminmax(cum)
        unsafe = bool(lo < -_SAFE_LOG_RANGE) or bool(hi > _SAFE_LOG_RANGE)
    if unsafe:  # a chunk decays by more than e^60 (or δ overflowed exp): exact softplus, the general scan
        x = delta + bias if bias is not None else delta
        x = F.softplus(x) if softplus else x
        h = _scan(x * A, torch.mul(x, u).mul_(B), size, nonpositive, inplace=True)
    else:
        decay = cum.exp_()
        h = _chunk_cumsum(w.view(chunked).div_(decay), out=x.view(chunked))  # Σ_{s≤t} exp(-S_s) b_s
        if n_chunks > 1:  # add each chunk's incoming state, solved over the chunk ends (recursively)
            # exp(totals) is the chunks' last decay column, without gathering it from `decay`
            ends = _chunk_end_states(totals, h[..., -1] * totals.exp(), size, nonpositive)
            h[..., 1:, :].add_(ends[..., :-1, None])
        h = h.mul_(decay).view(x.shape)
    h = h.mul_(C)[..., : y.shape[-1]]
    if D is not None:
        torch.addcmul(h, u[..., : y.shape[-1]], D, out=y)
    else:
        y.copy_(h)


def _work_buffers(numel: int, device: torch.device) -> torch.Tensor:
    """Scratch memory for :func:`_scan_d1_inference`, kept per thread on CPU (no page faults on every call)."""
    if device.type != "cpu":
        return torch.empty(numel, device=device)
    # one buffer per mode: a tensor made under torch.inference_mode cannot be updated in place outside it
    name = "inference_buf" if torch.is_inference_mode_enabled() else "buf"
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel)
        setattr(_SCRATCH, name, buf)
    return buf[:numel]


def _scan_d1_inference(u, delta, A, B, C, D, bias, softplus, chunk, nonpositive, block_elements):
    """d_state = 1 without autograd: the scan in a dozen in-place passes over channel blocks that stay in cache.

    Shapes as in :func:`_scan_rows` (``N = 1``). Per block: Δ = softplus(δ + bias), drive Δ u B, log decay Δ A, its
    chunk-local cumulative sum S, exp(S), the second chunk-local sum, the carry between chunks, and ``y`` written
    straight into the output (no per-block copy).
    """
    batch, groups, per_group, length = u.shape
    size = max(2, min(chunk, length))
    padded = -(-length // size) * size
    if padded != length:  # identity steps at the end: Δ = 0 (δ = -inf before the softplus), u = B = C = 0
        pad = (0, padded - length)
        u, B, C = F.pad(u, pad), F.pad(B, pad), F.pad(C, pad)
        delta = F.pad(delta, pad, value=-math.inf if softplus else 0.0)
    y = torch.empty(batch, groups, per_group, length, device=u.device)
    step = per_group
    if u.device.type == "cpu":  # GPUs gain nothing from cache-sized blocks
        step = max(1, min(per_group, block_elements // (batch * groups * padded)))
    work = _work_buffers(3 * batch * groups * step * padded, u.device).view(3, -1)
    A = A.view(groups, per_group, 1)
    D = D.unsqueeze(-1) if D is not None else None
    bias = bias.unsqueeze(-1) if bias is not None else None
    for lo in range(0, per_group, step):  # a loop over channel blocks, never over the sequence
        sl = slice(lo, min(per_group, lo + step))
        n = sl.stop - lo
        x, w, s = (buf[: batch * groups * n * padded].view(batch, groups, n, padded) for buf in work)
        _scan_d1_block(
            u[:, :, sl], delta[:, :, sl], A[:, sl], B, C,
            D[:, sl] if D is not None else None, bias[:, sl] if bias is not None else None,
            softplus, size, nonpositive, x, w, s, y[:, :, sl],
        )
    return y


def check_scan_shapes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
    """Raise ValueError unless ``u``, ``delta`` ``(batch, K*C, L)``, ``A`` ``(K*C, N)``, ``B``, ``C``
    ``(batch, K, N, L)`` fit together (both backends)."""
    if (
        u.dim() != 3 or delta.shape != u.shape or A.dim() != 2 or A.shape[0] != u.shape[1] or B.dim() != 4
        or C.shape != B.shape or u.shape[1] % B.shape[1] or B.shape[0] != u.shape[0] or B.shape[2] != A.shape[1]
        or B.shape[3] != u.shape[2]
    ):
        raise ValueError(
            f"selective_scan shapes: u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}"
        )


_TRITON = {"usable": True, "proven": False}  # "auto" stops trying Triton after a first failure; after a success
# errors are real errors and propagate


def _triton_scan(u, delta, A, B, C, D, bias, softplus, strict: bool) -> torch.Tensor | None:
    """The fused Triton scan; with ``strict=False`` (``"auto"``) a failure before its first success (no Triton, a
    compiler that rejects the kernel) warns once and returns None so the PyTorch scan runs instead."""
    try:
        from maskcd.models.selective_scan_triton import selective_scan_triton

        y = selective_scan_triton(u, delta, A, B, C, D, bias, softplus)
    except Exception as exc:  # noqa: BLE001 - the first use of an optional fast path: any failure falls back
        if strict or _TRITON["proven"] or isinstance(exc, torch.OutOfMemoryError):
            raise
        _TRITON["usable"] = False
        warnings.warn(
            f"the Triton selective scan failed ({type(exc).__name__}: {exc}); using the PyTorch scan from now on "
            f"(pass backend='triton' to see the error)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    _TRITON["proven"] = True
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
    block_elements: int | None = None,
    backend: str = "auto",
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
        block_elements: Without autograd on CPU, channels are processed in blocks of about this many elements
            (``d_state = 1``: per block, else per group) so the intermediates stay in cache (a loop over channel
            blocks, never over the sequence); with autograd or on a GPU the whole tensor is processed at once.
            Default: :data:`BLOCK_ELEMENTS_PER_THREAD` per intra-op thread.
        backend: ``"torch"`` (this module), ``"triton"`` (the fused inference kernel of
            :mod:`maskcd.models.selective_scan_triton`; no autograd) or ``"auto"``: Triton for CUDA tensors without
            autograd, where it imports and compiles (else the PyTorch scan, with one warning), PyTorch otherwise.
    """
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"selective_scan backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    check_scan_shapes(u, delta, A, B, C)
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias)
    )
    if backend == "triton" or (backend == "auto" and u.device.type == "cuda" and not tracked and _TRITON["usable"]):
        if tracked:
            raise ValueError("the triton selective scan has no backward: use backend='torch' (or 'auto') to train")
        y = _triton_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, strict=backend == "triton")
        if y is not None:
            return y
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    if block_elements is None:
        block_elements = BLOCK_ELEMENTS_PER_THREAD * max(1, min(torch.get_num_threads(), 16))
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
    if not tracked and n_state == 1:
        with torch.no_grad():
            y = _scan_d1_inference(*parts, delta_softplus, chunk_size, nonpositive, block_elements)
    elif tracked or u.device.type != "cpu" or step >= per_group:  # GPUs gain nothing from cache-sized blocks
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
