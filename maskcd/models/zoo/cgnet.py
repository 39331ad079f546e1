"""CGNet, the Change Guiding Network (Han, Wu, Guo, Hu, Li, Chen, IEEE JSTARS 2023, "Change guiding network:
incorporating change prior to guide change detection in remote sensing imagery").

A weight-shared VGG16-BN (torchvision, random weights: nothing is downloaded) encodes each date to four levels
(128, 256, 512, 512 channels at strides 2, 4, 8, 16); the two dates are concatenated (after, before) per level and
reduced by 3×3 conv → BN → ReLU. A coarse *change prior* (guide map) is predicted from the deepest level upsampled to
stride 2 (3×3 conv-BN-ReLU to 64, 3×3 conv to 1). The decoder goes coarse to fine: at each of levels 4, 3, 2 a Change
Guide Module — position self-attention whose queries, keys and values are modulated by ``1 + sigmoid(prior)`` and
added back with a zero-initialised γ — refines the features, which are upsampled ×2 (bilinear, align_corners),
concatenated with the next level and fused (3×3 conv-BN-ReLU); the stride-2 result is classified (3×3 conv-BN-ReLU to
64, 1×1 conv to 1) and upsampled to the input size.

Loss (``recipe``): ``"ucd"`` (default) binary cross-entropy (sigmoid outputs) on the final map only, as UCD trains it
(its loss reads ``main_predictions`` alone; the prior still learns through the guidance); ``"authors"`` adds the BCE
on the change prior (the authors' deep supervision). 255 ignored. The released code also declares three 3×3 conv blocks (``up_layer2..4``) that CGNet's forward never calls;
UCD's 37.18 M (2^20 units) counts them, so maskcd keeps them frozen (``keep_unused_layers: false`` drops them).
Inputs are padded to a multiple of 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg16_bn
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ConvBNReLU, ZooModel, ZooPrediction, bce_loss, config_builder

VGG_SLICES = ((0, 5), (5, 12), (12, 22), (22, 32), (32, 42))  # stem, then levels at strides 2, 4, 8, 16


def vgg16_bn_stages(num_bands: int) -> nn.ModuleList:
    """The randomly initialised VGG16-BN feature extractor cut into the stages CGNet and HCGMNet use."""
    features = vgg16_bn(weights=None).features
    if num_bands != 3:
        features[0] = nn.Conv2d(num_bands, 64, 3, padding=1)
    return nn.ModuleList(features[a:b] for a, b in VGG_SLICES)


class CGNetConfig(PreTrainedConfig):
    """CGNet hyper-parameters.

    Args:
        keep_unused_layers: Keep the released code's never-called ``up_layer2..4`` blocks (frozen).
        recipe: ``"ucd"`` (default: BCE on the final map, as UCD) or ``"authors"`` (plus BCE on the change prior).
    """

    model_type = "maskcd-cgnet"

    def __init__(self, keep_unused_layers: bool = True, recipe: str = "ucd", **kwargs):
        if recipe not in ("ucd", "authors"):
            raise ConfigError(f"CGNet recipe must be 'ucd' or 'authors', got {recipe!r}")
        self.recipe = recipe
        self.keep_unused_layers = keep_unused_layers
        super().__init__(**kwargs)


class ChangeGuideModule(nn.Module):
    """Position self-attention with Q, K, V scaled by ``1 + sigmoid(guide)``; ``gamma``-scaled residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = 1 + torch.sigmoid(F.interpolate(guide, size=(h, w), mode="bilinear", align_corners=True))
        q = (self.query_conv(x) * g).reshape(b, -1, h * w).transpose(1, 2)
        k = (self.key_conv(x) * g).reshape(b, -1, h * w)
        v = (self.value_conv(x) * g).reshape(b, -1, h * w)
        attn = torch.bmm(q, k).softmax(dim=-1)
        return self.gamma * torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w) + x


def _up2(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)


class VGGChangeGuideMixin:
    """What CGNet and HCGMNet share: the VGG16-BN stage outputs (strides 2-16) and zero-initialised guide gammas."""

    def _init_extra(self, module: nn.Module) -> None:
        if isinstance(module, ChangeGuideModule):
            nn.init.zeros_(module.gamma)

    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.encoder[0](x)
        out = []
        for stage in self.encoder[1:]:
            x = stage(x)
            out.append(x)
        return out


class CGNet(VGGChangeGuideMixin, ZooModel):
    """CGNet: VGG16-BN siamese encoder, change prior, change-guided attention decoder."""

    config_class = CGNetConfig
    size_divisor = 16

    def __init__(self, config: CGNetConfig):
        super().__init__(config)
        self.encoder = vgg16_bn_stages(self.num_bands)
        self.conv_reduce = nn.ModuleList(ConvBNReLU(2 * c, c, 3) for c in (128, 256, 512, 512))
        self.decoder = nn.Sequential(ConvBNReLU(512, 64, 3), nn.Conv2d(64, 1, 3, padding=1))
        self.cgm = nn.ModuleList([ChangeGuideModule(256), ChangeGuideModule(512), ChangeGuideModule(512)])
        self.decoder_module4 = ConvBNReLU(1024, 512, 3)
        self.decoder_module3 = ConvBNReLU(768, 256, 3)
        self.decoder_module2 = ConvBNReLU(384, 128, 3)
        self.decoder_final = nn.Sequential(ConvBNReLU(128, 64, 3), nn.Conv2d(64, 1, 1))
        if config.keep_unused_layers:
            self.unused = nn.ModuleList([ConvBNReLU(512, 512, 3), ConvBNReLU(512, 512, 3), ConvBNReLU(256, 256, 3)])
        self.post_init()
        self.freeze_unused()

    def frozen_modules(self) -> list[nn.Module]:
        return [self.unused] if self.config.keep_unused_layers else []

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        la, lb = self._levels(image_a), self._levels(image_b)
        l1, l2, l3, l4 = (red(torch.cat([b, a], 1)) for red, a, b in zip(self.conv_reduce, la, lb))
        prior = self.decoder(_up2(l4, l1))
        x = self.cgm[2](l4, prior)
        x = self.cgm[1](self.decoder_module4(torch.cat([_up2(x, l3), l3], 1)), prior)
        x = self.cgm[0](self.decoder_module3(torch.cat([_up2(x, l2), l2], 1)), prior)
        x = self.decoder_module2(torch.cat([_up2(x, l1), l1], 1))
        size = image_a.shape[-2:]
        final = F.interpolate(self.decoder_final(x), size=size, mode="bilinear", align_corners=True)
        prior = F.interpolate(prior, size=size, mode="bilinear", align_corners=True)
        return ZooPrediction(final, aux=[prior])

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        loss = bce_loss(prediction.logits, labels)
        return loss + bce_loss(prediction.aux[0], labels) if self.config.recipe == "authors" else loss


register_architecture("cgnet", CGNet, config_builder(CGNetConfig))
