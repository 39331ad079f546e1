"""Optional ImageNet initialisation of zoo backbones from torchvision's weights (``backbone_weights: imagenet``).

The weights come through torchvision's own download cache (``torch.hub.get_dir()/checkpoints``); nothing else is
fetched. Offline and not cached, loading fails with one line naming the file, the URL and the cache folder. The
default of every preset is random initialisation, so nothing downloads unless a user asks for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from maskcd.errors import MaskCDError

BACKBONE_WEIGHTS = (None, "imagenet")


class PretrainedWeightsError(MaskCDError):
    """ImageNet backbone weights were asked for but cannot be read or downloaded."""


def check_backbone_weights(value: str | None) -> str | None:
    if value not in BACKBONE_WEIGHTS:
        raise ValueError(f"backbone_weights must be null (random init) or 'imagenet', got {value!r}")
    return value


def torchvision_state_dict(weights_name: str) -> dict[str, torch.Tensor]:
    """The state dict of torchvision's ``weights_name`` (e.g. ``"ResNet18_Weights.IMAGENET1K_V1"``), cached."""
    from torchvision.models import get_weight

    weights = get_weight(weights_name)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name

    def missing(why: str) -> PretrainedWeightsError:
        return PretrainedWeightsError(
            f"backbone_weights: imagenet needs torchvision's {weights_name} ({weights.url}), which is not in "
            f"torchvision's cache ({cached}) and {why}: download it once on a connected machine into that folder, "
            f"or build without backbone_weights (random init)"
        )

    if not cached.is_file() and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise missing("HF_HUB_OFFLINE is set")
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, socket errors, hash mismatch: all mean "not available here"
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
