"""ImageNet backbone weights for the zoo models that UCD starts from a pretrained torchvision network.

``backbone_weights: imagenet`` in a preset loads torchvision's published weights through torchvision's own cache
(``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME``): a file already there is used as it is, otherwise
torchvision downloads it. Offline and not cached, the build fails with one line naming the file to fetch. The
default (``backbone_weights: null``) is random initialisation, and nothing is downloaded.

Weights are only loaded into a freshly built model with real tensors: a model built on the meta device, or
materialised by ``from_pretrained`` (which constructs on the meta device and then reads its own checkpoint), never
downloads anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from maskcd.errors import ConfigError, ModelNotFoundError

BACKBONE_WEIGHTS = {
    # name in presets -> torchvision weights enum entry, per backbone
    "imagenet": {
        "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
        "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
        "vgg16": "VGG16_Weights.IMAGENET1K_V1",
    },
}


class PretrainedWeightsError(ModelNotFoundError):
    """ImageNet backbone weights were asked for but are neither in torchvision's cache nor downloadable."""


def check_backbone_weights(value: str | None, backbone: str) -> str | None:
    """Validate a config's ``backbone_weights`` (``None`` or ``"imagenet"``)."""
    if value is None or value in BACKBONE_WEIGHTS and backbone in BACKBONE_WEIGHTS[value]:
        return value
    raise ConfigError(f"backbone_weights must be null (random init) or one of {sorted(BACKBONE_WEIGHTS)}, got {value!r}")


def _cached_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def torchvision_state_dict(value: str, backbone: str) -> dict[str, torch.Tensor]:
    """The state dict of torchvision's ``backbone`` weights named by ``value``, from torchvision's cache or the web.

    Raises:
        PretrainedWeightsError: the file is not cached and cannot be downloaded (offline, or ``HF_HUB_OFFLINE`` set);
            the one-line message names the weights, the file and where to put it.
    """
    from torchvision.models import get_weight

    name = BACKBONE_WEIGHTS[value][backbone]
    weights = get_weight(name)
    target = _cached_file(weights.url)

    def missing(why: str) -> PretrainedWeightsError:
        return PretrainedWeightsError(
            f"backbone_weights: {value} needs torchvision's {name} ({target.name}), which is not in torchvision's "
            f"cache ({target}) and {why}: fetch {weights.url} once on a connected machine into {target.parent}, "
            f"or set backbone_weights: null (random init)"
        )

    if not target.is_file() and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise missing("HF_HUB_OFFLINE is set")
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError / HTTPError / socket errors / a truncated or altered file
        raise missing(f"could not be downloaded ({type(err).__name__})") from err


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], rename=None) -> int:
    """Copy the tensors of ``state`` whose (optionally renamed) key exists in ``module`` with the same shape.

    Returns the number of tensors copied. Keys the module lacks (a classifier) or shapes that differ (another band
    count) are left at their random initialisation, as the original code's partial loads do.
    """
    own = module.state_dict()
    picked = {}
    for key, value in state.items():
        key = rename(key) if rename else key
        if key is not None and key in own and own[key].shape == value.shape:
            picked[key] = value
    with torch.no_grad():
        for key, value in picked.items():
            own[key].copy_(value)
    return len(picked)


def maybe_load_backbone(module: nn.Module, value: str | None, backbone: str, keep: str | None = None,
                        convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> bool:
    """Load ``value`` weights into ``module`` unless ``value`` is None or ``module`` lives on the meta device.

    ``convert`` maps torchvision's state dict onto ``module``'s names and shapes (default: as it is). Keys of
    ``module`` matching the regular expression ``keep`` (``re.match``: a stem rebuilt for another band count, a dropped
    ``fc``, layers torchvision has no weights for) keep their initialisation and are not loaded; every other tensor
    must be present and fit.
    """
    if value is None or any(p.is_meta for p in module.parameters()):
        return False
    state = torchvision_state_dict(value, backbone)
    if convert is not None:
        state = convert(state)
    if keep is not None:
        state = {k: v for k, v in state.items() if not re.match(keep, k)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if keep is None or not re.match(keep, k)]
    if missing or unexpected:
        raise RuntimeError(f"{backbone} {value} weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return True
