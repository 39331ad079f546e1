"""One test battery over every registered model preset, plus the zoo's published sizes and loss conventions.

The battery builds each preset with small overrides (``tiny_overrides``: narrower backbones, fewer layers) so that it
runs in about a minute on two CPU cores; the overrides change widths/depths, never the wiring or the loss. Presets of
architectures that are small or have no width option (FC-EF, the Siam U-Nets, BIT, A2Net, TinyCD, DMINet, MSPSNet,
CGNet, HCGMNet) run at full size, on 32²–64² inputs. Presets whose tiny variants are the same network (MineNetCD
Swin-T/S/B differ only in backbone size; ResNet-50/101 only in depth; MaskCD presets with the same head size) share one
representative (``battery_presets``); every preset is mapped to one, and
every preset's full-size build is checked on the meta device.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from maskcd.models import build_model, count_parameters, list_models, load_model
from maskcd.models.registry import preset_info

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these models are small, and on a shared 2-core machine extra threads only spin."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


MASKCD_TINY = dict(
    backbone_config=dict(model_type="swin", embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=4,
                         drop_path_rate=0.0),
    feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, encoder_layers=1,
    decoder_layers=2, num_attention_heads=2, dim_feedforward=64, num_queries=4, train_num_points=1024,
)
SWIN_TINY = dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=4)
RESNET_TINY = dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])


def tiny_overrides(name: str) -> dict:
    """Small-but-same-wiring overrides of a preset for the battery."""
    info = preset_info(name)
    arch = info["architecture"]
    if arch == "maskcd":
        return dict(MASKCD_TINY)
    if arch == "minenetcd":
        btype = (info.get("config") or {}).get("backbone_type", "Swin_Diff_T")
        return dict(backbone_config=SWIN_TINY if btype.startswith("Swin") else RESNET_TINY, hidden_size=32,
                    auxiliary_channels=16)
    if arch == "snunet":
        return dict(base_width=8)
    if arch == "resunet":
        return dict(filters=[8, 16, 32, 64, 128])
    if arch == "changeformer":
        return dict(embed_dims=[16, 32, 40, 64], depths=[1, 1, 1, 1], embed_dim=32)
    return {}


_CACHE: dict[str, torch.nn.Module] = {}


def tiny_model(name: str) -> torch.nn.Module:
    if name not in _CACHE:
        torch.manual_seed(0)
        with contextlib.redirect_stderr(io.StringIO()):
            _CACHE[name] = build_model(name, **tiny_overrides(name))
    return _CACHE[name]


def battery_key(name: str) -> tuple:
    """Presets with the same key become the same network under ``tiny_overrides``."""
    info = preset_info(name)
    arch, cfg = info["architecture"], info.get("config") or {}
    if arch == "minenetcd":
        btype = cfg.get("backbone_type", "Swin_Diff_T")
        kind = "swin" if btype.startswith("Swin") else ("resnet-basic" if btype.endswith("_18") else "resnet-bottleneck")
        return (arch, kind, bool(cfg.get("channel_mixing", True)))
    if arch == "maskcd":
        return (arch, cfg.get("num_labels", 2))
    return (arch, name)


def battery_presets() -> list[str]:
    reps: dict[tuple, str] = {}
    for name in list_models():
        reps.setdefault(battery_key(name), name)
    return sorted(reps.values())


MODELS = battery_presets()


@pytest.mark.parametrize("name", list_models())
def test_every_preset_builds_full_size_and_has_a_battery_representative(name):
    assert any(battery_key(rep) == battery_key(name) for rep in MODELS)
    with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
        model = build_model(name)
    assert count_parameters(model) > 0
    assert model.config.maskcd_architecture == preset_info(name)["architecture"]


def _pair(batch: int, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, 3, h, w, generator=g)
    b = torch.randn(batch, 3, h, w, generator=g)
    labels = torch.randint(0, 2, (batch, h, w), generator=g)
    labels[:, :5, :] = 255
    return a, b, labels


def test_battery_covers_the_zoo():
    archs = {preset_info(n)["architecture"] for n in MODELS}
    expected = {"minenetcd", "fc-ef", "siamunet-conc", "siamunet-diff", "snunet", "bit", "changeformer", "a2net", "tinycd", "dminet", "mspsnet", "resunet", "cgnet", "hcgmnet"}
    assert expected <= archs


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [1, 2])
def test_output_shapes_on_odd_sizes(name, batch):
    model = tiny_model(name).eval()
    a, b, _ = _pair(batch, 37, 45)
    with torch.no_grad():
        out = model(a, b)
    assert out.change_prob.shape == (batch, 37, 45)
    assert torch.isfinite(out.change_prob).all()
    assert float(out.change_prob.min()) >= 0.0 and float(out.change_prob.max()) <= 1.0
    if out.logits is not None and preset_info(name)["architecture"] != "maskcd":
        assert out.logits.shape == (batch, 2, 37, 45)
        torch.testing.assert_close(out.logits.float().softmax(1)[:, 1], out.change_prob)


@pytest.mark.parametrize("name", MODELS)
def test_loss_reaches_every_trainable_parameter(name):
    model = tiny_model(name).train()
    model.zero_grad(set_to_none=True)
    a, b, labels = _pair(2, 64, 64, seed=1)
    out = model(a, b, labels)
    assert out.loss is not None and out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:8]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradients in {bad[:8]}"
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", MODELS)
def test_save_load_is_bit_exact(name, tmp_path):
    model = tiny_model(name).eval()
    with contextlib.redirect_stderr(io.StringIO()):
        model.save_pretrained(tmp_path)
        loaded = load_model(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.maskcd_architecture == preset_info(name)["architecture"]
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    different = [k for k in sd if not torch.equal(sd[k], sd2[k])]
    assert not different, f"{name}: {different[:8]} differ after save/load"
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in loaded.parameters()]
    a, b, _ = _pair(1, 48, 40, seed=2)
    with torch.no_grad():
        assert torch.equal(model(a, b).change_prob, loaded(a, b).change_prob)


def _levir_crops(shared_data, size: int = 32):
    """Two ``size``² windows of one real LEVIR-CD pair (the two most class-balanced, stride 16), as a batch of 2.

    Batch 2 because UperNet's pyramid pooling has BatchNorm on 1×1 maps, which cannot train on a single sample.
    """
    from PIL import Image

    root = shared_data("levircd_samples_bitcd")
    name = "test_2_0000_0000.png"
    a = np.asarray(Image.open(root / "A" / name).convert("RGB"))
    b = np.asarray(Image.open(root / "B" / name).convert("RGB"))
    label = (np.asarray(Image.open(root / "label" / name).convert("L")) > 127).astype(np.int64)
    windows = sorted(
        (abs(label[r:r + size, c:c + size].mean() - 0.5), r, c)
        for r in range(0, 256 - size + 1, 16) for c in range(0, 256 - size + 1, 16)
    )[:2]
    crops = [(slice(r, r + size), slice(c, c + size)) for _, r, c in windows]
    raw_a = torch.stack([torch.from_numpy(np.ascontiguousarray(a[w].transpose(2, 0, 1))) for w in crops])
    raw_b = torch.stack([torch.from_numpy(np.ascontiguousarray(b[w].transpose(2, 0, 1))) for w in crops])
    labels = torch.stack([torch.from_numpy(label[w]) for w in crops])
    assert 0.1 < labels.float().mean() < 0.9
    return raw_a, raw_b, labels


@pytest.mark.parametrize("name", MODELS)
def test_short_overfit_on_a_real_levir_pair(name, shared_data):
    raw_a, raw_b, labels = _levir_crops(shared_data)
    torch.manual_seed(0)
    with contextlib.redirect_stderr(io.StringIO()):
        model = build_model(name, **tiny_overrides(name)).train()
    spec = model.inference_spec
    a, b = spec.normalize(raw_a), spec.normalize(raw_b)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = model(a, b, labels).loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-2:]) < 0.9 * losses[0], f"{name}: loss did not fall: {np.round(losses, 3).tolist()}"


UCD_PARAMS_MI = {  # models.md §4.1 (UCD README), in units of 2^20 parameters
    "fc-ef": 1.29, "siamunet-conc": 1.47, "siamunet-diff": 1.29, "snunet": 11.48, "bit": 11.39,
    "changeformer": 39.13, "a2net": 3.60, "tinycd": 0.27, "dminet": 6.44, "mspsnet": 2.11, "resunet": 12.59, "cgnet": 37.18, "hcgmnet": 45.13, "minenetcd-swin-t": 57.81,
}


@pytest.mark.parametrize("name, mebi", sorted(UCD_PARAMS_MI.items()))
def test_preset_size_matches_ucd_table(name, mebi):
    with torch.device("meta"):
        model = build_model(name)
    assert abs(count_parameters(model) / 2**20 - mebi) <= 0.05 * mebi


@pytest.mark.parametrize("name", sorted(n for n in UCD_PARAMS_MI if not n.startswith("minenetcd")))
def test_all_ignored_labels_give_zero_loss(name):
    model = tiny_model(name).train()
    a, b, _ = _pair(2, 64, 64, seed=3)
    loss = model(a, b, torch.full((2, 64, 64), 255)).loss
    assert loss.item() == 0.0 and loss.requires_grad


@pytest.mark.parametrize("name", ["a2net", "tinycd"])
def test_sigmoid_models_report_two_class_logits(name):
    """Single-logit (BCE) models expose logits (0, z): softmax channel 1 = sigmoid(z)."""
    model = tiny_model(name).eval()
    a, b, _ = _pair(1, 64, 64, seed=4)
    with torch.no_grad():
        out = model(a, b)
        z = model.predict(a, b).logits[:, 0]
    assert torch.equal(out.logits[:, 0], torch.zeros_like(z))
    torch.testing.assert_close(out.change_prob, torch.sigmoid(z))


def test_unused_published_layers_are_frozen_not_trained():
    bit = tiny_model("bit")
    assert not any(p.requires_grad for p in bit.resnet.layer4.parameters())
    a2 = tiny_model("a2net")
    assert not any(p.requires_grad for p in a2.backbone.features[18].parameters())
    dmi = tiny_model("dminet")
    assert not any(p.requires_grad for p in dmi.resnet.fc.parameters())
    assert not any(p.requires_grad for p in tiny_model("mspsnet").unused.parameters())
    assert not any(p.requires_grad for p in tiny_model("cgnet").unused.parameters())
    smaller = build_model("bit", keep_unused_resnet_layers=False)
    assert count_parameters(smaller) == sum(p.numel() for p in bit.parameters() if p.requires_grad)


def test_wrong_band_count_and_unknown_keys_are_explained():
    model = tiny_model("fc-ef")
    with pytest.raises(ValueError, match="expected 3 input bands"):
        model(torch.randn(1, 4, 32, 32), torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="valid keys"):
        build_model("snunet", width=3)


def test_maskcd_models_lists_the_zoo(capsys):
    from maskcd.cli.models import main

    assert main(["fc-ef", "bit", "tinycd", "minenetcd-swin-t"]) == 0
    out = capsys.readouterr().out
    assert "57.81 Mi" in out and "11.39 Mi" in out and "0.27 Mi" in out and "1.29 Mi" in out


def _levir_root():
    import os
    from pathlib import Path

    shared = Path(os.environ.get("MASKCD_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    return shared / "levircd_samples_bitcd"


@pytest.fixture(scope="module")
def levir_dataset(tmp_path_factory):
    """``maskcd-dataset folders`` over the real LEVIR-CD samples (skipped when ../shared/data is absent)."""
    from maskcd.cli.dataset import main

    root = _levir_root()
    if not root.is_dir():
        pytest.skip(f"real test data {root} is absent (../shared/data is not beside the checkout)")
    out = tmp_path_factory.mktemp("levir") / "ds"
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["folders", str(root), "-o", str(out), "--seed", "0"]) == 0
    return out


@pytest.mark.parametrize("name", ["tinycd", "minenetcd-tiny"])
def test_maskcd_train_runs_a_zoo_model_and_its_checkpoint_loads(name, levir_dataset, tmp_path):
    """The generic training loop needs only the call contract: train 1 epoch, validate, reload best_f1.

    Batch 3 = the 3 training pairs in one batch: UperNet's pyramid pooling (1×1 maps + BatchNorm) cannot train on a
    batch of one, which a trailing partial batch would be.
    """
    import json

    from maskcd.cli.train import main

    out = tmp_path / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["--dataset", str(levir_dataset), "--model", name, "--batch-size", "3", "--learning-rate", "1e-3",
                   "--epochs", "1", "--val-every", "1", "--crop", "64", "--max-steps-per-epoch", "2",
                   "--val-batch-size", "2", "--output-dir", str(out), "--seed", "0"])
    assert rc == 0, err.getvalue()[-500:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epoch = [m for m in metrics if "val" in m]
    assert epoch and np.isfinite(epoch[-1]["loss"])
    # the val split is the one LEVIR-CD val tile: the counts must cover exactly its pixels and its change pixels
    from PIL import Image

    val = epoch[-1]["val"]
    truth = np.asarray(Image.open(_levir_root() / "label" / "val_27_0000_0256.png")) > 0
    assert val["num_items"] == 1
    assert val["tp"] + val["fp"] + val["fn"] + val["tn"] == truth.size
    assert val["tp"] + val["fn"] == int(truth.sum()) > 0
    assert val["f1"] == pytest.approx(2 * val["tp"] / (2 * val["tp"] + val["fp"] + val["fn"]))
    model = load_model(out / "best_f1").eval()
    assert model.config.maskcd_architecture == preset_info(name)["architecture"]
    assert model.inference_spec.tile_size == 256
    with torch.no_grad():
        assert model(*_pair(1, 64, 64)[:2]).change_prob.shape == (1, 64, 64)
