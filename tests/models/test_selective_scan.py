"""Our parallel selective scan against a naive float64 recurrence, VMamba's reference scan and autograd."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import warnings
from pathlib import Path

import pytest
import torch

from maskcd.models.selective_scan import linear_recurrence, selective_scan
REPO = Path(__file__).resolve().parents[2]

def naive_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """The recurrence step by step in float64 (differentiable; our own reference)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    if delta_bias is not None:  # Δ = softplus(δ + bias), identity above 20 like the kernels
        delta = delta + delta_bias.double().unsqueeze(-1)
    if delta_softplus:
        delta = torch.where(delta > 20, delta, torch.log1p(torch.exp(delta)))
    Bx = B.repeat_interleave(channels // groups, dim=1)  # (batch, KC, N, L)
    Cx = C.repeat_interleave(channels // groups, dim=1)
    h = u.new_zeros(batch, channels, n_state)
    ys = []
    for t in range(length):
        h = torch.exp(delta[..., t, None] * A) * h + (delta[..., t] * u[..., t])[..., None] * Bx[..., t]
        ys.append((h * Cx[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.double()[:, None]
    return y


def scan_inputs(seed, batch, groups, per_group, n_state, length, delta_scale=1.0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    channels = groups * per_group
    t = dict(
        u=torch.randn(batch, channels, length, generator=g),
        delta=torch.randn(batch, channels, length, generator=g) * delta_scale - 1.0,
        A=-torch.exp(torch.randn(channels, n_state, generator=g)),
        B=torch.randn(batch, groups, n_state, length, generator=g),
        C=torch.randn(batch, groups, n_state, length, generator=g),
        D=torch.rand(channels, generator=g) + 0.5,
        delta_bias=torch.randn(channels, generator=g) * 0.5,
    )
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


def assert_scaled_close(ours, ref, rtol=1e-5):
    ref = ref.double()
    err = (ours.double() - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= rtol * scale, f"max |diff| {err:.3g} > {rtol:g} x scale {scale:.3g}"


@pytest.mark.parametrize(
    "batch,groups,per_group,n_state,length,chunk",
    [
        (2, 4, 3, 1, 9, 64),  # shorter than one chunk
        (1, 4, 2, 1, 1000, 16),  # 63 chunks (two carry levels), padded last chunk
        (2, 4, 2, 4, 77, 8),  # general d_state
        (1, 2, 2, 1, 300, 64),  # chunk does not divide L
    ],
)
def test_scan_matches_naive_float64(batch, groups, per_group, n_state, length, chunk):
    t = scan_inputs(0, batch, groups, per_group, n_state, length)
    ours = selective_scan(**t, chunk_size=chunk)
    assert ours.dtype == torch.float32 and ours.shape == (batch, groups * per_group, length)
    assert_scaled_close(ours, naive_scan(**t))
    with torch.inference_mode():  # the blocked, cache-sized no-autograd path gives the same result
        assert_scaled_close(selective_scan(**t, chunk_size=chunk, block_elements=length), naive_scan(**t))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_mismatched_shapes_are_refused_naming_them(backend):
    t = scan_inputs(0, 1, 4, 2, 1, 16)
    bad = [
        dict(delta=t["delta"][..., :8]),  # δ shorter than u
        dict(A=t["A"][:6]),  # A for fewer channels
        dict(B=t["B"][..., :8], C=t["C"][..., :8]),  # B, C shorter than the sequence
        dict(C=t["C"][:, :2]),  # C for fewer groups than B
        dict(B=t["B"][:, :3], C=t["C"][:, :3]),  # 8 channels do not split into 3 groups
        dict(A=t["A"].expand(-1, 2)),  # two states in A, one in B
    ]
    for change in bad:
        with pytest.raises(ValueError, match=r"selective_scan shapes: u \(1, 8, 16\)"):
            selective_scan(**{**t, **change}, backend=backend)


def test_scan_without_bias_d_and_softplus():
    t = scan_inputs(1, 1, 4, 2, 1, 50)
    t["delta"] = t["delta"].abs() * 0.3
    kw = dict(u=t["u"], delta=t["delta"], A=t["A"], B=t["B"], C=t["C"], delta_softplus=False)
    assert_scaled_close(selective_scan(**kw, chunk_size=8), naive_scan(**kw))


def test_scan_strong_decay_and_long_sequence_stay_finite_and_exact():
    """Chunks decaying by far more than float32's range use the doubling scan; long sequences keep precision."""
    t = scan_inputs(2, 1, 4, 2, 1, 4096, delta_scale=3.0)
    t["delta"][:, :4] += 40.0  # Δ·|A| up to ~100 per step: exp(-S) in one chunk would overflow
    ours = selective_scan(**t, chunk_size=64)
    assert torch.isfinite(ours).all()
    assert_scaled_close(ours, naive_scan(**t))
    # a slowly decaying channel over 4096 steps (cumulative log decay ~ -400, still exact)
    la = torch.full((1, 4096), -0.1)
    b = torch.randn(1, 4096, generator=torch.Generator().manual_seed(3))
    h = linear_recurrence(la, b, chunk_size=32)
    ref = torch.zeros(4096, dtype=torch.float64)
    state = 0.0
    for i in range(4096):
        state = math.exp(-0.1) * state + float(b[0, i])
        ref[i] = state
    assert_scaled_close(h[0], ref)


def test_linear_recurrence_general_log_decays():
    """Growing (log a > 0) and decaying steps, chunked vs step by step."""
    g = torch.Generator().manual_seed(4)
    la = torch.randn(3, 200, generator=g) * 0.05
    b = torch.randn(3, 200, generator=g)
    h = linear_recurrence(la, b, chunk_size=16)
    state = torch.zeros(3, dtype=torch.float64)
    ref = []
    for i in range(200):
        state = torch.exp(la[:, i].double()) * state + b[:, i].double()
        ref.append(state)
    assert_scaled_close(h, torch.stack(ref, -1))
    with pytest.raises(ValueError, match="same shape"):
        linear_recurrence(la, b[:, :10])


@pytest.mark.parametrize("n_state,length,chunk", [(1, 150, 16), (3, 40, 8)])
def test_scan_gradients_match_autograd_through_naive_recurrence(n_state, length, chunk):
    t = scan_inputs(5, 2, 4, 2, n_state, length, requires_grad=True)
    ours = selective_scan(**t, chunk_size=chunk)
    ref = naive_scan(**t)
    weight = torch.randn(ours.shape, generator=torch.Generator().manual_seed(6))
    grads = torch.autograd.grad((ours * weight).sum(), list(t.values()))
    ref_grads = torch.autograd.grad((ref * weight.double()).sum(), list(t.values()))
    for name, g, r in zip(t, grads, ref_grads):
        assert g is not None, name
        err = (g.double() - r).abs().max().item()
        assert err <= 1e-4 * max(1.0, r.abs().max().item()), f"grad {name}: max |diff| {err:.3g}"


def reference_scan():
    """VMamba upstream's ``selective_scan_torch`` (the oracle's substitute for the CUDA kernel), or skip."""
    path = REPO.parent / "shared" / "reference_code" / "minenetcd" / "VMamba" / "classification" / "models"
    path = path / "csms6s.py"
    if not path.is_file():
        pytest.skip(f"VMamba reference code {path} is absent (../shared is not beside the checkout)")
    spec = importlib.util.spec_from_file_location("_vmamba_upstream_csms6s", path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        spec.loader.exec_module(module)
    return module.selective_scan_torch


def test_scan_matches_vmamba_reference_scan():
    """The oracle's reference scan, called as VMamba's forward_corev2 calls it."""
    reference = reference_scan()
    for n_state, length in ((1, 257), (4, 33)):
        t = scan_inputs(7, 2, 4, 3, n_state, length)
        ref = reference(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"], True)
        assert_scaled_close(selective_scan(**t, chunk_size=32), ref)


def test_inference_path_handles_huge_steps_padding_and_growth():
    """Without autograd (the fast d_state = 1 path): δ beyond exp's range, a length no chunk divides, growing steps."""
    t = scan_inputs(8, 2, 4, 3, 1, 70)
    t["delta"][:, 2, 5:9] = 100.0  # softplus(δ) = δ where exp(δ) overflows float32
    t["delta"][:, 7, 40] = 30.0
    with torch.no_grad():
        assert_scaled_close(selective_scan(**t, chunk_size=16, block_elements=64), naive_scan(**t))
        kw = {k: v for k, v in t.items() if k != "delta_bias"}
        kw["delta"] = kw["delta"] * 0.05  # no softplus: Δ of both signs, so some steps grow
        assert_scaled_close(
            selective_scan(**kw, delta_softplus=False, chunk_size=16), naive_scan(**kw, delta_softplus=False)
        )


def test_caches_made_under_inference_mode_serve_later_calls_outside_it():
    """The chunk-sum matrices and scratch buffers are cached across calls: ones first made under
    ``torch.inference_mode`` (``maskcd-map``) must still work under ``no_grad`` and autograd (training, tests)."""
    t = scan_inputs(5, 1, 2, 2, 1, 96)
    expected = naive_scan(**t)
    with torch.inference_mode():
        assert_scaled_close(selective_scan(**t, chunk_size=16), expected)
    with torch.no_grad():
        assert_scaled_close(selective_scan(**t, chunk_size=16), expected)
    u = t.pop("u").clone().requires_grad_(True)
    out = selective_scan(u=u, **t, chunk_size=16)
    out.sum().backward()
    assert_scaled_close(out.detach(), expected)
    assert u.grad is not None and torch.isfinite(u.grad).all()
