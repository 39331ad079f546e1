"""MSPSNet (Guo, Zhang, Zhu, Zhong, Zhang, IEEE TGRS 2022, "Deep multiscale Siamese network with parallel
convolutional structure and self-attention for change detection").

A weight-shared encoder (5×5 conv to ``base_width`` = 40 channels, then feature-extraction cells — 3×3 conv → BN → ReLU
→ 1×1 conv → BN, residual to the first conv's output — with 2×2 average pooling between scales: 40, 80, 160, 320
channels at strides 1, 2, 4, 8) runs on both dates. At each scale a parallel convolutional structure fuses the
concatenated pair with four grouped 3×3 convs of dilation 1–4, a 1×1 fusion, then a conv → BN → PReLU → channel
self-attention (DANet-style CAM with a zero-initialised γ) → conv → BN → PReLU block. The decoder concatenates each
scale with the ×2-upsampled coarser result (320 → 480 → 560 → 600 channels), then a 1×1 conv to 80 channels and a
3×3 conv to 2 classes at full resolution.

As published, the encoder pools with ``AdaptiveAvgPool2d(128 / 64 / 32)`` (256² inputs only); maskcd uses the
equivalent 2×2 average pooling so any size divisible by 8 works (inputs are padded to a multiple of 8). The released
code also declares four 3×3 convs (``c1_conv`` … ``c4_conv``) that ``forward`` never calls; UCD's 2.11 M (2^20 units)
counts them, so maskcd keeps them frozen (``keep_unused_layers: false`` drops them).

Loss: cross-entropy, 255 ignored. Random initialisation as the authors' (Kaiming normal, fan-out, for convs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig

from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder


class MSPSNetConfig(PreTrainedConfig):
    """MSPSNet hyper-parameters.

    Args:
        base_width: Channels of the first scale (40).
        keep_unused_layers: Keep the four never-called decoder convs of the released code (frozen).
    """

    model_type = "maskcd-mspsnet"

    def __init__(self, base_width: int = 40, keep_unused_layers: bool = True, **kwargs):
        self.base_width = base_width
        self.keep_unused_layers = keep_unused_layers
        super().__init__(**kwargs)


class ChannelAttention(nn.Module):
    """DANet channel attention: softmax over ``max(energy) - energy`` of the C×C Gram matrix, γ-scaled residual."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = x.reshape(b, c, -1)
        energy = torch.bmm(q, q.transpose(1, 2))
        attn = (energy.amax(dim=-1, keepdim=True) - energy).softmax(dim=-1)
        return self.gamma * torch.bmm(attn, q).reshape(b, c, h, w) + x


class ConvCAM(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, 32, 3, padding=1), nn.BatchNorm2d(32), nn.PReLU(), ChannelAttention(),
            nn.Conv2d(32, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.PReLU(),
        )


class FEC(nn.Module):
    """Feature extraction cell: ``relu(bn2(conv1x1(relu(bn1(c)))) + c)`` with ``c = conv3x3(x)``."""

    def __init__(self, cin: int, cmid: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cmid, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(cmid)
        self.conv2 = nn.Conv2d(cmid, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(x)))) + x)


class ParallelFusion(nn.Module):
    """Four grouped dilated 3×3 convs (dilation 1–4) on the concatenated pair, 1×1 fusion, ConvCAM."""

    def __init__(self, c: int):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(2 * c, c, 3, padding=d, dilation=d, groups=c // 2) for d in (1, 2, 3, 4))
        self.fuse = nn.Conv2d(4 * c, c, 1)
        self.cam = ConvCAM(c, c)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b], 1)
        return self.cam(self.fuse(torch.cat([branch(x) for branch in self.branches], 1)))


class MSPSNet(ZooModel):
    """MSPSNet: multiscale siamese encoder + parallel dilated fusion with channel self-attention."""

    config_class = MSPSNetConfig
    size_divisor = 8

    def __init__(self, config: MSPSNetConfig):
        super().__init__(config)
        n = config.base_width
        f = [n, 2 * n, 4 * n, 8 * n]
        self.stem = nn.Conv2d(self.num_bands, f[0], 5, padding=2)
        self.cells = nn.ModuleList([FEC(f[0], f[0], f[0]), FEC(f[0], f[1], f[1]), FEC(f[1], f[2], f[2]),
                                    FEC(f[2], f[3], f[3])])
        self.fusion = nn.ModuleList(ParallelFusion(c) for c in f)
        self.conv6 = nn.Conv2d(f[0] + f[1] + f[2] + f[3], f[1], 1)
        self.conv7 = nn.Conv2d(f[1], 2, 3, padding=1, bias=False)
        if config.keep_unused_layers:  # declared but never called in the released code
            self.unused = nn.ModuleList([nn.Conv2d(f[3], f[1], 3, padding=1), nn.Conv2d(f[2], f[1], 3, padding=1),
                                         nn.Conv2d(f[1], f[1], 3, padding=1), nn.Conv2d(f[0], f[0], 3, padding=1)])
        self.post_init()
        self.freeze_unused()

    def frozen_modules(self) -> list[nn.Module]:
        return [self.unused] if self.config.keep_unused_layers else []

    def _init_extra(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, ChannelAttention):
            nn.init.zeros_(module.gamma)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.cells[0](self.stem(x))
        out = [x]
        for cell in self.cells[1:]:
            x = cell(F.avg_pool2d(x, 2))
            out.append(x)
        return out

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        fa, fb = self._encode(image_a), self._encode(image_b)
        x = self.fusion[3](fa[3], fb[3])
        for i in (2, 1, 0):
            up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = torch.cat([self.fusion[i](fa[i], fb[i]), up], 1)
        return ZooPrediction(self.conv7(self.conv6(x)))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return ce_loss(prediction.logits, labels)


register_architecture("mspsnet", MSPSNet, config_builder(MSPSNetConfig))
