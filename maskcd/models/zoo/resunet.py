"""Siamese ResUNet for change detection (UCD's "ResUnet", IGARSS 2021, IEEE document 9553995).

A weight-shared residual U-Net encoder (pre-activation residual units: BN → ReLU → 3×3 conv → BN → ReLU → 3×3 conv,
plus a 3×3 conv + BN shortcut; widths 32-64-128-256 and a 512-channel bridge, each level downsampling by a stride-2
first conv) runs on both dates. The decoder upsamples with 2×2 stride-2 transposed convolutions and concatenates, at
every level, the absolute difference of the two dates' encoder maps, each followed by a residual unit; a last residual
unit maps to the 2 classes. As in the released UCD code the decoder starts from the *before* image's bridge features
(the after image's bridge output is computed there but never used, so maskcd skips computing it).

The paper itself is not available here; the architecture follows the UCD implementation the benchmark numbers come
from. Loss: cross-entropy, 255 ignored. Inputs are padded to a multiple of 16.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder


class ResUNetConfig(PreTrainedConfig):
    """Siamese ResUNet hyper-parameters.

    Args:
        filters: Encoder widths, the last one being the bridge (32, 64, 128, 256, 512).
    """

    model_type = "maskcd-resunet"

    def __init__(self, filters=(32, 64, 128, 256, 512), **kwargs):
        self.filters = list(filters)
        super().__init__(**kwargs)


class ResidualUnit(nn.Module):
    """Pre-activation residual unit with a 3×3 conv + BN shortcut; ``stride`` 2 halves the resolution."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
            nn.BatchNorm2d(cout), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.conv_skip = nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x) + self.conv_skip(x)


class ResUNet(ZooModel):
    """Siamese residual U-Net with absolute-difference skip connections."""

    config_class = ResUNetConfig
    size_divisor = 16

    def __init__(self, config: ResUNetConfig):
        super().__init__(config)
        f = config.filters
        if len(f) != 5:
            raise ConfigError(f"ResUNet needs 5 filter widths (4 levels + bridge), got {f}")
        self.input_layer = nn.Sequential(
            nn.Conv2d(self.num_bands, f[0], 3, padding=1), nn.BatchNorm2d(f[0]), nn.ReLU(),
            nn.Conv2d(f[0], f[0], 3, padding=1),
        )
        self.input_skip = nn.Conv2d(self.num_bands, f[0], 3, padding=1)
        self.down = nn.ModuleList(ResidualUnit(f[i], f[i + 1], stride=2) for i in range(3))
        self.bridge = ResidualUnit(f[3], f[4], stride=2)
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(f[i], f[i], 2, stride=2) for i in (4, 3, 2, 1))
        self.up_units = nn.ModuleList(ResidualUnit(f[i + 1] + f[i], f[i]) for i in (3, 2, 1, 0))
        self.last_unit = ResidualUnit(f[0], f[0])
        self.output_layer = ResidualUnit(f[0], 2)
        self.post_init()

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.input_layer(x) + self.input_skip(x)
        out = [x]
        for unit in self.down:
            x = unit(x)
            out.append(x)
        return out

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        fa, fb = self._encode(image_a), self._encode(image_b)
        x = self.bridge(fa[3])
        for up, unit, i in zip(self.upsample, self.up_units, (3, 2, 1, 0)):
            x = unit(torch.cat([up(x), (fa[i] - fb[i]).abs()], 1))
        return ZooPrediction(self.output_layer(self.last_unit(x)))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return ce_loss(prediction.logits, labels)


register_architecture("resunet", ResUNet, config_builder(ResUNetConfig))
