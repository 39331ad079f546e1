"""MineNetCD: ChangeFFT maths, published-checkpoint parity, legacy loading checks and the published model size."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _oracles import shared_tool
from maskcd.errors import CheckpointError, ConfigError
from maskcd.models import build_model, count_parameters, load_model
from maskcd.models.minenetcd import EinFFT, MineNetCDForChangeDetection

TORCH_THREADS = 1  # small models: extra threads only spin on a shared 2-core machine


REFERENCE = ("reference", "minenetcd_changefft_tiny_legacy")


def _einfft_reference(block: EinFFT, x: torch.Tensor) -> torch.Tensor:
    """ChangeFFT written with complex tensors: per block W = Wr + iWi, ReLU on real/imag after layer 1."""
    b, c, h, w = x.shape
    nb, bs = block.num_blocks, block.block_size
    spec = torch.fft.fft2(x.permute(0, 2, 3, 1).reshape(b, h, w, nb, bs).double(), dim=(1, 2), norm="ortho")
    w1 = torch.complex(block.complex_weight_1[0].double(), block.complex_weight_1[1].double())
    b1 = torch.complex(block.complex_bias_1[0].double(), block.complex_bias_1[1].double())
    w2 = torch.complex(block.complex_weight_2[0].double(), block.complex_weight_2[1].double())
    b2 = torch.complex(block.complex_bias_2[0].double(), block.complex_bias_2[1].double())
    y = torch.einsum("...bd,bdk->...bk", spec, w1) + b1
    y = torch.complex(y.real.relu(), y.imag.relu())
    y = torch.einsum("...bd,bdk->...bk", y, w2) + b2
    shrink = torch.nn.functional.softshrink
    y = torch.complex(shrink(y.real, block.sparsity_threshold), shrink(y.imag, block.sparsity_threshold))
    y = torch.fft.ifft2(y, dim=(1, 2), norm="ortho").real
    return y.reshape(b, h, w, c).permute(0, 3, 1, 2).float()


def test_einfft_matches_complex_block_diagonal_mlp():
    torch.manual_seed(0)
    block = EinFFT(16)
    with torch.no_grad():  # larger weights so the soft-shrink and ReLUs are all active somewhere
        for p in block.parameters():
            p.mul_(20)
    x = torch.randn(2, 16, 7, 9)
    out = block(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, _einfft_reference(block, x), atol=1e-5, rtol=1e-4)
    # block-diagonal: channels of block 0 do not depend on the input of block 3
    x2 = x.clone()
    x2[:, 12:] += 1.0
    assert torch.allclose(block(x2)[:, :4], out[:, :4], atol=1e-6)
    assert not torch.allclose(block(x2)[:, 12:], out[:, 12:], atol=1e-4)


def test_einfft_rejects_indivisible_channels():
    with pytest.raises(ConfigError, match="divisible by 4"):
        EinFFT(30)


def test_changefft_is_applied_twice_as_published():
    torch.manual_seed(0)
    model = build_model("minenetcd-tiny").eval()
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = model.change_features(a, b)
        fa, fb = model.backbone(a).feature_maps, model.backbone(b).feature_maps
        d = fb[1] - fa[1]
        once = model.channel_mixing[1](d)
        expected = once + model.channel_mixing[1](model.norm[1](once.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    torch.testing.assert_close(feats[1], expected)


def test_legacy_checkpoint_reproduces_reference_logits(shared_data):
    folder = shared_data(*REFERENCE)
    ref = np.load(folder / "reference_io.npz")
    model = load_model(folder).eval()
    assert isinstance(model, MineNetCDForChangeDetection)
    assert model.config.maskcd_architecture == "minenetcd" and model.config.channel_mixing
    with torch.no_grad():
        out = model(torch.from_numpy(ref["image_a"]), torch.from_numpy(ref["image_b"]))
    expected = torch.from_numpy(ref["logits"])
    assert out.logits.shape == expected.shape == (2, 2, 64, 64)
    assert (out.logits - expected).abs().max().item() <= 1e-4
    torch.testing.assert_close(out.change_prob, expected.softmax(1)[:, 1], atol=1e-5, rtol=0)


def test_legacy_swin_shapes_follow_the_weights(shared_data, tmp_path, caplog):
    """Deviation 13: a config.json whose Swin disagrees with the stored weights loads as the weights say."""
    folder = shared_data(*REFERENCE)
    for name in ("pytorch_model.bin", "reference_io.npz"):
        shutil.copy(folder / name, tmp_path / name)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["backbone_config"].update(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING, logger="maskcd.models.minenetcd"):
        model = load_model(tmp_path).eval()
    assert "following the stored weights" in caplog.text
    assert model.config.backbone_config.embed_dim == 32
    ref = np.load(tmp_path / "reference_io.npz")
    with torch.no_grad():
        out = model(torch.from_numpy(ref["image_a"]), torch.from_numpy(ref["image_b"]))
    assert (out.logits - torch.from_numpy(ref["logits"])).abs().max().item() <= 1e-4



def _published_resnet18_checkpoint(folder: Path):
    """A ResNet_Diff_18 checkpoint made by the ORIGINAL MineNetCD code and saved as it publishes checkpoints.

    ``shared/tools/minenetcd_oracle.py`` imports the unmodified ``upernet.py``; its ``UperNetForSemanticSegmentation``
    is built from the upernet config updated with ``Backbone_type`` and ``channel_mixing``, exactly as ``train.py``
    does, and saved as the published folders are (``config.json`` with the 4.36 keys and the mutated
    ``auxiliary_in_channels``, ``pytorch_model.bin`` = the whole ``state_dict()``). The only substitution: the
    original calls ``AutoBackbone.from_pretrained("microsoft/resnet-18", ...)``, which needs the Hub, so that call
    returns a randomly initialised transformers ``ResNetBackbone`` of the ResNet-18 shape (the class and key names
    the Hub weights load into). ``hidden_size`` is 32 to keep the test small.

    Returns:
        ``(original model, oracle module)``.
    """
    oracle = shared_tool("minenetcd_oracle")
    from transformers import ResNetBackbone, ResNetConfig

    upernet = oracle.load_original_modules()["upernet"]
    config = oracle._base_config("ResNet_Diff_18", True)
    config.hidden_size = 32
    auto = upernet.AutoBackbone

    class HubFreeAutoBackbone:
        from_config = auto.from_config

        @staticmethod
        def from_pretrained(name, out_features=None, **kwargs):
            assert name == "microsoft/resnet-18", name
            return ResNetBackbone(ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                                               layer_type="basic", out_features=out_features))

    upernet.AutoBackbone = HubFreeAutoBackbone
    try:
        torch.manual_seed(0)
        original = upernet.UperNetForSemanticSegmentation._from_config(config).eval()
    finally:
        upernet.AutoBackbone = auto
    oracle.save_legacy_checkpoint(original, folder, weights_format="bin")
    return original, oracle


def test_published_resnet_checkpoint_loads_and_checks_its_depths(tmp_path):
    original, oracle = _published_resnet18_checkpoint(tmp_path)
    saved = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert any(k.startswith("backbone.embedder.") for k in saved) and "channel_mixing.3.complex_weight_2" in saved
    loaded = load_model(tmp_path).eval()
    ours = loaded.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in saved.items())  # every published tensor lands in place
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(a, b).logits, oracle.original_logits(original, a, b), rtol=1e-4, atol=1e-5)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["Backbone_type"] = "ResNet_Diff_50"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"ResNet_Diff_50 expects a ResNet with depths \[3, 4, 6, 3\]"):
        load_model(tmp_path)


def test_unsupported_legacy_backbone_is_named(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"Backbone_type": "Swin", "model_type": "upernet",
                    "architectures": ["UperNetForSemanticSegmentation"]})
    )
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="'Swin'.*not supported"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "preset, mebi",
    [("minenetcd-swin-t", 57.81), ("minenetcd-swin-t-nofft", 57.06), ("minenetcd-swin-b", 117.02)],
)
def test_published_sizes_on_meta_device(preset, mebi):
    """Swin-T + ChangeFFT = 57.81 "M" (2^20 units) as in the UCD README; the others are models.md §3.2's counts."""
    with torch.device("meta"):
        model = build_model(preset)
    assert round(count_parameters(model) / 2**20, 2) == mebi


def test_resnet_backbone_runs_on_odd_sizes_with_labels():
    torch.manual_seed(0)
    model = build_model("minenetcd-resnet18", hidden_size=32, auxiliary_channels=16)
    labels = torch.randint(0, 2, (2, 45, 51))
    labels[:, :3] = 255
    out = model(torch.randn(2, 3, 45, 51), torch.randn(2, 3, 45, 51), labels)
    assert out.logits.shape == (2, 2, 45, 51) and out.change_prob.shape == (2, 45, 51)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.channel_mixing[3].complex_weight_2.grad is not None


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys"):
        build_model("minenetcd-tiny", bogus=1)
    with pytest.raises(ConfigError, match="Swin_Diff_T"):
        build_model("minenetcd-tiny", backbone_type="VGG")
