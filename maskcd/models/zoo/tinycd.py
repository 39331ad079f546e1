"""TinyCD (Codegoni, Lombardi, Ferrari, Neural Computing and Applications 2023, "TINYCD: a (not so) deep learning
model for change detection").

Backbone: the first four ``features`` stages of EfficientNet-B4 (torchvision, random weights: nothing is downloaded),
shared by both dates; strides 2, 2, 4, 8 with 48, 24, 32, 56 channels. Mix and Attention Mask Blocks (MAMB) fuse the
two dates at each scale: the channels of both are interleaved and mixed by a grouped 3×3 conv (PReLU, InstanceNorm),
then a pixel-wise MLP (1×1 convs, PReLU) turns the mix into a single-channel attention mask — on the raw images
(6 → 3 → 10 → 5 → 1) and after backbone stages 1 and 2 (48 → 24 → 12 → 6 → 1; 64 → 32 → 16 → 8 → 1); the deepest level
is a plain mixing block (112 → 56). The decoder upsamples ×2 (bilinear, align_corners) and multiplies by the mask of
the next finer scale, then a depth-wise 3×3 + point-wise conv pair (PReLU, InstanceNorm) — 56 → 64 → 64 → 32 —, and a
pixel-wise classifier (32 → 16 → 8 → 1) ends with a sigmoid.

Loss: binary cross-entropy, as published. Inputs are padded to a multiple of 8.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import efficientnet_b4
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, bce_loss, config_builder


class TinyCDConfig(PreTrainedConfig):
    """TinyCD hyper-parameters.

    Args:
        backbone_stages: EfficientNet-B4 ``features`` stages used (4: up to index 3, as published).
    """

    model_type = "maskcd-tinycd"

    def __init__(self, backbone_stages: int = 4, **kwargs):
        if backbone_stages != 4:
            raise ConfigError("TinyCD is defined for the first 4 EfficientNet-B4 stages (backbone_stages: 4)")
        self.backbone_stages = backbone_stages
        super().__init__(**kwargs)


class PixelwiseLinear(nn.Sequential):
    """1×1 convs ``fin[i] → fout[i]`` with PReLU after each (or ``last`` after the final one)."""

    def __init__(self, fin: list[int], fout: list[int], last: nn.Module | None = None):
        layers = []
        for i, (a, b) in enumerate(zip(fin, fout)):
            act = last if (i == len(fin) - 1 and last is not None) else nn.PReLU()
            layers.append(nn.Sequential(nn.Conv2d(a, b, 1), act))
        super().__init__(*layers)


class MixingBlock(nn.Module):
    """Interleave the channels of the two dates and mix them with a grouped 3×3 conv → PReLU → InstanceNorm."""

    def __init__(self, ch_in: int, ch_out: int):
        super().__init__()
        self.convmix = nn.Sequential(
            nn.Conv2d(ch_in, ch_out, 3, groups=ch_out, padding=1), nn.PReLU(), nn.InstanceNorm2d(ch_out)
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mixed = torch.stack((x, y), dim=2).reshape(x.shape[0], -1, *x.shape[-2:])
        return self.convmix(mixed)


class MixingMaskAttentionBlock(nn.Module):
    """Mixing block followed by a pixel-wise MLP producing a 1-channel attention mask."""

    def __init__(self, ch_in: int, ch_out: int, fin: list[int], fout: list[int]):
        super().__init__()
        self.mixing = MixingBlock(ch_in, ch_out)
        self.linear = PixelwiseLinear(fin, fout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.linear(self.mixing(x, y))


class UpMask(nn.Module):
    """×2 bilinear upsampling, multiplication by the finer mask, depth-wise + point-wise conv (PReLU, InstanceNorm)."""

    def __init__(self, nin: int, nout: int):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.convolution = nn.Sequential(
            nn.Conv2d(nin, nin, 3, groups=nin, padding=1), nn.PReLU(), nn.InstanceNorm2d(nin),
            nn.Conv2d(nin, nout, 1), nn.PReLU(), nn.InstanceNorm2d(nout),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.convolution(self.upsample(x) * mask)


class TinyCD(ZooModel):
    """TinyCD: truncated EfficientNet-B4 siamese encoder + MAMB + UpMask decoder, sigmoid output."""

    config_class = TinyCDConfig
    size_divisor = 8

    def __init__(self, config: TinyCDConfig):
        super().__init__(config)
        features = efficientnet_b4(weights=None).features
        if self.num_bands != 3:
            features[0][0] = nn.Conv2d(self.num_bands, 48, 3, stride=2, padding=1, bias=False)
        self.backbone = nn.ModuleList(features[i] for i in range(config.backbone_stages))
        nb = self.num_bands
        self.first_mix = MixingMaskAttentionBlock(2 * nb, nb, [nb, 10, 5], [10, 5, 1])
        self.mixing_mask = nn.ModuleList([
            MixingMaskAttentionBlock(48, 24, [24, 12, 6], [12, 6, 1]),
            MixingMaskAttentionBlock(64, 32, [32, 16, 8], [16, 8, 1]),
        ])
        self.last_mix = MixingBlock(112, 56)
        self.up = nn.ModuleList([UpMask(56, 64), UpMask(64, 64), UpMask(64, 32)])
        self.classify = PixelwiseLinear([32, 16, 8], [16, 8, 1], last=nn.Identity())  # sigmoid in the loss / prob
        self.post_init()

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        masks = [self.first_mix(image_a, image_b)]
        a, b = image_a, image_b
        for i, layer in enumerate(self.backbone):
            a, b = layer(a), layer(b)
            if i in (1, 2):
                masks.append(self.mixing_mask[i - 1](a, b))
        x = self.last_mix(a, b)
        for up, mask in zip(self.up, reversed(masks)):
            x = up(x, mask)
        return ZooPrediction(self.classify(x))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return bce_loss(prediction.logits, labels)


register_architecture("tinycd", TinyCD, config_builder(TinyCDConfig))
