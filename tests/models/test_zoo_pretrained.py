"""``backbone_weights: imagenet`` of the zoo models that UCD starts from ImageNet (torchvision's weights and cache).

Nothing is downloaded: the cache is a temporary ``$TORCH_HOME`` holding a seeded stand-in file, and the download
function is replaced by one that fails as an offline machine does.
"""

from __future__ import annotations

import contextlib
import io
import urllib.error

import pytest
import torch
from torchvision.models import ResNet18_Weights, resnet18

from maskcd.errors import ConfigError
from maskcd.models import build_model, load_model
from maskcd.models.registry import ModelNotFoundError

PRETRAINED = {"tfi-gr": "backbone", "afcf3d": "resnet"}  # preset -> its ResNet-18 attribute


def _kernel(model, name: str) -> torch.Tensor:
    """``layer3.1.conv2``'s 2D kernel (AFCF3D stores it as a (1, k, k) Conv3d)."""
    conv = getattr(model, PRETRAINED[name]).layer3[1].conv2
    return conv.weight if hasattr(conv, "weight") else conv.conv3d_spatial.weight.squeeze(2)


@pytest.fixture
def offline_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _stand_in(checkpoints) -> dict:
    """A seeded ResNet-18 state dict saved under torchvision's cached file name for IMAGENET1K_V1."""
    torch.manual_seed(123)
    state = resnet18().state_dict()
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, checkpoints / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1])
    return state


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_imagenet_offline_and_not_cached_is_one_clear_line(name, offline_torch_home):
    with pytest.raises(ModelNotFoundError) as err:
        build_model(name, backbone_weights="imagenet")
    msg = str(err.value)
    assert "\n" not in msg
    assert "resnet18-f37072fd.pth" in msg and str(offline_torch_home) in msg and "backbone_weights: null" in msg


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_imagenet_weights_come_from_torchvisions_cache_and_saved_models_do_not_need_it(name, offline_torch_home,
                                                                                      tmp_path):
    state = _stand_in(offline_torch_home)
    with contextlib.redirect_stderr(io.StringIO()):
        model = build_model(name, backbone_weights="imagenet")
    assert torch.equal(_kernel(model, name), state["layer3.1.conv2.weight"])
    assert torch.equal(getattr(model, PRETRAINED[name]).bn1.running_var, state["bn1.running_var"])
    with contextlib.redirect_stderr(io.StringIO()):
        random = build_model(name)
    assert not torch.equal(_kernel(random, name), state["layer3.1.conv2.weight"])
    with contextlib.redirect_stderr(io.StringIO()):
        model.save_pretrained(tmp_path / "saved")
    for f in offline_torch_home.iterdir():
        f.unlink()  # reloading a saved model reads its own weights, never the ImageNet file
    with contextlib.redirect_stderr(io.StringIO()):
        loaded = load_model(tmp_path / "saved")
    assert torch.equal(_kernel(loaded, name), state["layer3.1.conv2.weight"])


def test_unknown_backbone_weights_are_explained():
    with pytest.raises(ConfigError, match="backbone_weights must be null"):
        build_model("tfi-gr", backbone_weights="imagenet21k")
