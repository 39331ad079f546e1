"""CUDA paths that CPU CI cannot run: bf16 autocast against fp32, no host sync in the inference loop, a GPU Dask worker,
the fused Triton selective scan.

Every test here is marked ``gpu`` and skipped without a CUDA device; ``benchmarks/gpu_check.sh`` runs them on a lent
GPU (``pytest -m gpu tests/gpu``).
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from maskcd.data.synthetic import make_scene_pair
from maskcd.inference import MapOptions, map_rasters
from maskcd.models import load_model
from maskcd.weights import DEMO_CHECKPOINT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SIZE = 512


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    """A seeded synthetic mining-site pair the demo checkpoint maps well (F1 about 0.95 on CPU)."""
    return make_scene_pair(tmp_path_factory.mktemp("gpu_pair"), seed=5, size=SIZE)


def _mask(pair, tmp_path, name: str, device: str, model) -> np.ndarray:
    opts = MapOptions(model=str(DEMO_CHECKPOINT), device=device, workers=0, batch_size=8)
    map_rasters(pair["before"], pair["after"], tmp_path / f"{name}_p.tif", tmp_path / f"{name}_m.tif", opts,
                model=model, progress=False)
    with rasterio.open(tmp_path / f"{name}_m.tif") as src:
        return src.read(1)


def test_bf16_change_map_matches_fp32(demo_pair, tmp_path):
    """maskcd-map on CUDA runs bf16 autocast; its change map agrees with the fp32 CPU map on >= 99.5 % of pixels."""
    model = load_model(DEMO_CHECKPOINT).eval()
    fp32 = _mask(demo_pair, tmp_path, "cpu", "cpu", model)
    bf16 = _mask(demo_pair, tmp_path, "cuda", "cuda", load_model(DEMO_CHECKPOINT).eval())
    assert fp32.shape == bf16.shape == (SIZE, SIZE)
    assert 0.01 < (fp32 == 1).mean() < 0.5, "the pair should hold change for the comparison to mean something"
    agree = (fp32 == bf16).mean()
    assert agree >= 0.995, f"bf16 vs fp32 change maps agree on {agree:.4%} of pixels"


def test_inference_loop_does_not_synchronise_with_the_host(demo_pair, tmp_path, monkeypatch):
    """The window loop (:func:`predict_to_store`) queues work without host syncs: CUDA's sync debug mode raises on any
    synchronising call (``.item()``, blocking copies, ``nonzero``...) inside it."""
    from maskcd.inference import pipeline

    real = pipeline.predict_to_store
    calls = []

    def strict(*args, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            calls.append(1)

    model = load_model(DEMO_CHECKPOINT).eval().cuda()
    with torch.inference_mode():  # warm-up outside the checked loop (kernel selection, allocator)
        x = torch.zeros(2, 3, 128, 128, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x, x)
    torch.cuda.synchronize()
    monkeypatch.setattr(pipeline, "predict_to_store", strict)
    mask = _mask(demo_pair, tmp_path, "strict", "cuda", model)
    assert calls == [1] and (mask == 1).any()


def test_batch_site_runs_on_a_gpu_worker(demo_pair, tmp_path):
    """maskcd-batch with a CUDA device: the local cluster's worker advertises GPU=1 and the site maps on it."""
    from maskcd.batch.runner import run_batch

    catalog = tmp_path / "sites.csv"
    catalog.write_text(f"site_id,before,after\ngpu1,{demo_pair['before']},{demo_pair['after']}\n")
    opts = MapOptions(model=str(DEMO_CHECKPOINT), device="cuda", workers=0, batch_size=8)
    result = run_batch(catalog, tmp_path / "out", opts, workers=1, progress=False)
    (site,) = result.sites
    assert site.status == "mapped", site
    assert site.get("n_polygons", 0) > 0
    assert result.merged is not None and result.merged.is_file()


def _cuda_scan_inputs(g, batch, groups, per_group, n_state, length) -> dict:
    """Seeded selective-scan inputs in VMamba's layout (δ around -3, A < 0), on the GPU."""
    channels = groups * per_group
    t = dict(
        u=torch.randn(batch, channels, length, generator=g),
        delta=torch.randn(batch, channels, length, generator=g) - 3.0,
        A=-torch.exp(torch.randn(channels, n_state, generator=g)),
        B=torch.randn(batch, groups, n_state, length, generator=g),
        C=torch.randn(batch, groups, n_state, length, generator=g),
        D=torch.rand(channels, generator=g) + 0.5,
        delta_bias=torch.randn(channels, generator=g) * 0.5,
    )
    return {k: v.cuda() for k, v in t.items()}


def test_triton_selective_scan_matches_the_pytorch_scan_and_serves_vmamba(monkeypatch):
    """The fused Triton scan (issue 12) on real CUDA: VMamba-T-sized scans and a general d_state against the PyTorch
    scan, and ``auto`` picks it inside a VMamba forward with the same logits."""
    import functools

    import maskcd.models.selective_scan as scan_module
    import maskcd.models.vmamba as vmamba
    from maskcd.models import build_model
    from maskcd.models.selective_scan import selective_scan

    g = torch.Generator().manual_seed(0)
    for shape in ((2, 4, 192, 1, 4096), (2, 4, 24, 4, 1000)):
        t = _cuda_scan_inputs(g, *shape)
        with torch.no_grad():
            fused = selective_scan(**t, backend="triton")
            plain = selective_scan(**t, backend="torch")
        scale = max(1.0, plain.abs().max().item())
        assert (fused - plain).abs().max().item() <= 1e-5 * scale

    model = build_model("minenetcd-vmamba-tiny").cuda().eval()
    a, b = (torch.rand(2, 3, 64, 64, generator=g).cuda() for _ in range(2))
    monkeypatch.setitem(scan_module._TRITON, "usable", True)
    monkeypatch.setitem(scan_module._TRITON, "proven", False)
    with torch.no_grad():
        auto = model(a, b).logits
    assert scan_module._TRITON["proven"], "auto did not use the Triton scan on CUDA"
    monkeypatch.setattr(vmamba, "selective_scan", functools.partial(selective_scan, backend="torch"))
    with torch.no_grad():
        plain = model(a, b).logits
    assert (auto - plain).abs().max().item() <= 1e-4 * max(1.0, plain.abs().max().item())


def test_selective_scan_matches_mamba_ssm_kernel_when_installed():
    """Where ``mamba_ssm`` happens to be installed (it needs nvcc to build, so never by us), its CUDA selective scan
    is the published kernel's own arithmetic: both our backends must agree with it."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError as exc:
        pytest.skip(f"mamba_ssm is not installed ({exc})")
    from maskcd.models.selective_scan import selective_scan

    t = _cuda_scan_inputs(torch.Generator().manual_seed(1), 2, 4, 48, 1, 1024)
    with torch.no_grad():
        kernel = selective_scan_fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], None, t["delta_bias"], True)
        scale = max(1.0, kernel.abs().max().item())
        for backend in ("triton", "torch"):
            ours = selective_scan(**t, backend=backend)
            assert (ours - kernel.float()).abs().max().item() <= 1e-5 * scale, backend
