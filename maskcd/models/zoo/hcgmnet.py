"""HCGMNet, the Hierarchical Change Guiding Map Network (Han, Wu, Du, IGARSS 2023, "HCGMNet: a hierarchical change
guiding map network for change detection").

The predecessor of CGNet (:mod:`maskcd.models.zoo.cgnet`), from the same released file: a weight-shared VGG16-BN
(random weights: nothing is downloaded) encodes both dates to four levels, each date pair is concatenated (after,
before) and reduced (3×3 conv-BN-ReLU), levels 2–4 pass one more 3×3 conv-BN-ReLU, and all four are upsampled to stride
2 and concatenated (1408 channels). A decoder (conv-BN-ReLU 1408 → 512 → 256 → 64, 3×3 conv to 1) predicts the
hierarchical change guiding map; Change Guide Modules (guide-modulated position self-attention, zero-initialised γ)
refine levels 2–4 with it, the refined levels are fused the same way and a second decoder of the same shape predicts
the final map. Both maps are upsampled to the input size.

Loss (``recipe``): ``"ucd"`` (default) binary cross-entropy (sigmoid outputs) on the final map only, as UCD trains it
(the guiding map still learns through the guidance); ``"authors"`` adds the BCE on the guiding map (deep supervision).
255 ignored.
Inputs are padded to a multiple of 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ConvBNReLU, ZooModel, ZooPrediction, bce_loss, config_builder
from maskcd.models.zoo.cgnet import ChangeGuideModule, VGGChangeGuideMixin, vgg16_bn_stages


class HCGMNetConfig(PreTrainedConfig):
    """HCGMNet hyper-parameters (the widths are VGG16-BN's).

    Args:
        recipe: ``"ucd"`` (default: BCE on the final map, as UCD) or ``"authors"`` (plus BCE on the guiding map).
    """

    model_type = "maskcd-hcgmnet"

    def __init__(self, recipe: str = "ucd", **kwargs):
        if recipe not in ("ucd", "authors"):
            raise ConfigError(f"HCGMNet recipe must be 'ucd' or 'authors', got {recipe!r}")
        self.recipe = recipe
        super().__init__(**kwargs)


def _decoder() -> nn.Sequential:
    return nn.Sequential(ConvBNReLU(1408, 512, 3), ConvBNReLU(512, 256, 3), ConvBNReLU(256, 64, 3),
                         nn.Conv2d(64, 1, 3, padding=1))


class HCGMNet(VGGChangeGuideMixin, ZooModel):
    """HCGMNet: VGG16-BN siamese encoder, multi-level change guiding map, guided attention, second decoder."""

    config_class = HCGMNetConfig
    size_divisor = 16

    def __init__(self, config: HCGMNetConfig):
        super().__init__(config)
        self.encoder = vgg16_bn_stages(self.num_bands)
        self.conv_reduce = nn.ModuleList(ConvBNReLU(2 * c, c, 3) for c in (128, 256, 512, 512))
        self.up_layers = nn.ModuleList(ConvBNReLU(c, c, 3) for c in (256, 512, 512))
        self.decode = _decoder()
        self.decode_final = _decoder()
        self.cgm = nn.ModuleList([ChangeGuideModule(256), ChangeGuideModule(512), ChangeGuideModule(512)])
        self.post_init()

    @staticmethod
    def _fuse(l1: torch.Tensor, rest: list[torch.Tensor]) -> torch.Tensor:
        size = l1.shape[-2:]
        return torch.cat([l1, *(F.interpolate(x, size=size, mode="bilinear", align_corners=True) for x in rest)], 1)

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        la, lb = self._levels(image_a), self._levels(image_b)
        l1, *rest = (red(torch.cat([b, a], 1)) for red, a, b in zip(self.conv_reduce, la, lb))
        rest = [up(x) for up, x in zip(self.up_layers, rest)]
        guide = self.decode(self._fuse(l1, rest))
        rest = [cgm(x, guide) for cgm, x in zip(self.cgm, rest)]
        final = self.decode_final(self._fuse(l1, rest))
        size = image_a.shape[-2:]

        def up(x):
            return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

        return ZooPrediction(up(final), aux=[up(guide)])

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        loss = bce_loss(prediction.logits, labels)
        return loss + bce_loss(prediction.aux[0], labels) if self.config.recipe == "authors" else loss


register_architecture("hcgmnet", HCGMNet, config_builder(HCGMNetConfig))
