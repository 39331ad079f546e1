"""MineNetCD with VMamba backbones: parity with the ORIGINAL MineNetCD code (oracle), strict loading, presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from _oracles import shared_tool
from maskcd.errors import CheckpointError
from maskcd.models import build_model, count_parameters, load_model
from maskcd.models.minenetcd import ADE_MEAN, ADE_STD, MineNetCDForChangeDetection
from maskcd.models.vmamba import VMambaBackbone, cross_merge, cross_scan

REDUCED = dict(depths=[1, 1, 1, 1], dims=[32, 64, 128, 256], hidden_size=64)


@pytest.fixture(scope="module")
def oracle():
    """The MineNetCD oracle (original code, CPU substitutes for its kernels), or skip."""
    return shared_tool("minenetcd_oracle")


TORCH_THREADS = 1  # small models: extra threads only spin on a shared 2-core machine


def pair(size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, size, size, generator=g), torch.randn(1, 3, size, size, generator=g)


def assert_logits_close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5):
    err = (ours - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= rtol * scale, f"max |diff| {err:.3g} > {rtol:g} x logit scale {scale:.3g}"


@pytest.fixture(scope="module")
def reduced_folder(oracle, tmp_path_factory):
    model = oracle.build_original("VSSM_T_ST_Diff", seed=0, **REDUCED)
    a, b = pair(64)
    ref = oracle.original_logits(model, a, b)
    folder = oracle.save_legacy_checkpoint(model, tmp_path_factory.mktemp("vssm") / "reduced")
    return folder, (a, b), ref


def test_cross_scan_and_merge_orders():
    """Direction 0 row-major, 1 column-major, 2 and 3 reversed; merge sums the four back on the grid."""
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    xs = cross_scan(x)
    assert xs.shape == (1, 4, 2, 12)
    assert xs[0, 0, 0].tolist() == list(range(12))
    assert xs[0, 1, 0].tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    torch.testing.assert_close(xs[:, 2:], xs[:, :2].flip(-1))
    torch.testing.assert_close(cross_merge(xs, 3, 4), 4 * x)


def test_reduced_published_folder_loads_and_matches_original(reduced_folder, oracle):
    folder, (a, b), ref = reduced_folder
    model = load_model(folder)
    assert isinstance(model, MineNetCDForChangeDetection) and isinstance(model.backbone, VMambaBackbone)
    assert model.config.backbone_config.depths == [1, 1, 1, 1]
    spec = model.inference_spec  # the ADE statistics of test.py's Normalize
    assert spec.image_mean == pytest.approx(oracle.ADE_MEAN, abs=1e-12)
    assert spec.image_std == pytest.approx(oracle.ADE_STD, abs=1e-12)
    with torch.no_grad():
        out = model(a, b)
    assert_logits_close(out.logits, ref)
    # the prediction test.py makes (softmax + argmax) is the same map
    assert torch.equal(out.logits.argmax(1), ref.argmax(1))


def test_reduced_without_changefft_matches_original(oracle, tmp_path):
    original = oracle.build_original("VSSM_T_ST_Diff", seed=3, channel_mixing=False, **REDUCED)
    a, b = pair(48, seed=1)
    ref = oracle.original_logits(original, a, b)
    model = load_model(oracle.save_legacy_checkpoint(original, tmp_path / "nofft"))
    assert not model.use_channel_mixing
    with torch.no_grad():
        assert_logits_close(model(a, b).logits, ref)


def test_vssm_t_full_size_matches_original(oracle, tmp_path):
    """VSSM-T as published (depths [2,2,5,2], dims 96..768, ChangeFFT): a published-layout folder, then logits."""
    original = oracle.build_original("VSSM_T_ST_Diff", seed=1)
    a, b = pair(64, seed=2)
    ref = oracle.original_logits(original, a, b)
    folder = oracle.save_legacy_checkpoint(original, tmp_path / "t")
    del original
    model = load_model(folder)
    assert count_parameters(model) == 63_037_380  # ORACLE_STATUS.md: VSSM_T_ST_Diff numel
    with torch.no_grad():
        assert_logits_close(model(a, b).logits, ref)


@pytest.mark.parametrize("preset,backbone_type,numel", [
    ("minenetcd-vmamba-s", "VSSM_S_ST_Diff", 82_479_300),
    ("minenetcd-vmamba-b", "VSSM_B_ST_Diff", 123_359_492),
])
def test_vssm_s_and_b_full_size_match_original(oracle, preset, backbone_type, numel, tmp_path):
    """S and B as published: a published-layout folder of the original model loads strictly into the preset's
    architecture (the original's exact keys, shapes and hard-coded hyper-parameters) and gives its logits."""
    original = oracle.build_original(backbone_type, seed=2)
    a, b = pair(64, seed=3)
    ref = oracle.original_logits(original, a, b)
    folder = oracle.save_legacy_checkpoint(original, tmp_path / "published")
    kwargs = oracle.original_backbone_kwargs(backbone_type)
    del original
    model = load_model(folder)
    assert count_parameters(model) == numel  # ORACLE_STATUS.md
    with torch.device("meta"):
        preset_model = build_model(preset)
    assert {k: tuple(v.shape) for k, v in preset_model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }
    cfg = preset_model.config.backbone_config
    assert (list(kwargs["depths"]), list(kwargs["dims"])) == (cfg.depths, cfg.dims)
    assert (kwargs["ssm_d_state"], kwargs["ssm_ratio"], kwargs["ssm_drop_rate"]) == (
        cfg.d_state, cfg.ssm_ratio, cfg.ssm_drop_rate,
    )
    assert kwargs["forward_type"] == "v05_noz"
    with torch.no_grad():
        assert_logits_close(model(a, b).logits, ref)


def _rewrite(folder: Path, dest: Path, edit) -> Path:
    dest.mkdir()
    (dest / "config.json").write_text((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def test_missing_or_extra_key_is_an_error_not_random_weights(reduced_folder, tmp_path):
    folder, _, _ = reduced_folder
    missing = _rewrite(folder, tmp_path / "missing", lambda s: s.pop("backbone.layers.0.blocks.0.op.Ds"))
    with pytest.raises(CheckpointError, match=r"missing \['backbone.layers.0.blocks.0.op.Ds'\].*random weights"):
        load_model(missing)
    head = {"backbone.classifier.head.weight": torch.zeros(2, 256)}
    extra = _rewrite(folder, tmp_path / "extra", lambda s: s.update(head))
    with pytest.raises(CheckpointError, match=r"unexpected \['backbone.classifier.head.weight'\]"):
        load_model(extra)
    short = {"backbone.layers.0.blocks.0.op.Ds": torch.ones(5)}
    wrong = _rewrite(folder, tmp_path / "wrong", lambda s: s.update(short))
    with pytest.raises(CheckpointError, match="mismatched"):
        load_model(wrong)


def test_vssm_type_with_non_vmamba_weights_is_a_clear_error(reduced_folder, tmp_path):
    folder, _, _ = reduced_folder
    dest = _rewrite(
        folder, tmp_path / "noback", lambda s: [s.pop(k) for k in list(s) if k.startswith("backbone.layers.")]
    )
    with pytest.raises(CheckpointError, match="no VMamba backbone"):
        load_model(dest)


def test_vmamba_presets_build_and_record_ade_statistics():
    model = build_model("minenetcd-vmamba-tiny")
    assert isinstance(model.backbone, VMambaBackbone) and model.use_channel_mixing
    assert model.inference_spec.image_mean == pytest.approx(ADE_MEAN, abs=1e-12)
    assert model.inference_spec.image_std == pytest.approx(ADE_STD, abs=1e-12)
    op = model.backbone.layers[0].blocks[0].op
    assert op.A_logs.shape == (4 * 32, 1) and op.dropout.p == pytest.approx(0.6)
    a, b = pair(64)
    out = model.eval()(a, b)
    assert out.logits.shape == (1, 2, 64, 64) and torch.isfinite(out.logits).all()
    # the config round-trips through save_pretrained / load_model
    assert json.loads(model.config.to_json_string())["backbone_config"]["model_type"] == "maskcd-vmamba"


@pytest.mark.parametrize("which", ["preset", "published-folder"])
def test_maskcd_map_runs_a_vmamba_model_on_two_seeded_geotiffs(which, tmp_path, geotiff_writer, request, capsys):
    """``maskcd-map`` end to end with the tiny VMamba preset, and with a published-layout VSSM folder."""
    import numpy as np
    import rasterio

    from maskcd.cli.map import main

    model = "minenetcd-vmamba-tiny" if which == "preset" else str(request.getfixturevalue("reduced_folder")[0])
    rng = np.random.default_rng(11)
    a = rng.integers(20, 200, (3, 80, 96), dtype=np.uint8)
    b = a.copy()
    b[:, 10:40, 20:60] = 250
    pa = geotiff_writer(tmp_path / "before.tif", a)
    pb = geotiff_writer(tmp_path / "after.tif", b)
    out = tmp_path / "out" / "changes.gpkg"
    out.parent.mkdir()
    rc = main([str(pa), str(pb), "-o", str(out), "--model", model, "--tile", "64", "--overlap", "16",
               "--device", "cpu", "--workers", "0", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "changes.gpkg", "changes_change_mask.tif", "changes_change_prob.tif"]
    with rasterio.open(out.parent / "changes_change_prob.tif") as ds:
        prob = ds.read(1, masked=True)
        assert (ds.width, ds.height) == (96, 80) and ds.crs.to_epsg() == 32633
    assert prob.count() == 80 * 96  # every pixel got a probability (uint8-scaled, 255 = nodata)
