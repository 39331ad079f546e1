"""HANet (Han, Wu, Guo, Hu, Chen, IEEE JSTARS 2023, "HANet: a hierarchical attention network for change detection with
bi-temporal very-high-resolution remote sensing images").

From the MSPSNet family (:mod:`maskcd.models.zoo.mspsnet`): a weight-shared encoder (5×5 conv to 40 channels, then
feature-extraction cells with 2×2 average pooling between them: 40, 80, 160, 320 channels at strides 1, 2, 4, 8) runs
on both dates. At each scale the concatenated pair passes four grouped 3×3 convs of dilation 1–4 and a 1×1 fusion, then
the hierarchical attention: a conv → BN → PReLU → channel self-attention → conv → BN → PReLU branch plus an axial
branch (column attention, then row attention; 1×1 query/key/value convs, softmax along the axis, zero-initialised γ
residuals), summed. The decoder concatenates each scale with the ×2-upsampled coarser result (320 → 480 → 560 → 600
channels), then a 1×1 conv to 80 channels and a 3×3 conv to 2 classes at full resolution.

As released, the encoder pools with ``AdaptiveAvgPool2d(128 / 64 / 32)`` (256² inputs only); maskcd uses the same 2×2
average pooling for any size divisible by 8 (inputs are padded to a multiple of 8). The released code also declares
four 3×3 convs (``c1_conv`` … ``c4_conv``) that its forward never calls; UCD's 2.89 M (2^20 units) counts them, so
maskcd keeps them, frozen, under their names (UCD checkpoints load as they are).

Loss: cross-entropy (UCD's HANet config; it trains with AdamW, lr 5e-4, weight decay 5e-4), 255 ignored. Random
initialisation as released (Kaiming-normal fan-out for convs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig

from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder
from maskcd.models.zoo.mspsnet import FEC, ChannelAttention, ConvCAM


class HANetConfig(PreTrainedConfig):
    """HANet hyper-parameters.

    Args:
        base_width: Channels of the first scale (40).
    """

    model_type = "maskcd-hanet"

    def __init__(self, base_width: int = 40, **kwargs):
        self.base_width = base_width
        super().__init__(**kwargs)


class ConvCAMLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.attn = ConvCAM(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


class AxialAttention(nn.Module):
    """Self-attention along one axis (``axis`` 3: within rows, 2: within columns), γ-scaled residual."""

    def __init__(self, channels: int, axis: int):
        super().__init__()
        self.axis = axis
        self.query_conv = nn.Conv2d(channels, channels, 1)
        self.key_conv = nn.Conv2d(channels, channels, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        if self.axis == 2:  # attend within columns: put the attended axis last
            q, k, v = (t.transpose(2, 3) for t in (q, k, v))
        attn = torch.einsum("bchi,bchj->bhij", q, k).softmax(dim=-1)
        out = torch.einsum("bchj,bhij->bchi", v, attn)
        if self.axis == 2:
            out = out.transpose(2, 3)
        return self.gamma * out + x


class HANet(ZooModel):
    """HANet: multiscale siamese encoder, dilated pair fusion, channel + axial (row/column) attention, U-Net decoder."""

    config_class = HANetConfig
    size_divisor = 8

    def __init__(self, config: HANetConfig):
        super().__init__(config)
        n = config.base_width
        f = [n, 2 * n, 4 * n, 8 * n]
        self.conv0_0 = nn.Conv2d(self.num_bands, f[0], 5, padding=2)
        self.conv0 = FEC(f[0], f[0], f[0])
        self.conv2 = FEC(f[0], f[1], f[1])
        self.conv4 = FEC(f[1], f[2], f[2])
        self.conv5 = FEC(f[2], f[3], f[3])
        for level, c in enumerate(f, start=1):
            for d in (1, 2, 3, 4):
                self.add_module(f"conv6_{level}_{d}", nn.Conv2d(2 * c, c, 3, padding=d, dilation=d, groups=c // 2))
            self.add_module(f"conv{level}_1", nn.Conv2d(4 * c, c, 1))
            self.add_module(f"cam_attention_{level}", ConvCAMLayer(c))
            self.add_module(f"row_attention_{level}", AxialAttention(c, axis=3))
            self.add_module(f"col_attention_{level}", AxialAttention(c, axis=2))
        self.conv6 = nn.Conv2d(sum(f), f[1], 1)
        self.conv7 = nn.Conv2d(f[1], 2, 3, padding=1, bias=False)
        # declared but never called in the released forward
        self.c4_conv = nn.Conv2d(f[3], f[1], 3, padding=1)
        self.c3_conv = nn.Conv2d(f[2], f[1], 3, padding=1)
        self.c2_conv = nn.Conv2d(f[1], f[1], 3, padding=1)
        self.c1_conv = nn.Conv2d(f[0], f[0], 3, padding=1)
        self.post_init()
        self.freeze_unused()

    def frozen_modules(self) -> list[nn.Module]:
        return [self.c4_conv, self.c3_conv, self.c2_conv, self.c1_conv]

    def _init_extra(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (ChannelAttention, AxialAttention)):
            nn.init.zeros_(module.gamma)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv0(self.conv0_0(x))
        out = [x]
        for cell in (self.conv2, self.conv4, self.conv5):
            x = cell(F.avg_pool2d(x, 2))
            out.append(x)
        return out

    def _fuse(self, level: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([a, b], 1)
        x = torch.cat([getattr(self, f"conv6_{level}_{d}")(pair) for d in (1, 2, 3, 4)], 1)
        x = getattr(self, f"conv{level}_1")(x)
        axial = getattr(self, f"row_attention_{level}")(getattr(self, f"col_attention_{level}")(x))
        return getattr(self, f"cam_attention_{level}")(x) + axial

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        fa, fb = self._encode(image_a), self._encode(image_b)
        x = self._fuse(4, fa[3], fb[3])
        for level in (3, 2, 1):
            up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = torch.cat([self._fuse(level, fa[level - 1], fb[level - 1]), up], 1)
        return ZooPrediction(self.conv7(self.conv6(x)))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return ce_loss(prediction.logits, labels)


register_architecture("hanet", HANet, config_builder(HANetConfig))
